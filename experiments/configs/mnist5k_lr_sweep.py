"""The paper's learning-rate sweep on mnist5k: none vs fn, one class per client, client lr in
{0.003, 0.01, 0.03, 0.1}, seed 0 (8 runs; the protocol is mnist5k_headline.py's, whose seed-0
runs are the lr 0.01 points).

Run:  fedln-jax figure --config experiments/configs/mnist5k_lr_sweep.py --workdir runs/mnist5k_lr
"""
import os

from fedln_jax.config import load_config_module

_BASE = load_config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                        "mnist5k_headline.py"))
get_config = _BASE.get_config
LRS = (0.003, 0.01, 0.03, 0.1)
FIGURE = {"kind": "final", "seeds": (0,), "xlabel": "lr", "xscale": "log", "diverged": "report",
          "title": "mnist5k, 10 clients x 1 class: client learning rate"}


def get_runs() -> list[dict]:
    return [{"name": f"{n}_lr{lr}", "series": n, "x": lr, "overrides": {"norm": n, "lr": lr}}
            for n in ("none", "fn") for lr in LRS]
