"""The headline setting: digits, 10 clients x 1 class, 10 local steps of batch 32, lr 0.01,
the digits CNN at conv widths 32/64 (why: docs/models.md#width).

Run one:   fedln-jax run --workdir runs/demo_fn --config experiments/configs/demo.py norm=fn
Run all:   fedln-jax figure --config experiments/configs/demo.py --workdir runs/demo
(none, ln and fn over seeds 0, 1, 2; the same runs, table and plot as `fedln-jax demo`, which
runs this config from the package, fedln_jax/studies/demo.py, so it also works without a checkout.)
"""
from fedln_jax.studies.demo import FIGURE, get_config, get_runs  # noqa: F401
