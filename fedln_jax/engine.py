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

from fedln_jax.data.augment import augment_round
from fedln_jax.errors import FedlnError

Pytree = Any
SAMPLING_TAG, CLIENT_TAG, INIT_TAG = 0, 1, 2
AUGMENT_TAG = 3   # folded into a client's round key for its augmentation stream


class DeviceData(NamedTuple):
    """The training set, placed on the device once, and the clients as an index table.

    x: uint8 [N, H, W, C] images; y: int32 [N] labels; idx_C: int32 [num_clients, max_n]
    indices into x (rows padded with 0 past the count); counts_C: int32 [num_clients].
    """
    x: jax.Array
    y: jax.Array
    idx_C: jax.Array
    counts_C: jax.Array


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
    momentum: float
    weight_decay: float
    augment: str = "none"     # data.augment mode applied to training batches on the device


def make_data(x: np.ndarray, y: np.ndarray, client_indices: list[np.ndarray]) -> DeviceData:
    """Pad the ragged client index lists into one table and put everything on the device once."""
    counts = np.array([len(ix) for ix in client_indices], np.int32)
    if counts.min() < 1:
        raise FedlnError(f"client {int(counts.argmin())} has no training examples")
    table = np.zeros((len(client_indices), int(counts.max())), np.int32)
    for c, ix in enumerate(client_indices):
        table[c, :len(ix)] = ix
    return DeviceData(jnp.asarray(x), jnp.asarray(y, jnp.int32), jnp.asarray(table), jnp.asarray(counts))


