"""FedDecorr (Shi et al. 2023): client loss + feddecorr_coef * the decorrelation penalty of the
batch's penultimate features, in the official scaling (that of Shi et al.'s code, which the
paper's reference code copies): for features x [N, C],

    x <- x - mean_batch(x);  x <- x / sqrt(eps + var_batch(x)), unbiased variance, eps = 1e-8
    penalty = mean over the C (C - 1) off-diagonal entries of (x^T x)^2, divided by N

and 0 for a batch of one example (N == 1: a static shape, so the choice is made at trace
time). A constant feature column standardizes to 0 and stays finite. With C == 1 there is no
off-diagonal entry (the official mean over none is NaN); here the penalty is 0.
"""
import jax.numpy as jnp

from fedln_jax.algorithms.base import Algorithm, cross_entropy, make_algorithm

DECORR_EPS = 1e-8


def decorrelation_penalty(features_NC):
    """mean_{i != j} ((x^T x)_ij)^2 / N, x the batch-standardized features (unbiased variance)."""
    n, c = features_NC.shape
    if n == 1 or c == 1:
        return jnp.zeros((), jnp.float32)
    x = features_NC.astype(jnp.float32)
    x = x - x.mean(axis=0)
    x = x / jnp.sqrt(DECORR_EPS + x.var(axis=0, ddof=1))
    corr_CC = x.T @ x
    off_diagonal = jnp.where(jnp.eye(c, dtype=bool), 0.0, jnp.square(corr_CC))
    return off_diagonal.sum() / (c * (c - 1)) / n


def feddecorr() -> Algorithm:
    def client_loss(logits_BK, features_BD, y_B, ctx):
        penalty = decorrelation_penalty(features_BD.reshape(features_BD.shape[0], -1))
        return cross_entropy(logits_BK, y_B) + ctx.hparams["feddecorr_coef"] * penalty

    return make_algorithm("feddecorr", hparam_keys=("feddecorr_coef",), uses_features=True,
                          client_loss=client_loss)
