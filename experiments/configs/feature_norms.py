"""The paper's analysis 3 (docs/method.md#analyses): per-class feature norms ||phi(x)|| and head-row norms ||w_c|| of the global
model and of the local model after 5 steps on client 0 (none / ln / fn), digits one-class.

Run:  fedln-jax figure --config experiments/configs/feature_norms.py --workdir runs/local_overfit
(the same runs as local_overfit.py: with the same workdir they are reused, not retrained).
Outputs: norms.md (table) and runs/<name>_seed0/analysis/norms.png (bars, one per normalizer).
"""
import os

from fedln_jax.config import load_config_module

# The same runs and figure as local_overfit.py, by construction (so one workdir serves all).
_SAME = load_config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                        "local_overfit.py"))
FIGURE, get_config, get_runs = _SAME.FIGURE, _SAME.get_config, _SAME.get_runs
