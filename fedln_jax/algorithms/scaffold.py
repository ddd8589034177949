"""SCAFFOLD (Karimireddy et al. 2020) with option II control variates.

Client i corrects every local gradient by c - c_i and, after K local steps at rate lr from
the start model x to y_i, sets c_i <- c_i - c + (x - y_i) / (K lr). The variates of the
sampled clients are written back every round (the reference implementation never updates
them). The server variate c is the sample-count-weighted mean of all clients' c_i, computed at
the start of each round: with zero initial variates this is the paper's running update
c <- c + |S|/N mean(delta c_i) (equal client sizes), without a second copy to keep in sync.
The server step is params - server_lr * (params - mean), server_lr the global step size.
"""
import jax
import jax.numpy as jnp

from fedln_jax.algorithms.base import Algorithm, add_to_gradient, make_algorithm


def scaffold() -> Algorithm:
    def init_client_state(params, model_state):
        return {"c": jax.tree.map(jnp.zeros_like, params)}

    def server_context(client_states_C, weights_C):
        p_C = weights_C / weights_C.sum()
        return {"c": jax.tree.map(lambda c_C: jnp.tensordot(p_C, c_C, axes=1), client_states_C["c"])}

    def client_tx(ctx):
        correction = jax.tree.map(jnp.subtract, ctx.server["c"], ctx.client_state["c"])
        return add_to_gradient(lambda params: correction)

    def update_client_state(ctx, params, model_state):
        scale = 1.0 / (ctx.local_steps * ctx.hparams["lr"])
        c_new = jax.tree.map(lambda ci, c, x, y: ci - c + (x - y) * scale,
                             ctx.client_state["c"], ctx.server["c"], ctx.start_params, params)
        return {"c": c_new}

    return make_algorithm("scaffold", init_client_state=init_client_state,
                          server_context=server_context, client_tx=client_tx,
                          update_client_state=update_client_state)
