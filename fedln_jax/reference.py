"""The round as a plain Python loop over clients: the correctness oracle of the vectorized
round (tests compare the two) and the benchmark's "loop" engine, as a PyTorch user would
write it (`fedln-jax bench --engine loop`).

Same sampling, same per-client keys and batches, same local training as round.py: one jitted
call per client gathers its batches, trains it from its own state, writes its new state back
and adds its weighted result into a running sum (donated, so no copy); one more jitted call
applies the server step.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from fedln_jax.algorithms import Algorithm
from fedln_jax.client import client_class_counts, gather_client_batches, make_client_round
from fedln_jax.round import client_keys, round_key, sample_cohort, server_update
from fedln_jax.state import DeviceData, RoundSpec, ServerState


def make_loop_round(apply_fn: Callable, spec: RoundSpec, algorithm: Algorithm) -> Callable:
    """loop_round(state, hparams, data) -> (state, {'train_loss'}): the round's semantics, one
    client at a time in cohort order."""
    client_round = make_client_round(apply_fn, spec, algorithm)

    @jax.jit
    def cohort_of(state, data):
        rkey = round_key(state)
        cohort_M = sample_cohort(rkey, spec)
        server = algorithm.server_context(state.client_states, data.counts_C.astype(jnp.float32))
        return (cohort_M, client_keys(rkey, cohort_M),
                data.counts_C[cohort_M].astype(jnp.float32), server)

    def train_one(state, hparams, data, server, sums, client_states, key, client, weight):
        x_SB, y_SB = gather_client_batches(data, spec, key, client)
        own_state = jax.tree.map(lambda s_C: s_C[client], client_states)
        params, model_state, new_own, loss = client_round(
            state.params, state.model_state, own_state, server,
            client_class_counts(data)[client], x_SB, y_SB, hparams)
        sums = jax.tree.map(lambda s, t: s + weight * t, sums, (params, model_state, loss))
        client_states = jax.tree.map(lambda s_C, n: s_C.at[client].set(n), client_states, new_own)
        return sums, client_states

    train_one = jax.jit(train_one, donate_argnums=4)

    @jax.jit
    def finish(state, hparams, sums, total, client_states):
        mean_params, mean_mstate, mean_loss = jax.tree.map(lambda s: s / total, sums)
        new_state = server_update(state, mean_params, mean_mstate, algorithm.server_tx(hparams),
                                  hparams["server_lr"])
        return new_state._replace(client_states=client_states), {"train_loss": mean_loss}

    def loop_round(state: ServerState, hparams: dict, data: DeviceData):
        cohort_M, keys_M, weight_M, server = cohort_of(state, data)
        sums = jax.tree.map(jnp.zeros_like, (state.params, state.model_state, jnp.float32(0)))
        client_states = state.client_states
        for i in range(spec.cohort_size):
            sums, client_states = train_one(state, hparams, data, server, sums, client_states,
                                            keys_M[i], cohort_M[i], weight_M[i])
        return finish(state, hparams, sums, weight_M.sum(), client_states)

    return loop_round
