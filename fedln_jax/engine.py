"""The federated engine: client batches, local training, the jitted round, and the reference loop.

Shapes use suffixes where an axis is added or removed: `_C` a clients axis, `_S` local steps,
`_B` a mini-batch, `_K` classes. Randomness is a pure function of (seed, round, client), so
results do not depend on chunking, device count, or resume point.
"""
from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fedln_jax.algorithms import Algorithm, ClientContext, init_client_states, make_algorithm
from fedln_jax.data.augment import augment_round
from fedln_jax.errors import FedlnError

Pytree = Any
SAMPLING_TAG, CLIENT_TAG, INIT_TAG = 0, 1, 2
AUGMENT_TAG = 3   # folded into a client's round key for its augmentation stream


class DeviceData(NamedTuple):
    """The training set, placed on the device once, and the clients as an index table.

    x: uint8 [N, H, W, C] images; y: int32 [N] labels; idx_C: int32 [num_clients, max_n]
    indices into x (rows padded with 0 past the count); counts_C: int32 [num_clients];
    class_counts_CK: float32 [num_clients, num_classes] training examples per client and class
    (read by FedLC/FedRS; `make_data` fills it).
    """
    x: jax.Array
    y: jax.Array
    idx_C: jax.Array
    counts_C: jax.Array
    class_counts_CK: jax.Array | None = None


class ServerState(NamedTuple):
    """Everything a round reads and writes. A pytree: jit-able, vmap-able over runs, checkpointable.

    params / model_state: the global model (model_state holds BN `batch_stats`, or is empty).
    opt_state: the server optimizer's state. client_states: per-client algorithm state with a
    leading num_clients axis (empty for FedAvg). round: int32 rounds completed. key: the run's
    root PRNG key (raw uint32), from the seed.
    """
    params: Pytree
    model_state: Pytree
    opt_state: Pytree
    client_states: Pytree
    round: jax.Array
    key: jax.Array


class RoundSpec(NamedTuple):
    """Static description of a round (shapes and code, not values)."""
    num_clients: int
    cohort_size: int          # clients sampled per round
    local_steps: int
    batch_size: int
    max_epochs: int           # permutations a client may need in one round (from the smallest client)
    pixel_scale: float
    chunk_size: int           # clients vmapped together on one device
    # Local SGD. Both are values a run reads from hparams ('momentum', 'weight_decay'); the
    # spec's are the fallback when hparams lacks them. Both are also structure: > 0 builds a
    # momentum trace / a weight decay step, so a program serving several runs holds their
    # largest values (a trace of decay 0 and a weight decay of 0 are plain SGD).
    momentum: float
    weight_decay: float
    augment: str = "none"     # data.augment mode applied to training batches on the device


def make_data(x: np.ndarray, y: np.ndarray, client_indices: list[np.ndarray],
              num_classes: int | None = None) -> DeviceData:
    """Pad the ragged client index lists into one table and put everything on the device once.

    num_classes: width of class_counts_CK (default: the largest label + 1).
    """
    counts = np.array([len(ix) for ix in client_indices], np.int32)
    if counts.min() < 1:
        raise FedlnError(f"client {int(counts.argmin())} has no training examples")
    table = np.zeros((len(client_indices), int(counts.max())), np.int32)
    for c, ix in enumerate(client_indices):
        table[c, :len(ix)] = ix
    y = np.asarray(y)
    num_classes = int(y.max()) + 1 if num_classes is None else num_classes
    class_counts = np.stack([np.bincount(y[ix], minlength=num_classes) for ix in client_indices])
    return DeviceData(jnp.asarray(x), jnp.asarray(y, jnp.int32), jnp.asarray(table),
                      jnp.asarray(counts), jnp.asarray(class_counts, jnp.float32))


