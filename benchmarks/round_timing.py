"""Timing shared by the scaling benchmarks: compile + first round, then the steady round time."""
import time

import jax
import jax.numpy as jnp


def time_rounds(run_rounds, state, hparams, data, rounds: int):
    """run_rounds(state, hparams, data, n) -> (state, loss), jitted with the state donated.

    Returns (state, loss, seconds of the first call (compilation + 1 round), seconds per round
    of a block of `rounds` rounds fused into one call)."""
    start = time.perf_counter()
    state, loss = run_rounds(state, hparams, data, jnp.int32(1))
    jax.block_until_ready(loss)
    first = time.perf_counter() - start
    start = time.perf_counter()
    state, loss = run_rounds(state, hparams, data, jnp.int32(rounds))
    jax.block_until_ready(loss)
    return state, loss, first, (time.perf_counter() - start) / rounds
