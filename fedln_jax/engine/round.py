"""The federated round: the cohort, the server step, the jitted round and blocks of rounds.
What a round reads and writes is in state.py, one client's round (batches, local training) in
client.py.

`round_fn` reads like the algorithm: sample the cohort -> train each client -> weighted mean ->
server update -> write back the client states. The "train each client, then take the weighted
mean" step is `map_weighted_mean`, the round's one map-reduce over the cohort.

Vocabulary: a *round* is `round_fn(state, hparams, data)`; a *block* is n rounds in one
compiled call, `run_block` (with the divergence stop, what training runs) or `run_rounds`
(without it, returning the mean loss; the benchmark's).

Shape suffixes name the axes of an array where an axis is added or removed:

  _C  all clients of the run (num_clients)      _M  the cohort, clients sampled this round
  _P  the cohort padded to whole chunks         _W  the lanes of one chunk (vmapped together)
  _R  runs of one program (program.py)          _K  classes
  _N  examples (of the training or test set)    _D  feature dimension (penultimate layer)
  _S  local steps of one client's round         _B  a mini-batch
  _E  epochs (shuffles) of one client's round   _T  test batches of an evaluation
  _HWC an image's height, width and channels (data/augment.py)

Randomness is a pure function of (seed, round, client), so results do not depend on chunking,
device count, or resume point.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fedln_jax.algorithms import Algorithm
from fedln_jax.engine.client import make_train_client
from fedln_jax.engine.placement import client_mesh
from fedln_jax.engine.state import DeviceData, RoundSpec, ServerState

Pytree = Any
# Folded into keys so every stream is its own: the cohort's and the clients' here, the model
# initialization's (INIT_TAG) in state.py, the augmentation's (AUGMENT_TAG) in client.py.
SAMPLING_TAG, CLIENT_TAG = 0, 1


# ----------------------------------------------------------------------------- the cohort


def round_key(state: ServerState) -> jax.Array:
    return jax.random.fold_in(state.key, state.round)


def sample_cohort(round_key: jax.Array, spec: RoundSpec) -> jax.Array:
    """Clients of this round, without replacement; all clients in order under full participation."""
    if spec.cohort_size == spec.num_clients:
        return jnp.arange(spec.num_clients, dtype=jnp.int32)
    key = jax.random.fold_in(round_key, SAMPLING_TAG)
    return jax.random.choice(key, spec.num_clients, (spec.cohort_size,), replace=False).astype(jnp.int32)


def client_keys(round_key: jax.Array, clients: jax.Array) -> jax.Array:
    base = jax.random.fold_in(round_key, CLIENT_TAG)
    return jax.vmap(lambda c: jax.random.fold_in(base, c))(clients)


def scatter_client_states(client_states_C: Pytree, cohort_M: jax.Array, new_M: Pytree) -> Pytree:
    """Write the sampled clients' new states back into the stacked states (cohort has no repeats)."""
    return jax.tree.map(lambda s_C, n_M: s_C.at[cohort_M].set(n_M), client_states_C, new_M)


def update_client_side(state: ServerState, algorithm: Algorithm, cohort_M: jax.Array,
                       old_cstate_M: Pytree, new_cstate_M: Pytree, weight_M: jax.Array,
                       data: DeviceData) -> ServerState:
    """Write the cohort's new client states back into `state` and move its server context by
    their change (old_cstate_M: the cohort's states before the round, as its clients read
    them). The server step leaves both fields alone, so this may follow it."""
    server_context = algorithm.update_server_context(
        state.server_context, old_cstate_M, new_cstate_M, weight_M,
        data.counts_C.sum().astype(jnp.float32))
    return state._replace(
        client_states=scatter_client_states(state.client_states, cohort_M, new_cstate_M),
        server_context=server_context)


# ----------------------------------------------------------------------------- server side


