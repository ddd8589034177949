"""FedProx (Li et al. 2020): client loss + prox_mu/2 ||w - w0||^2, w0 the model the client
started from. Implemented as its gradient, prox_mu (w - w0), added to the raw gradient before
the client optimizer (so mu is counted once, and weight decay/momentum see the full gradient).
"""
import jax

from fedln_jax.algorithms.base import Algorithm, add_to_gradient, make_algorithm


def fedprox() -> Algorithm:
    def client_tx(ctx):
        mu = ctx.hparams["prox_mu"]
        return add_to_gradient(
            lambda params: jax.tree.map(lambda w, w0: mu * (w - w0), params, ctx.start_params))

    return make_algorithm("fedprox", hparam_keys=("prox_mu",), client_tx=client_tx)