def epochs_needed(min_count: int, local_steps: int, batch_size: int) -> int:
    """How many shuffles the smallest client can run through in one round of full batches."""
    batches_per_epoch = max(min_count // batch_size, 1)
    return math.ceil(local_steps / batches_per_epoch)


def default_chunk_size(cohort_size: int, num_devices: int) -> int:
    """Per-device vmap width: narrow on CPU (wide vmaps measured slower there), full elsewhere."""
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


def make_client_update(apply_fn: Callable, spec: RoundSpec) -> Callable:
    """Build local training of one client: `local_steps` SGD steps in a lax.scan.

    Returns client_update(params, model_state, x_SB, y_SB, lr) -> (params, model_state, mean_loss).
    x_SB is float32 [S, B, H, W, C]; y_SB int32 [S, B].
    """
    def loss_fn(params, model_state, x_B, y_B):
        logits, new_state = apply_fn(params, model_state, x_B, train=True)
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, y_B).mean()
        return loss, new_state

    def client_update(params, model_state, x_SB, y_SB, lr):
        tx = optax.chain(optax.add_decayed_weights(spec.weight_decay),
                         optax.sgd(lr, momentum=spec.momentum or None))
        opt_state = tx.init(params)

        def step(carry, batch):
            params, model_state, opt_state = carry
            (loss, model_state), grads = jax.value_and_grad(loss_fn, has_aux=True)(
                params, model_state, *batch)
            updates, opt_state = tx.update(grads, opt_state, params)
            return (optax.apply_updates(params, updates), model_state, opt_state), loss

        (params, model_state, _), loss_S = jax.lax.scan(
            step, (params, model_state, opt_state), (x_SB, y_SB))
        return params, model_state, loss_S.mean()

    return client_update


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
    outputs are placed: inputs and outputs then share one compilation."""
    return jax.device_put(tree, NamedSharding(mesh, P()))


def make_round_fn(apply_fn: Callable, spec: RoundSpec, server_tx: optax.GradientTransformation,
                  mesh: Mesh | None = None) -> Callable:
    """The vectorized round: round_fn(state, hparams, data) -> (state, metrics), pure and jit-able.

    Clients run in sequential steps of width chunk_size x devices (lax.scan over chunks of a
    vmap over clients); the clients axis of each chunk is sharded over the mesh, so the
    weighted sum becomes a cross-device reduction. Padded slots carry weight 0.
    hparams: {'lr': scalar, 'server_lr': scalar} (arrays, so runs can be vmapped over them).
    """
    mesh = client_mesh() if mesh is None else mesh
    width = spec.chunk_size * mesh.size
    num_chunks = math.ceil(spec.cohort_size / width)
    padded = num_chunks * width
    client_update = make_client_update(apply_fn, spec)
    lanes = NamedSharding(mesh, P("clients"))

    def round_fn(state: ServerState, hparams: dict, data: DeviceData) -> tuple[ServerState, dict]:
        def one_client(params, model_state, key, client, lr):
            x_SB, y_SB = gather_client_batches(data, spec, key, client)
            return client_update(params, model_state, x_SB, y_SB, lr)

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
            params_W, mstate_W, loss_W = jax.vmap(one_client, in_axes=(None, None, 0, 0, None))(
                state.params, state.model_state, keys_W, cohort_W, hparams["lr"])
            weigh = lambda t: jnp.tensordot(weight_W, jnp.where(
                _bcast(weight_W > 0, t), t, 0.0), axes=1)
            chunk_sum = jax.tree.map(weigh, (params_W, mstate_W, loss_W))
            return jax.tree.map(jnp.add, acc, chunk_sum), None

        zeros = jax.tree.map(jnp.zeros_like, (state.params, state.model_state, jnp.float32(0)))
        sums, _ = jax.lax.scan(run_chunk, zeros, chunks)
        total = weight_M.sum()
        mean_params, mean_mstate, mean_loss = jax.tree.map(lambda s: s / total, sums)
        new_state = server_update(state, mean_params, mean_mstate, server_tx, hparams["server_lr"])
        return new_state, {"train_loss": mean_loss}

    return round_fn


def _bcast(mask_W: jax.Array, t: jax.Array) -> jax.Array:
    return mask_W.reshape(mask_W.shape + (1,) * (t.ndim - 1))


def make_multi_round_fn(round_fn: Callable) -> Callable:
    """run_rounds(state, hparams, data, n) -> (state, mean train loss): n rounds in one program.

    n is a traced scalar, so every block length shares one compilation.
    """
    def run_rounds(state, hparams, data, num_rounds):
        def body(_, carry):
            state, loss_sum = carry
            state, metrics = round_fn(state, hparams, data)
            return state, loss_sum + metrics["train_loss"]

        state, loss_sum = jax.lax.fori_loop(0, num_rounds, body, (state, jnp.float32(0)))
        return state, loss_sum / jnp.maximum(num_rounds, 1)

    return run_rounds


# ----------------------------------------------------------------------------- reference loop


def make_reference_round(apply_fn: Callable, spec: RoundSpec,
                         server_tx: optax.GradientTransformation) -> Callable:
    """The correctness oracle: a plain Python loop over clients with the round's semantics.

    Same sampling, same per-client keys and batches, same local training (one jitted call per
    client); the mean is taken on the stacked results.
    """
    client_update = jax.jit(make_client_update(apply_fn, spec))
    gather = jax.jit(gather_client_batches, static_argnums=1)

    def reference_round(state: ServerState, hparams: dict, data: DeviceData) -> tuple[ServerState, dict]:
        rkey = round_key(state)
        cohort = sample_cohort(rkey, spec)
        keys = client_keys(rkey, cohort)
        results = []
        for key, client in zip(keys, np.asarray(cohort)):
            x_SB, y_SB = gather(data, spec, key, jnp.int32(client))
            results.append(client_update(state.params, state.model_state, x_SB, y_SB, hparams["lr"]))
        params_C, mstate_C, loss_C = jax.tree.map(lambda *xs: jnp.stack(xs), *results)
        weight_C = data.counts_C[cohort].astype(jnp.float32)
        mean_params, mean_mstate, mean_loss = weighted_mean((params_C, mstate_C, loss_C), weight_C)
        new_state = server_update(state, mean_params, mean_mstate, server_tx, hparams["server_lr"])
        return new_state, {"train_loss": mean_loss}

    return reference_round


# ----------------------------------------------------------------------------- init and eval


def init_state(model, sample_x: jax.Array, seed: int, server_tx: optax.GradientTransformation,
               client_states: Pytree = ()) -> ServerState:
    """Global model initialized from the seed; round 0."""
    key = jax.random.PRNGKey(seed)
    variables = model.init(jax.random.fold_in(key, INIT_TAG), sample_x, train=False)
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    return ServerState(params=params, model_state=model_state, opt_state=server_tx.init(params),
                       client_states=client_states, round=jnp.int32(0), key=key)


def make_apply_fn(model) -> Callable:
    """apply_fn(params, model_state, x, train) -> (logits, new_model_state), BN-aware."""
    def apply_fn(params, model_state, x, train):
        variables = {"params": params, **model_state}
        if train and model_state:
            logits, new_state = model.apply(variables, x, train=True, mutable=list(model_state))
            return logits, dict(new_state)
        return model.apply(variables, x, train=train), model_state
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


def client_accuracy(correct_K: np.ndarray, total_K: np.ndarray, test_weights_CK: np.ndarray) -> dict:
    """SPEC section 4: each client's accuracy on test data of its classes in its proportions,
    i.e. its class weights times the per-class recall; the unweighted mean over clients."""
    recall_K = np.where(total_K > 0, correct_K / np.maximum(total_K, 1), 0.0)
    per_client = test_weights_CK @ recall_K
    return {"test_accuracy": float(per_client.mean()),
            "test_accuracy_pooled": float(correct_K.sum() / max(total_K.sum(), 1)),
            "per_class_recall": recall_K.tolist()}