def server_update(state: ServerState, mean_params: Pytree, mean_model_state: Pytree,
                  server_tx: optax.GradientTransformation, server_lr) -> ServerState:
    """Apply the server optimizer to the averaged delta (pseudo-gradient = params - mean).

    FedAvg is server_tx = identity with server_lr 1: the new params are the weighted mean.
    BN statistics are not parameters: they take the weighted mean directly.
    """
    pseudo_grad = jax.tree.map(lambda p, m: p - m, state.params, mean_params)
    direction, opt_state = server_tx.update(pseudo_grad, state.opt_state, state.params)
    params = jax.tree.map(lambda p, d: p - server_lr * d, state.params, direction)
    return state._replace(params=params, model_state=mean_model_state, opt_state=opt_state,
                          round=state.round + 1)


def all_finite(tree: Pytree) -> jax.Array:
    """True when every floating-point leaf of the tree is free of NaN and Inf."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


# ----------------------------------------------------------------------------- the round


def map_weighted_mean(fn: Callable, inputs_M: Pytree, weight_M: jax.Array, width: int,
                      lanes: NamedSharding | None = None) -> tuple[Pytree, Pytree]:
    """The round's map-reduce over the cohort: fn on every client, then a weighted mean.

    fn(*inputs) -> (reduced, kept) for one client; inputs_M are its arguments stacked over
    the M clients. Clients run `width` at a time (the cohort is padded to whole chunks, a
    lax.scan over chunks of a vmap over lanes, each chunk's lanes laid out by `lanes`).
    Returns (the mean of `reduced` weighted by weight_M, `kept` stacked [M, ...] in cohort
    order). Padded lanes carry weight 0, their `reduced` is masked out (a padded lane's NaN
    cannot leak into the sum) and their `kept` dropped.
    """
    num_clients = weight_M.shape[0]
    num_chunks = math.ceil(num_clients / width)
    pad_to_P = lambda a: jnp.concatenate(
        [a, jnp.zeros((num_chunks * width - num_clients,) + a.shape[1:], a.dtype)])
    chunks = jax.tree.map(lambda a: pad_to_P(a).reshape((num_chunks, width) + a.shape[1:]),
                          (inputs_M, weight_M))

    def run_chunk(sums, chunk):
        if lanes is not None:
            chunk = jax.lax.with_sharding_constraint(chunk, lanes)
        inputs_W, weight_W = chunk
        reduced_W, kept_W = jax.vmap(fn)(*inputs_W)
        weigh = lambda t_W: jnp.tensordot(
            weight_W, jnp.where(_expand_like(weight_W > 0, t_W), t_W, 0.0), axes=1)
        return jax.tree.map(lambda s, t_W: s + weigh(t_W), sums, reduced_W), kept_W

    reduced_shapes, _ = jax.eval_shape(fn, *jax.tree.map(lambda a: a[0], inputs_M))
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), reduced_shapes)
    sums, kept = jax.lax.scan(run_chunk, zeros, chunks)
    total = weight_M.sum()
    kept_M = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:])[:num_clients], kept)
    return jax.tree.map(lambda s: s / total, sums), kept_M


def _expand_like(mask_W: jax.Array, t: jax.Array) -> jax.Array:
    return mask_W.reshape(mask_W.shape + (1,) * (t.ndim - 1))


def make_round_fn(apply_fn: Callable, spec: RoundSpec, algorithm: Algorithm,
                  mesh: Mesh | None = None) -> Callable:
    """The vectorized round: round_fn(state, hparams, data) -> (state, metrics), pure and jit-able.

    Args:
      apply_fn: see make_client_update.
      spec: the RoundSpec.
      algorithm: the federated algorithm (algorithms/).
      mesh: the device mesh the clients axis is laid out over (default: all devices).

    Returns:
      round_fn(state, hparams, data). Clients run in sequential chunks of width chunk_size x
      devices (map_weighted_mean); the clients axis of each chunk is sharded over the mesh.
      The sampled clients' states are gathered from state.client_states and scattered back.
      hparams: {'lr', 'server_lr', 'momentum', 'weight_decay', *algorithm.hparam_keys} float32
      scalars (so runs can be vmapped over them; without 'momentum' / 'weight_decay' the
      spec's are used).
    """
    mesh = client_mesh() if mesh is None else mesh
    width = spec.chunk_size * mesh.shape["clients"]   # a program's mesh may also have 'runs'
    lanes = NamedSharding(mesh, P("clients"))
    train_one = make_train_client(apply_fn, spec, algorithm)

    def round_fn(state: ServerState, hparams: dict, data: DeviceData) -> tuple[ServerState, dict]:
        def train_client(key, client):
            params, model_state, own_state, new_own, loss = train_one(state, hparams, data,
                                                                      key, client)
            return (params, model_state, loss), (own_state, new_own)

        rkey = round_key(state)
        cohort_M = sample_cohort(rkey, spec)
        weight_M = data.counts_C[cohort_M].astype(jnp.float32)
        (mean_params, mean_mstate, mean_loss), (old_cstate_M, new_cstate_M) = map_weighted_mean(
            train_client, (client_keys(rkey, cohort_M), cohort_M), weight_M, width, lanes)
        new_state = server_update(state, mean_params, mean_mstate,
                                  algorithm.server_tx(hparams), hparams["server_lr"])
        # Only the cohort's client states changed: updating the server context and checking
        # finiteness from them (not from all clients') keeps a round's cost independent of
        # num_clients.
        new_state = update_client_side(new_state, algorithm, cohort_M, old_cstate_M,
                                       new_cstate_M, weight_M, data)
        return new_state, {"train_loss": mean_loss,
                           "client_states_finite": all_finite(new_cstate_M)}

    return round_fn


# ----------------------------------------------------------------------------- blocks of rounds


def make_block_fn(round_fn: Callable, stop_at_nonfinite: bool = True) -> Callable:
    """run_block(state, hparams, data, n, loss_sum) -> (state, loss_sum, bad_round).

    Runs up to n rounds in one program (n is traced: every block length shares one
    compilation), adding each round's train loss to loss_sum in order (so any split of the
    rounds into blocks gives the same float32 sum). With stop_at_nonfinite it stops early at
    the first round whose loss, parameters or model state are not finite: bad_round is that
    round (1-based), or -1.
    """
    def run_block(state, hparams, data, num_rounds, loss_sum):
        def cond(carry):
            i, _, _, bad_round = carry
            return (i < num_rounds) & (bad_round < 0)

        def body(carry):
            i, state, loss_sum, _ = carry
            state, metrics = round_fn(state, hparams, data)
            loss = metrics["train_loss"]
            bad_round = jnp.int32(-1)
            if stop_at_nonfinite:
                # Client states too (the round reports its cohort's): FedBN's local layers or
                # SCAFFOLD's variates can blow up while the averaged model stays finite.
                finite = (jnp.isfinite(loss) & all_finite((state.params, state.model_state))
                          & metrics.get("client_states_finite", True))
                bad_round = jnp.where(finite, -1, state.round).astype(jnp.int32)
            return i + 1, state, loss_sum + loss, bad_round

        _, state, loss_sum, bad_round = jax.lax.while_loop(
            cond, body, (jnp.int32(0), state, loss_sum, jnp.int32(-1)))
        return state, loss_sum, bad_round

    return run_block


def make_multi_round_fn(round_fn: Callable) -> Callable:
    """run_rounds(state, hparams, data, n) -> (state, mean train loss): n rounds in one program,
    without the divergence stop (a block of make_block_fn)."""
    run_block = make_block_fn(round_fn, stop_at_nonfinite=False)

    def run_rounds(state, hparams, data, num_rounds):
        state, loss_sum, _ = run_block(state, hparams, data, num_rounds, jnp.float32(0))
        return state, loss_sum / jnp.maximum(num_rounds, 1)

    return run_rounds
