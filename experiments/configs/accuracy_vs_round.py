"""The paper's analysis 1 (docs/method.md#analyses): test accuracy vs round, one-class split, for none / bn / gn / ln / fn.

Digits, 10 clients x 1 class, 10 local steps of batch 32, lr 0.01, 200 rounds, seeds 0 and 1.
Run:  fedln-jax figure --config experiments/configs/accuracy_vs_round.py --workdir runs/acc_vs_round
(one run: fedln-jax run --workdir runs/acc_gn --config experiments/configs/accuracy_vs_round.py norm=gn)
"""
from fedln_jax import Config

FIGURE = {"kind": "curves", "seeds": (0, 1),
          "title": "digits, 10 clients x 1 class (mean over seeds, min-max band)"}


def get_config() -> Config:
    return Config(dataset="digits", partition="n_class", classes_per_client=1, num_clients=10,
                  local_steps=10, batch_size=32, lr=0.01, rounds=200, eval_every=5)


def get_runs() -> list[dict]:
    return [{"name": n, "series": n, "x": None, "overrides": {"norm": n}}
            for n in ("none", "bn", "gn", "ln", "fn")]
