"""FedAvgM (Hsu et al. 2019): server momentum on the pseudo-gradient,
v <- server_momentum * v + (params - mean); params <- params - server_lr * v."""
import optax

from fedln_jax.algorithms.base import Algorithm, make_algorithm


def fedavgm() -> Algorithm:
    return make_algorithm("fedavgm", hparam_keys=("server_momentum",),
                          server_tx=lambda hp: optax.trace(decay=hp["server_momentum"]))
