"""The headline setting on mnist5k (28x28 MNIST, 5,000 images; needs `pip install -e '.[mnist]'`):
10 clients x 1 class, 10 local steps of batch 32, lr 0.01, the paper's CNN (first conv on one
channel, 28x28) at conv widths 32/64 (the paper's are 64/64: half the first conv for CPU time,
docs/models.md#mnist5k-width), 60 rounds.

The horizon: FN catches LN late (the paper's Fig. 4, p.9: ~7 points behind at ~400 rounds,
~1.5 at ~4,000, on CIFAR-10). On mnist5k the gap closes within tens of rounds: at 12 rounds
fn - ln was -0.13 (last-3 means, widths 16/32), at 60 rounds -0.04 (widths 32/64, 3 seeds,
10.5 min on 2 cores; both with the earlier lecun init). docs/results.md checks from the curves that 60 rounds has settled
(results.horizon_check) and says so where it has not.

Run all:  fedln-jax figure --config experiments/configs/mnist5k_headline.py --workdir runs/mnist5k
(none, ln and fn over seeds 0, 1, 2: 9 runs, ~11 min on a 2-core CPU.)
Run one:  fedln-jax run --workdir runs/m_fn --config experiments/configs/mnist5k_headline.py norm=fn
"""
from fedln_jax import Config

NORMS = ("none", "ln", "fn")
FIGURE = {"kind": "curves", "seeds": (0, 1, 2), "table": "seeds", "row_label": "norm",
          "title": "mnist5k, 10 clients x 1 class (mean over seeds, min-max band)"}


def get_config() -> Config:
    """The mnist5k protocol every mnist5k figure shares (so they share runs)."""
    return Config(dataset="mnist5k", model="cnn", conv_features="32/64", partition="n_class",
                  classes_per_client=1, num_clients=10, local_steps=10, batch_size=32, lr=0.01,
                  rounds=60, eval_every=2, checkpoint_every=10, norm="fn")


def get_runs() -> list[dict]:
    return [{"name": n, "series": n, "x": None, "overrides": {"norm": n}} for n in NORMS]
