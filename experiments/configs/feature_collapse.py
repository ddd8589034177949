"""The paper's analysis 4 (docs/method.md#analyses): feature collapse. Singular values of the centred test-feature matrix
(N x d), divided by the largest, for FedAvg with none vs FedLN vs FedFN on digits one-class.

Run:  fedln-jax figure --config experiments/configs/feature_collapse.py --workdir runs/local_overfit
(the same runs as local_overfit.py: with the same workdir they are reused, not retrained).
Output: singular_values.png (one line per normalizer, log scale) and results.json
("analysis" -> per series "singular_values").
"""
import os

from fedln_jax.config import load_config_module

# The same runs and figure as local_overfit.py, by construction (so one workdir serves all).
_SAME = load_config_module(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                        "local_overfit.py"))
FIGURE, get_config, get_runs = _SAME.FIGURE, _SAME.get_config, _SAME.get_runs