def epochs_needed(min_count: int, local_steps: int, batch_size: int) -> int:
    """How many shuffles the smallest client can run through in one round of full batches."""
    batches_per_epoch = max(min_count // batch_size, 1)
    return math.ceil(local_steps / batches_per_epoch)


def default_chunk_size(cohort_size: int, num_devices: int) -> int:
    """Per-device vmap width: narrow on CPU (wide vmaps measured slower there), full elsewhere.

    On this 2-core CPU width 1 was best for the paper CNN and tied with 5 for the digits CNN
    (BENCHMARKS.md, "Levers tried").
    """
    if jax.default_backend() == "cpu":
        return 1
    return max(1, math.ceil(cohort_size / num_devices))


# ----------------------------------------------------------------------------- client side


def client_batch_indices(key: jax.Array, idx_row: jax.Array, count: jax.Array,
                         spec: RoundSpec) -> jax.Array:
    """Example indices [S, B] for one client's round: full batches of fresh shuffles.

    Each epoch is a new permutation of the client's examples; an epoch yields
    count // batch_size full batches (drop-last). A client smaller than the batch wraps around
    its own examples.
    """
    max_n = idx_row.shape[0]
    valid_n = jnp.arange(max_n) < count
    epoch_keys = jax.random.split(key, spec.max_epochs)
    scores_En = jax.vmap(lambda k: jax.random.uniform(k, (max_n,)))(epoch_keys)
    perms_En = jnp.argsort(jnp.where(valid_n, scores_En, 2.0), axis=1)
    batches_per_epoch = jnp.maximum(count // spec.batch_size, 1)
    step_S = jnp.arange(spec.local_steps)
    slot_SB = ((step_S % batches_per_epoch)[:, None] * spec.batch_size
               + jnp.arange(spec.batch_size)[None, :]) % count
    epoch_S = jnp.minimum(step_S // batches_per_epoch, spec.max_epochs - 1)
    position_SB = jnp.take_along_axis(perms_En[epoch_S], slot_SB, axis=1)
    return idx_row[position_SB]


FEDAVG = make_algorithm("fedavg")


def as_algorithm(algorithm: Algorithm | optax.GradientTransformation | None) -> Algorithm:
    """An Algorithm; a bare optax transform means FedAvg with that fixed server transform."""
    if algorithm is None:
        return FEDAVG
    if isinstance(algorithm, Algorithm):
        return algorithm
    if isinstance(algorithm, optax.GradientTransformation):
        return make_algorithm("fedavg", server_tx=lambda hparams: algorithm)
    raise TypeError(f"expected an Algorithm or an optax.GradientTransformation, got {algorithm!r}")


def make_client_update(apply_fn: Callable, spec: RoundSpec, algorithm: Algorithm | None = None) -> Callable:
    """Build local training of one client: `local_steps` SGD steps in a lax.scan.

    Args:
      apply_fn: (params, model_state, x, train, return_features=False) -> (logits or
        (logits, features), new_model_state).
      spec: the RoundSpec (local optimizer settings).
      algorithm: supplies the client loss and the gradient transform chained before the
        client optimizer (default FedAvg: cross-entropy, nothing chained).

    Returns:
      client_update(params, model_state, x_SB, y_SB, lr, ctx=None, momentum=None,
      weight_decay=None) -> (params, model_state, mean_loss). x_SB is float32 [S, B, H, W, C];
      y_SB int32 [S, B]; ctx the ClientContext (needed by every algorithm but FedAvg);
      momentum / weight_decay scalars (default: the spec's), used only when the spec's
      momentum / weight_decay is > 0.
    """
    algorithm = as_algorithm(algorithm)

    def loss_fn(params, model_state, x_B, y_B, ctx):
        if algorithm.uses_features:
            (logits, features), new_state = apply_fn(params, model_state, x_B, True,
                                                     return_features=True)
        else:
            (logits, new_state), features = apply_fn(params, model_state, x_B, True), None
        return algorithm.client_loss(logits, features, y_B, ctx), new_state

    def client_update(params, model_state, x_SB, y_SB, lr, ctx=None, momentum=None,
                      weight_decay=None):
        momentum = spec.momentum if momentum is None else momentum
        weight_decay = spec.weight_decay if weight_decay is None else weight_decay
        tx = optax.chain(algorithm.client_tx(ctx),
                         local_sgd(lr, momentum, weight_decay, with_trace=spec.momentum > 0,
                                   with_decay=spec.weight_decay > 0))
        opt_state = tx.init(params)

        def step(carry, batch):
            params, model_state, opt_state = carry
            (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                params, model_state, *batch, ctx)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), model_state, opt_state), loss

        (params, model_state, _), loss_S = jax.lax.scan(
            step, (params, model_state, opt_state), (x_SB, y_SB))
        return params, model_state, loss_S.mean()

    return client_update


def local_sgd(lr, momentum, weight_decay, with_trace: bool,
              with_decay: bool) -> optax.GradientTransformation:
    """The client optimizer: weight decay (when with_decay), then SGD with a momentum trace
    (when with_trace).

    A trace of decay 0 is exactly plain SGD (t = g + 0 * t), and a decay of 0 adds 0 * p, so
    runs with values 0 and > 0 can share one program that has the trace and the decay; a
    program whose runs all have 0 leaves both out (no work per step).
    """
    decay = optax.add_decayed_weights(weight_decay) if with_decay else optax.identity()
    return optax.chain(decay, optax.sgd(lr, momentum=momentum if with_trace else None))


def make_client_round(apply_fn: Callable, spec: RoundSpec, algorithm: Algorithm) -> Callable:
    """One client's whole round, shared by the vmapped round and the reference loop.

    Returns client_round(params, model_state, client_state, server, class_counts_K, x_SB, y_SB,
    hparams) -> (params, model_state, client_state, mean_loss): the client starts from
    algorithm.client_start(global model, its state), trains, and updates its state.
    """
    client_update = make_client_update(apply_fn, spec, algorithm)

    def client_round(params, model_state, client_state, server, class_counts_K, x_SB, y_SB, hparams):
        start_params, start_state = algorithm.client_start(params, model_state, client_state)
        ctx = ClientContext(start_params=start_params, client_state=client_state, server=server,
                            class_counts_K=class_counts_K, hparams=hparams,
                            local_steps=spec.local_steps)
        new_params, new_state, loss = client_update(
            start_params, start_state, x_SB, y_SB, hparams["lr"], ctx,
            momentum=hparams.get("momentum"), weight_decay=hparams.get("weight_decay"))
        return new_params, new_state, algorithm.update_client_state(ctx, new_params, new_state), loss

    return client_round


def client_class_counts(data: DeviceData) -> jax.Array:
    """[num_clients, K] class counts; [num_clients, 0] when the data has none (then FedLC and
    FedRS fail loudly on a shape mismatch instead of calibrating with made-up counts)."""
    if data.class_counts_CK is None:
        return jnp.zeros((data.counts_C.shape[0], 0), jnp.float32)
    return data.class_counts_CK


def gather_client_batches(data: DeviceData, spec: RoundSpec, key: jax.Array, client: jax.Array):
    """Images (float32 in [0,1]) and labels of one client's round: [S, B, ...] and [S, B].

    `key` is the client's round key (from (seed, round, client)); it picks the batches and,
    folded with AUGMENT_TAG and the step, the augmentation of each step (spec.augment).
    """
    ix_SB = client_batch_indices(key, data.idx_C[client], data.counts_C[client], spec)
    x_SB = data.x[ix_SB].astype(jnp.float32) * spec.pixel_scale
    x_SB = augment_round(jax.random.fold_in(key, AUGMENT_TAG), x_SB, spec.augment)
    return x_SB, data.y[ix_SB]


def client_keys(round_key: jax.Array, clients: jax.Array) -> jax.Array:
    base = jax.random.fold_in(round_key, CLIENT_TAG)
    return jax.vmap(lambda c: jax.random.fold_in(base, c))(clients)


def sample_cohort(round_key: jax.Array, spec: RoundSpec) -> jax.Array:
    """Clients of this round, without replacement; all clients in order under full participation."""
    if spec.cohort_size == spec.num_clients:
        return jnp.arange(spec.num_clients, dtype=jnp.int32)
    key = jax.random.fold_in(round_key, SAMPLING_TAG)
    return jax.random.choice(key, spec.num_clients, (spec.cohort_size,), replace=False).astype(jnp.int32)


def round_key(state: ServerState) -> jax.Array:
    return jax.random.fold_in(state.key, state.round)


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


def weighted_mean(trees_C: Pytree, weights_C: jax.Array) -> Pytree:
    """Sample-count-weighted mean over a leading clients axis."""
    w_C = weights_C / weights_C.sum()
    return jax.tree.map(lambda t: jnp.tensordot(w_C, t, axes=1), trees_C)


# ----------------------------------------------------------------------------- the round


def client_mesh(devices=None) -> Mesh:
    """A 1-D mesh over all devices; the clients axis is laid out over it."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.array(devices), ("clients",))


def replicate(tree: Pytree, mesh: Mesh) -> Pytree:
    """Place a pytree (state, hparams, data) on every device of the mesh, as the round's
    outputs are placed: inputs and outputs then share one compilation. Under jax.distributed
    the mesh spans processes and every process must pass the same value."""
    sharding = NamedSharding(mesh, P())
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    # Several processes (jax.distributed): each holds the whole value and feeds only its own
    # addressable devices; together they form one global, replicated array.
    return jax.tree.map(
        lambda a: jax.make_array_from_process_local_data(sharding, np.asarray(a)), tree)


def make_round_fn(apply_fn: Callable, spec: RoundSpec,
                  algorithm: Algorithm | optax.GradientTransformation | None = None,
                  mesh: Mesh | None = None) -> Callable:
    """The vectorized round: round_fn(state, hparams, data) -> (state, metrics), pure and jit-able.

    Args:
      apply_fn: see make_client_update.
      spec: the RoundSpec.
      algorithm: an Algorithm (or a bare optax server transform, meaning FedAvg with it).
      mesh: the device mesh the clients axis is laid out over (default: all devices).

    Returns:
      round_fn(state, hparams, data). Clients run in sequential steps of width chunk_size x
      devices (lax.scan over chunks of a vmap over clients); the clients axis of each chunk is
      sharded over the mesh, so the weighted sum becomes a cross-device reduction. Padded
      slots carry weight 0 and their client state is dropped. The sampled clients' states are
      gathered from state.client_states and scattered back. hparams: {'lr', 'server_lr',
      'momentum', 'weight_decay', *algorithm.hparam_keys} float32 scalars (so runs can be
      vmapped over them; without 'momentum' / 'weight_decay' the spec's are used).
    """
    algorithm = as_algorithm(algorithm)
    mesh = client_mesh() if mesh is None else mesh
    width = spec.chunk_size * mesh.shape["clients"]   # a program's mesh may also have 'runs'
    num_chunks = math.ceil(spec.cohort_size / width)
    padded = num_chunks * width
    client_round = make_client_round(apply_fn, spec, algorithm)
    lanes = NamedSharding(mesh, P("clients"))

    def round_fn(state: ServerState, hparams: dict, data: DeviceData) -> tuple[ServerState, dict]:
        class_counts_CK = client_class_counts(data)
        server = algorithm.server_context(state.client_states, data.counts_C.astype(jnp.float32))

        def one_client(key, client, client_state):
            x_SB, y_SB = gather_client_batches(data, spec, key, client)
            return client_round(state.params, state.model_state, client_state, server,
                                class_counts_CK[client], x_SB, y_SB, hparams)

        rkey = round_key(state)
        cohort_M = sample_cohort(rkey, spec)
        weight_M = data.counts_C[cohort_M].astype(jnp.float32)
        keys_M = client_keys(rkey, cohort_M)
        pad = padded - spec.cohort_size
        cohort_P = jnp.concatenate([cohort_M, jnp.zeros((pad,), jnp.int32)])
        weight_P = jnp.concatenate([weight_M, jnp.zeros((pad,), jnp.float32)])
        keys_P = jnp.concatenate([keys_M, jnp.zeros((pad,) + keys_M.shape[1:], keys_M.dtype)])
        chunks = jax.tree.map(lambda a: a.reshape((num_chunks, width) + a.shape[1:]),
                              (cohort_P, weight_P, keys_P))

        def run_chunk(acc, chunk):
            cohort_W, weight_W, keys_W = jax.lax.with_sharding_constraint(chunk, lanes)
            cstate_W = jax.tree.map(lambda s_C: s_C[cohort_W], state.client_states)
            params_W, mstate_W, cstate_W, loss_W = jax.vmap(one_client)(keys_W, cohort_W, cstate_W)
            weigh = lambda t: jnp.tensordot(weight_W, jnp.where(
                _bcast(weight_W > 0, t), t, 0.0), axes=1)
            chunk_sum = jax.tree.map(weigh, (params_W, mstate_W, loss_W))
            return jax.tree.map(jnp.add, acc, chunk_sum), cstate_W

        zeros = jax.tree.map(jnp.zeros_like, (state.params, state.model_state, jnp.float32(0)))
        sums, cstates = jax.lax.scan(run_chunk, zeros, chunks)
        total = weight_M.sum()
        mean_params, mean_mstate, mean_loss = jax.tree.map(lambda s: s / total, sums)
        new_cstate_M = jax.tree.map(lambda a: a.reshape((padded,) + a.shape[2:])[:spec.cohort_size],
                                    cstates)
        client_states = scatter_client_states(state.client_states, cohort_M, new_cstate_M)
        new_state = server_update(state, mean_params, mean_mstate,
                                  algorithm.server_tx(hparams), hparams["server_lr"])
        # Only the cohort's client states changed: checking them (not all clients') keeps
        # the divergence check's cost independent of num_clients.
        return new_state._replace(client_states=client_states), {
            "train_loss": mean_loss, "client_states_finite": all_finite(new_cstate_M)}

    return round_fn


def scatter_client_states(client_states_C: Pytree, cohort_M: jax.Array, new_M: Pytree) -> Pytree:
    """Write the sampled clients' new states back into the stacked states (cohort has no repeats)."""
    return jax.tree.map(lambda s_C, n_M: s_C.at[cohort_M].set(n_M), client_states_C, new_M)


def _bcast(mask_W: jax.Array, t: jax.Array) -> jax.Array:
    return mask_W.reshape(mask_W.shape + (1,) * (t.ndim - 1))


def all_finite(tree: Pytree) -> jax.Array:
    """True when every floating-point leaf of the tree is free of NaN and Inf."""
    leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
              if jnp.issubdtype(x.dtype, jnp.inexact)]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


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


# ----------------------------------------------------------------------------- reference loop


def make_reference_round(apply_fn: Callable, spec: RoundSpec,
                         algorithm: Algorithm | optax.GradientTransformation | None = None) -> Callable:
    """The correctness oracle: a plain Python loop over clients with the round's semantics.

    Same sampling, same per-client keys and batches, same local training (one jitted call per
    client); client states are read and written one client at a time; the mean is taken on
    the stacked results.
    """
    algorithm = as_algorithm(algorithm)
    client_round = jax.jit(make_client_round(apply_fn, spec, algorithm))
    gather = jax.jit(gather_client_batches, static_argnums=1)

    def reference_round(state: ServerState, hparams: dict, data: DeviceData) -> tuple[ServerState, dict]:
        rkey = round_key(state)
        cohort = sample_cohort(rkey, spec)
        keys = client_keys(rkey, cohort)
        class_counts_CK = client_class_counts(data)
        server = algorithm.server_context(state.client_states, data.counts_C.astype(jnp.float32))
        client_states = state.client_states
        results = []
        for key, client in zip(keys, np.asarray(cohort)):
            x_SB, y_SB = gather(data, spec, key, jnp.int32(client))
            own_state = jax.tree.map(lambda s_C: s_C[client], state.client_states)
            params, mstate, new_own, loss = client_round(
                state.params, state.model_state, own_state, server, class_counts_CK[client],
                x_SB, y_SB, hparams)
            client_states = jax.tree.map(lambda s_C, n: s_C.at[client].set(n), client_states, new_own)
            results.append((params, mstate, loss))
        params_C, mstate_C, loss_C = jax.tree.map(lambda *xs: jnp.stack(xs), *results)
        weight_C = data.counts_C[cohort].astype(jnp.float32)
        mean_params, mean_mstate, mean_loss = weighted_mean((params_C, mstate_C, loss_C), weight_C)
        new_state = server_update(state, mean_params, mean_mstate, algorithm.server_tx(hparams),
                                  hparams["server_lr"])
        return new_state._replace(client_states=client_states), {"train_loss": mean_loss}

    return reference_round


# ----------------------------------------------------------------------------- init and eval


def init_state(model, sample_x: jax.Array, seed: int,
               server_tx: Algorithm | optax.GradientTransformation, client_states: Pytree = (),
               *, hparams: dict | None = None, num_clients: int | None = None) -> ServerState:
    """Global model initialized from the seed; round 0.

    Args:
      model: a flax Linen module.
      sample_x: an input batch (shapes only).
      seed: the run's seed; the root key is PRNGKey(seed).
      server_tx: a bare optax server transform (FedAvg), or an Algorithm; an Algorithm needs
        `hparams` (to build its server transform) and `num_clients` (its client states are
        stacked along a leading axis of that size; `client_states` is then ignored).
      client_states: the stacked client states when server_tx is a bare transform.

    Returns:
      The ServerState of round 0.
    """
    key = jax.random.PRNGKey(seed)
    variables = model.init(jax.random.fold_in(key, INIT_TAG), sample_x, train=False)
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    if isinstance(server_tx, Algorithm):
        if hparams is None or num_clients is None:
            raise ValueError("init_state with an Algorithm needs hparams and num_clients")
        client_states = init_client_states(server_tx, params, model_state, num_clients)
        server_tx = server_tx.server_tx(hparams)
    return ServerState(params=params, model_state=model_state, opt_state=server_tx.init(params),
                       client_states=client_states, round=jnp.int32(0), key=key)


def make_apply_fn(model) -> Callable:
    """apply_fn(params, model_state, x, train, return_features=False) -> (out, new_model_state),
    BN-aware; out is the logits, or (logits, penultimate features) with return_features."""
    def apply_fn(params, model_state, x, train, return_features=False):
        variables = {"params": params, **model_state}
        kw = {"return_features": True} if return_features else {}
        if train and model_state:
            out, new_state = model.apply(variables, x, train=True, mutable=list(model_state), **kw)
            return out, dict(new_state)
        return model.apply(variables, x, train=train, **kw), model_state
    return apply_fn


def make_eval_fn(apply_fn: Callable, num_classes: int, pixel_scale: float,
                 batch_size: int = 500) -> Callable:
    """evaluate(params, model_state, x, y) -> {correct_K, total_K, loss_sum}, batched with lax.map."""
    def evaluate(params, model_state, x, y):
        n = x.shape[0]
        num_batches = math.ceil(n / batch_size)
        pad = num_batches * batch_size - n
        x_NB = jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1)).reshape(
            (num_batches, batch_size) + x.shape[1:])
        y_NB = jnp.pad(y, (0, pad), constant_values=-1).reshape(num_batches, batch_size)

        def one_batch(batch):
            x_B, y_B = batch
            logits, _ = apply_fn(params, model_state, x_B.astype(jnp.float32) * pixel_scale, False)
            valid = y_B >= 0
            onehot_BK = jax.nn.one_hot(y_B, num_classes) * valid[:, None]
            hit_B = (logits.argmax(-1) == y_B) & valid
            loss_B = optax.softmax_cross_entropy_with_integer_labels(logits, jnp.maximum(y_B, 0))
            return onehot_BK.T @ hit_B.astype(jnp.float32), onehot_BK.sum(0), jnp.sum(loss_B * valid)

        correct, total, loss = jax.lax.map(one_batch, (x_NB, y_NB))
        return {"correct_K": correct.sum(0), "total_K": total.sum(0), "loss_sum": loss.sum()}

    return evaluate


