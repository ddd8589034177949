"""FedLC (Zhang et al. 2022): logit calibration. The client trains on the calibrated logits
z_k = logits_k - fedlc_tau * n_k^(-1/4), n_k its examples of class k, with the softmax taken
over the classes the client holds only:

    loss = -z_y + log sum_{k: n_k > 0} exp(z_k)

(evaluation uses the raw logits). That is the method's n_k = 0 limit, and what the paper's
reference implementation computes: there exp(logit - tau * 0^(-1/4)) = exp(-inf) = 0 drops an
absent class from the softmax. Here the absent classes are masked out of the log-sum-exp
instead, so every value and gradient stays finite and an absent class's logit gets exactly zero
gradient.

A consequence, as in the paper's Table 10 (p. 23, FedLC under one class per client): a client
holding one class has loss -z_y + z_y = 0 and zero gradient, so its local training does not
move the model (weight decay aside).
"""
import jax.numpy as jnp
import optax

from fedln_jax.algorithms.base import Algorithm, make_algorithm


def calibration_margins(class_counts_K, tau):
    """tau * n_k^(-1/4) per class. For an absent class (n_k = 0, removed from the softmax by
    `calibrated_cross_entropy`) it is the finite placeholder tau * 1^(-1/4) = tau."""
    return tau * jnp.maximum(class_counts_K, 1.0) ** -0.25


def calibrated_cross_entropy(logits_BK, y_B, class_counts_K, tau):
    """Mean over the batch of -z_y + logsumexp over present classes of z (see the module)."""
    z_BK = logits_BK - calibration_margins(class_counts_K, tau)
    present_BK = jnp.broadcast_to(class_counts_K > 0, z_BK.shape)
    return optax.softmax_cross_entropy_with_integer_labels(z_BK, y_B, where=present_BK).mean()


def fedlc() -> Algorithm:
    def client_loss(logits_BK, features_BD, y_B, ctx):
        return calibrated_cross_entropy(logits_BK, y_B, ctx.class_counts_K,
                                        ctx.hparams["fedlc_tau"])

    return make_algorithm("fedlc", hparam_keys=("fedlc_tau",), client_loss=client_loss)
