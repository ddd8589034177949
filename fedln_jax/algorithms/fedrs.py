"""FedRS (Li and Zhan 2021): restricted softmax. During local training the logits of classes
absent on the client are multiplied by fedrs_alpha in (0, 1] (alpha = 1 is FedAvg)."""
import jax.numpy as jnp

from fedln_jax.algorithms.base import Algorithm, cross_entropy, make_algorithm


def restriction_scales(class_counts_K, alpha):
    """1 for classes the client holds, alpha for the others."""
    return jnp.where(class_counts_K > 0, 1.0, alpha)


def fedrs() -> Algorithm:
    def client_loss(logits_BK, features_BD, y_B, ctx):
        scales_K = restriction_scales(ctx.class_counts_K, ctx.hparams["fedrs_alpha"])
        return cross_entropy(logits_BK * scales_K, y_B)

    return make_algorithm("fedrs", hparam_keys=("fedrs_alpha",), client_loss=client_loss)
