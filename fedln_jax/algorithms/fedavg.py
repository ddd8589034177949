"""FedAvg (McMahan et al. 2017): local SGD, sample-count-weighted mean of the client models."""
from fedln_jax.algorithms.base import Algorithm, make_algorithm


def fedavg() -> Algorithm:
    return make_algorithm("fedavg")
