"""SCAFFOLD (Karimireddy et al. 2020) with option II control variates.

Client i corrects every local gradient by c - c_i and, after K local steps at rate lr from
the start model x to y_i, sets c_i <- c_i - c + (x - y_i) / (K lr). The variates of the
sampled clients are written back every round (the reference implementation never updates
them). The server variate c is the sample-count-weighted mean of all clients' c_i. It is kept
as a running sum, c <- c + sum_{i in S} n_i (c_i_new - c_i_old) / sum_j n_j (with equal client
sizes the paper's c <- c + |S|/N mean(delta c_i)), so a round reads only its cohort's
variates, never all num_clients of them.
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

    def update_server_context(server, old_states_M, new_states_M, weights_M, total_weight):
        share_M = weights_M / total_weight
        return {"c": jax.tree.map(
            lambda c, old_M, new_M: c + jnp.tensordot(share_M, new_M - old_M, axes=1),
            server["c"], old_states_M["c"], new_states_M["c"])}

    def client_tx(ctx):
        correction = jax.tree.map(jnp.subtract, ctx.server["c"], ctx.client_state["c"])
        return add_to_gradient(lambda params: correction)

    def update_client_state(ctx, params, model_state):
        scale = 1.0 / (ctx.local_steps * ctx.hparams["lr"])
        c_new = jax.tree.map(lambda ci, c, x, y: ci - c + (x - y) * scale,
                             ctx.client_state["c"], ctx.server["c"], ctx.start_params, params)
        return {"c": c_new}

    return make_algorithm("scaffold", init_client_state=init_client_state,
                          server_context=server_context,
                          update_server_context=update_server_context, client_tx=client_tx,
                          update_client_state=update_client_state)