def make_personalized_eval_fn(apply_fn: Callable, algorithm: Algorithm, num_classes: int,
                              pixel_scale: float, batch_size: int = 500) -> Callable:
    """evaluate_clients(params, model_state, client_states, x, y) -> {correct_CK, total_K, loss_sum_C}.

    Each client's own model (algorithm.client_start of the global model and its state, e.g.
    FedBN's local BN layers) on the whole test set, clients in sequence (lax.map); combine with
    `client_accuracy`, which weights each client's per-class recall by its own classes.
    """
    evaluate = make_eval_fn(apply_fn, num_classes, pixel_scale, batch_size)

    def evaluate_clients(params, model_state, client_states, x, y):
        def one_client(client_state):
            p, s = algorithm.client_start(params, model_state, client_state)
            return evaluate(p, s, x, y)

        out = jax.lax.map(one_client, client_states)
        return {"correct_CK": out["correct_K"], "total_K": out["total_K"][0],
                "loss_sum_C": out["loss_sum"]}

    return evaluate_clients


def client_accuracy(correct_K: np.ndarray, total_K: np.ndarray, test_weights_CK: np.ndarray) -> dict:
    """SPEC section 4: each client's accuracy on test data of its classes in its proportions,
    i.e. its class weights times the per-class recall; the unweighted mean over clients.

    correct_K is [K] for one global model, or [C, K] when each client has its own model
    (personalized evaluation: client c's weights times the recall of client c's model; the
    pooled accuracy and per-class recall are then means over the clients' models).
    """
    correct_K = np.asarray(correct_K, np.float64)
    recall = np.where(total_K > 0, correct_K / np.maximum(total_K, 1), 0.0)
    if recall.ndim == 2:
        per_client = np.sum(test_weights_CK * recall, axis=1)
        pooled = float(correct_K.sum(1).mean() / max(total_K.sum(), 1))
        recall_K = recall.mean(0)
    else:
        per_client = test_weights_CK @ recall
        pooled = float(correct_K.sum() / max(total_K.sum(), 1))
        recall_K = recall
    return {"test_accuracy": float(per_client.mean()), "test_accuracy_pooled": pooled,
            "per_class_recall": recall_K.tolist()}
