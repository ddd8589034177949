"""The paper's analysis 6 (docs/method.md#analyses): accuracy vs label skew: one class, two classes, Dirichlet beta 0.1 / 0.5 /
1.0, IID, for none / ln / fn (the gap should shrink as skew weakens).

Digits, 10 clients, 10 local steps of batch 32, lr 0.01, 200 rounds, seed 0.
Run:  fedln-jax figure --config experiments/configs/label_skew.py --workdir runs/label_skew
"""
from fedln_jax import Config

SPLITS = {"1-class": {"partition": "n_class", "classes_per_client": 1},
          "2-class": {"partition": "n_class", "classes_per_client": 2},
          "dir0.1": {"partition": "dirichlet", "dirichlet_beta": 0.1},
          "dir0.5": {"partition": "dirichlet", "dirichlet_beta": 0.5},
          "dir1.0": {"partition": "dirichlet", "dirichlet_beta": 1.0},
          "iid": {"partition": "iid"}}
FIGURE = {"kind": "final", "seeds": (0,), "xlabel": "split",
          "title": "digits, 10 clients, 200 rounds: label skew"}


def get_config() -> Config:
    return Config(dataset="digits", partition="n_class", classes_per_client=1, num_clients=10,
                  local_steps=10, batch_size=32, lr=0.01, rounds=200, eval_every=5)


def get_runs() -> list[dict]:
    return [{"name": f"{n}_{split}", "series": n, "x": split, "overrides": {"norm": n, **o}}
            for n in ("none", "ln", "fn") for split, o in SPLITS.items()]
