"""The paper's analysis 7 (docs/method.md#analyses): norm after (default, as the paper) vs before the activation, for ln, gn, bn
and fn. Digits one-class, 200 rounds, lr 0.01, seed 0.

Run:  fedln-jax figure --config experiments/configs/ablation_position.py --workdir runs/abl_position
"""
from fedln_jax import Config

FIGURE = {"kind": "final", "seeds": (0,), "xlabel": "norm",
          "title": "norm position (digits, 1 class per client, 200 rounds)"}


def get_config() -> Config:
    return Config(dataset="digits", partition="n_class", classes_per_client=1, num_clients=10,
                  local_steps=10, batch_size=32, lr=0.01, rounds=200, eval_every=5)


def get_runs() -> list[dict]:
    return [{"name": f"{n}_{pos}", "series": pos, "x": n,
             "overrides": {"norm": n, "norm_position": pos}}
            for n in ("ln", "gn", "bn", "fn") for pos in ("after", "before")]
