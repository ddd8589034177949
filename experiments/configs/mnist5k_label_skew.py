"""The paper's main comparison on mnist5k: one class per client, two classes per client and
Dirichlet(0.1), 10 clients, for none / bn / ln / fn, seeds 0, 1, 2 (36 runs; the one-class
none / ln / fn runs are the headline's, mnist5k_headline.py, which sets the protocol).

Run:  fedln-jax figure --config experiments/configs/mnist5k_label_skew.py --workdir runs/mnist5k_skew
"""
import os

from fedln_jax.config import load_config_module

_BASE = load_config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                        "mnist5k_headline.py"))
get_config = _BASE.get_config
SPLITS = {"1-class": {"partition": "n_class", "classes_per_client": 1},
          "2-class": {"partition": "n_class", "classes_per_client": 2},
          "dir0.1": {"partition": "dirichlet", "dirichlet_beta": 0.1}}
FIGURE = {"kind": "final", "seeds": (0, 1, 2), "xlabel": "split", "diverged": "report",
          "title": "mnist5k, 10 clients: label skew (mean over seeds 0-2)"}


def get_runs() -> list[dict]:
    return [{"name": f"{n}_{split}", "series": n, "x": split, "overrides": {"norm": n, **o}}
            for n in ("none", "bn", "ln", "fn") for split, o in SPLITS.items()]
