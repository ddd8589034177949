"""The paper's analysis 7 (docs/method.md#analyses): number of GroupNorm groups (1 = LN) on the small CNN (widths 16/32/128/64,
so G in {1, 2, 4, 8, 16}). Digits one-class, 200 rounds, lr 0.01, seed 0.

Run:  fedln-jax figure --config experiments/configs/ablation_gn_groups.py --workdir runs/abl_gn
"""
from fedln_jax import Config

FIGURE = {"kind": "final", "seeds": (0,), "xlabel": "gn_groups", "xscale": "log",
          "title": "GroupNorm groups (digits, 1 class per client, 200 rounds)"}


def get_config() -> Config:
    return Config(dataset="digits", partition="n_class", classes_per_client=1, num_clients=10,
                  local_steps=10, batch_size=32, lr=0.01, rounds=200, eval_every=5, norm="gn")


def get_runs() -> list[dict]:
    return [{"name": f"gn{g}", "series": "gn", "x": g, "overrides": {"gn_groups": g}}
            for g in (1, 2, 4, 8, 16)]
