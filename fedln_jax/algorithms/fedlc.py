"""FedLC (Zhang et al. 2022): logit calibration. The client trains on
logits_k - fedlc_tau * n_k^(-1/4), n_k its examples of class k (evaluation uses raw logits).

The margin of a class absent on the client would be infinite (the reference implementation's
-inf logits); here an absent class is calibrated as if it held one example, so its margin is
fedlc_tau, the largest any class can get, and every logit stays finite.
"""
import jax.numpy as jnp

from fedln_jax.algorithms.base import Algorithm, cross_entropy, make_algorithm


def calibration_margins(class_counts_K, tau):
    """tau * max(n_k, 1)^(-1/4) per class: finite for absent classes."""
    return tau * jnp.maximum(class_counts_K, 1.0) ** -0.25


def fedlc() -> Algorithm:
    def client_loss(logits_BK, features_BD, y_B, ctx):
        margins_K = calibration_margins(ctx.class_counts_K, ctx.hparams["fedlc_tau"])
        return cross_entropy(logits_BK - margins_K, y_B)

    return make_algorithm("fedlc", hparam_keys=("fedlc_tau",), client_loss=client_loss)
