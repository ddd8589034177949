"""The paper's analysis 5 (docs/method.md#analyses): final accuracy vs client learning rate for none / ln / fn.

Digits, 10 clients x 1 class, 10 local steps of batch 32, 200 rounds, lr in
{0.003, 0.01, 0.03, 0.1}, seed 0 (12 runs, a few minutes on a 2-core CPU).
Run:  fedln-jax figure --config experiments/configs/lr_sweep.py --workdir runs/lr_sweep
"""
from fedln_jax import Config

LRS = (0.003, 0.01, 0.03, 0.1)
FIGURE = {"kind": "final", "seeds": (0,), "xlabel": "lr", "xscale": "log", "diverged": "report",
          "title": "digits, 10 clients x 1 class, 200 rounds"}


def get_config() -> Config:
    return Config(dataset="digits", partition="n_class", classes_per_client=1, num_clients=10,
                  local_steps=10, batch_size=32, lr=0.01, rounds=200, eval_every=5)


def get_runs() -> list[dict]:
    return [{"name": f"{n}_lr{lr}", "series": n, "x": lr, "overrides": {"norm": n, "lr": lr}}
            for n in ("none", "ln", "fn") for lr in LRS]
