"""SPEC section 7.4: feature collapse. Singular values of the centred test-feature matrix
(N x d), divided by the largest, for FedAvg with none vs FedLN vs FedFN on digits one-class.

Run:  fedln-jax figure --config experiments/configs/feature_collapse.py --workdir runs/local_overfit
(the same runs as local_overfit.py: with the same workdir they are reused, not retrained).
Output: singular_values.png (one line per normalizer, log scale) and results.json
("analysis" -> per series "singular_values").
"""
from fedln_jax import Config

FIGURE = {"kind": "final", "seeds": (0,), "title": "digits, 10 clients x 1 class, 40 rounds",
          "analyze": {"client": 0, "steps": (1, 2, 5)}}


def get_config() -> Config:
    return Config(dataset="digits", partition="n_class", classes_per_client=1, num_clients=10,
                  local_steps=10, batch_size=32, lr=0.01, rounds=40, eval_every=5)


def get_runs() -> list[dict]:
    return [{"name": n, "series": n, "x": None, "overrides": {"norm": n}}
            for n in ("none", "ln", "fn")]
