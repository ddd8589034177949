"""The paper's analysis 7 (docs/method.md#analyses): which layers are normalized. LN (or scaled L2) at a single position of the
small CNN (conv1, conv2, dense1, the feature), at the feature only, and everywhere.
Digits one-class, 200 rounds, lr 0.01, seed 0.

Run:  fedln-jax figure --config experiments/configs/ablation_layers.py --workdir runs/abl_layers
"""
from fedln_jax import Config

FIGURE = {"kind": "final", "seeds": (0,), "xlabel": "normalized position",
          "title": "which layers (digits, 1 class per client, 200 rounds)"}
POSITIONS = ("conv1", "conv2", "dense1", "feature", "all")


def _layers(prim: str, where: str) -> str:
    if where == "all":
        return ",".join([prim] * 4)
    return ",".join(prim if p == where else "none" for p in POSITIONS[:4])


def get_config() -> Config:
    return Config(dataset="digits", partition="n_class", classes_per_client=1, num_clients=10,
                  local_steps=10, batch_size=32, lr=0.01, rounds=200, eval_every=5)


def get_runs() -> list[dict]:
    return [{"name": f"{prim}_{where}", "series": prim, "x": where,
             "overrides": {"norm_layers": _layers(prim, where)}}
            for prim in ("ln", "l2s") for where in POSITIONS]
