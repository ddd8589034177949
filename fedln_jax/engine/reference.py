"""The round as a plain Python loop over clients: the correctness oracle of the vectorized
round (tests compare the two) and the benchmark's "loop" engine, as a PyTorch user would
write it (`fedln-jax bench --engine loop`).

Same sampling, same per-client keys and batches, same local training as round.py: one jitted
call per client gathers its batches, trains it from its own state and adds its weighted result
into a running sum (donated, so no copy); one more jitted call applies the server step and
writes the cohort's new client states back (round.update_client_side, as the round does).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from fedln_jax.algorithms import Algorithm
from fedln_jax.engine.client import make_train_client
from fedln_jax.engine.round import (client_keys, round_key, sample_cohort, server_update,
                                    update_client_side)
from fedln_jax.engine.state import DeviceData, RoundSpec, ServerState


def make_loop_round(apply_fn: Callable, spec: RoundSpec, algorithm: Algorithm) -> Callable:
    """loop_round(state, hparams, data) -> (state, {'train_loss'}): the round's semantics, one
    client at a time in cohort order."""
    train_client = make_train_client(apply_fn, spec, algorithm)

    @jax.jit
    def cohort_of(state, data):
        rkey = round_key(state)
        cohort_M = sample_cohort(rkey, spec)
        return cohort_M, client_keys(rkey, cohort_M), data.counts_C[cohort_M].astype(jnp.float32)

    def train_one(state, hparams, data, sums, key, client, weight):
        params, model_state, _, new_own, loss = train_client(state, hparams, data, key, client)
        sums = jax.tree.map(lambda s, t: s + weight * t, sums, (params, model_state, loss))
        return sums, new_own

    train_one = jax.jit(train_one, donate_argnums=3)

    @jax.jit
    def finish(state, hparams, data, sums, cohort_M, weight_M, new_own_list):
        mean_params, mean_mstate, mean_loss = jax.tree.map(lambda s: s / weight_M.sum(), sums)
        new_state = server_update(state, mean_params, mean_mstate, algorithm.server_tx(hparams),
                                  hparams["server_lr"])
        new_cstate_M = jax.tree.map(lambda *own: jnp.stack(own), *new_own_list)
        old_cstate_M = jax.tree.map(lambda s_C: s_C[cohort_M], state.client_states)
        return update_client_side(new_state, algorithm, cohort_M, old_cstate_M, new_cstate_M,
                                  weight_M, data), {"train_loss": mean_loss}

    def loop_round(state: ServerState, hparams: dict, data: DeviceData):
        cohort_M, keys_M, weight_M = cohort_of(state, data)
        sums = jax.tree.map(jnp.zeros_like, (state.params, state.model_state, jnp.float32(0)))
        new_own_list = []
        for i in range(spec.cohort_size):
            sums, new_own = train_one(state, hparams, data, sums, keys_M[i], cohort_M[i],
                                      weight_M[i])
            new_own_list.append(new_own)
        return finish(state, hparams, data, sums, cohort_M, weight_M, new_own_list)

    return loop_round
