"""The paper's analysis 7 (docs/method.md#analyses): LN / GN / BN without (default) and with a
learnable per-channel affine (scale and bias; the paper's Table 6, p.12, has LN's). Digits
one-class, 200 rounds, lr 0.01, seed 0.

Run:  fedln-jax figure --config experiments/configs/ablation_affine.py --workdir runs/abl_affine
"""
from fedln_jax import Config

FIGURE = {"kind": "final", "seeds": (0,), "xlabel": "normalizer",
          "title": "affine on/off (digits, 1 class per client, 200 rounds)"}
LAYERS = {"ln": ("ln", "ln_affine"), "gn4": ("gn4", "gn4_affine"), "bn": ("bn", "bn_affine")}


def get_config() -> Config:
    return Config(dataset="digits", partition="n_class", classes_per_client=1, num_clients=10,
                  local_steps=10, batch_size=32, lr=0.01, rounds=200, eval_every=5)


def get_runs() -> list[dict]:
    return [{"name": f"{name}_{'affine' if affine else 'plain'}",
             "series": "affine" if affine else "no affine", "x": name,
             "overrides": {"norm_layers": ",".join([prims[affine]] * 4)}}
            for name, prims in LAYERS.items() for affine in (False, True)]
