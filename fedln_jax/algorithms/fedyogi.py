"""FedYogi (Reddi et al. 2021): Yogi on the server's pseudo-gradient with the paper's settings
(docs/method.md#baselines): eta = server_lr 1e-2, beta1 0.9, beta2 0.99, tau 1e-3, v0 1e-6, no bias
correction. The shared rule is in fedadam.py."""
from fedln_jax.algorithms.base import Algorithm, make_algorithm
from fedln_jax.algorithms.fedadam import SERVER_MOMENT_KEYS, server_moments_tx


def fedyogi() -> Algorithm:
    return make_algorithm("fedyogi", hparam_keys=SERVER_MOMENT_KEYS, default_server_lr=1e-2,
                          server_tx=server_moments_tx("yogi"))
