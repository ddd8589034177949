"""The paper, section 5 (docs/method.md#analyses, items 2-4): local overfitting, feature norms, feature collapse (none / ln / fn).

Digits, 10 clients x 1 class, 200 rounds, lr 0.01. Each global model is then probed: 1, 2 and 5
local SGD steps of client 0 (the engine's own local training), and the whole test set is scored.

Run:  fedln-jax figure --config experiments/configs/local_overfit.py --workdir runs/local_overfit
Outputs: local_overfit.md / local_overfit.png (global accuracy and per-class recall before and
after), norms.md (per-class feature and head norms), singular_values.png (feature collapse).
One run:  fedln-jax run --workdir runs/lo_fn --config experiments/configs/local_overfit.py norm=fn
          fedln-jax analyze --workdir runs/lo_fn --client 0 --steps 1,2,5
"""
from fedln_jax import Config

FIGURE = {"kind": "final", "seeds": (0,), "title": "digits, 10 clients x 1 class, 200 rounds",
          "analyze": {"client": 0, "steps": (1, 2, 5)}}


def get_config() -> Config:
    return Config(dataset="digits", partition="n_class", classes_per_client=1, num_clients=10,
                  local_steps=10, batch_size=32, lr=0.01, rounds=200, eval_every=5)


def get_runs() -> list[dict]:
    return [{"name": n, "series": n, "x": None, "overrides": {"norm": n}}
            for n in ("none", "ln", "fn")]
