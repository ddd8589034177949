"""FedDecorr (Shi et al. 2023): client loss + feddecorr_coef * ||K||_F^2 / d^2, K the d x d
correlation matrix of the batch's penultimate features (each feature standardized over the
batch with the biased variance, eps 1e-5 so constant features stay finite)."""
import jax.numpy as jnp

from fedln_jax.algorithms.base import Algorithm, cross_entropy, make_algorithm

DECORR_EPS = 1e-5


def decorrelation_penalty(features_BD):
    """||K||_F^2 / d^2 with K = Z^T Z / B, Z the batch-standardized features."""
    b, d = features_BD.shape
    centred = features_BD - features_BD.mean(axis=0)
    z_BD = centred / jnp.sqrt(centred.var(axis=0) + DECORR_EPS)
    corr_DD = z_BD.T @ z_BD / b
    return jnp.sum(jnp.square(corr_DD)) / (d * d)


def feddecorr() -> Algorithm:
    def client_loss(logits_BK, features_BD, y_B, ctx):
        penalty = decorrelation_penalty(features_BD.reshape(features_BD.shape[0], -1))
        return cross_entropy(logits_BK, y_B) + ctx.hparams["feddecorr_coef"] * penalty

    return make_algorithm("feddecorr", hparam_keys=("feddecorr_coef",), uses_features=True,
                          client_loss=client_loss)
