"""One client's round: the batches it draws and its local training (round.py runs it for the
whole cohort; reference.py runs it one client at a time; analysis.py probes it)."""
from __future__ import annotations

import math
from typing import Callable

import jax
import jax.numpy as jnp
import optax

from fedln_jax.algorithms import Algorithm, ClientContext
from fedln_jax.data.augment import augment_round
from fedln_jax.engine.state import DeviceData, RoundSpec

AUGMENT_TAG = 3   # folded into a client's round key for its augmentation stream


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


def epochs_needed(min_count: int, local_steps: int, batch_size: int) -> int:
    """How many shuffles the smallest client can run through in one round of full batches."""
    batches_per_epoch = max(min_count // batch_size, 1)
    return math.ceil(local_steps / batches_per_epoch)


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
    scores_EN = jax.vmap(lambda k: jax.random.uniform(k, (max_n,)))(epoch_keys)
    perms_EN = jnp.argsort(jnp.where(valid_n, scores_EN, 2.0), axis=1)
    batches_per_epoch = jnp.maximum(count // spec.batch_size, 1)
    step_S = jnp.arange(spec.local_steps)
    slot_SB = ((step_S % batches_per_epoch)[:, None] * spec.batch_size
               + jnp.arange(spec.batch_size)[None, :]) % count
    epoch_S = jnp.minimum(step_S // batches_per_epoch, spec.max_epochs - 1)
    position_SB = jnp.take_along_axis(perms_EN[epoch_S], slot_SB, axis=1)
    return idx_row[position_SB]


def gather_client_batches(data: DeviceData, spec: RoundSpec, key: jax.Array, client: jax.Array):
    """Images (float32 in [0,1]) and labels of one client's round: [S, B, ...] and [S, B].

    `key` is the client's round key (from (seed, round, client)); it picks the batches and,
    folded with AUGMENT_TAG and the step, the augmentation of each step (spec.augment).
    """
    ix_SB = client_batch_indices(key, data.idx_C[client], data.counts_C[client], spec)
    x_SB = data.x[ix_SB].astype(jnp.float32) * spec.pixel_scale
    x_SB = augment_round(jax.random.fold_in(key, AUGMENT_TAG), x_SB, spec.augment)
    return x_SB, data.y[ix_SB]


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


def make_client_update(apply_fn: Callable, spec: RoundSpec, algorithm: Algorithm) -> Callable:
    """Build local training of one client: `local_steps` SGD steps in a lax.scan.

    Args:
      apply_fn: (params, model_state, x, train, return_features=False) -> (logits or
        (logits, features), new_model_state).
      spec: the RoundSpec (local optimizer settings).
      algorithm: supplies the client loss and the gradient transform chained before the
        client optimizer (FedAvg: cross-entropy, nothing chained).

    Returns:
      client_update(params, model_state, x_SB, y_SB, lr, ctx=None, momentum=None,
      weight_decay=None) -> (params, model_state, mean_loss). x_SB is float32 [S, B, H, W, C];
      y_SB int32 [S, B]; ctx the ClientContext (needed by every algorithm but FedAvg);
      momentum / weight_decay scalars (default: the spec's), used only when the spec's
      momentum / weight_decay is > 0.
    """
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


def make_train_client(apply_fn: Callable, spec: RoundSpec, algorithm: Algorithm) -> Callable:
    """train_client(state, hparams, data, key, client) -> (params, model_state, own state
    before, own state after, loss): one client's round from the server state (its batches,
    its slice of the client states, local training). The vectorized round vmaps it, the
    reference loop calls it client by client, the local-overfit probe calls it once."""
    client_round = make_client_round(apply_fn, spec, algorithm)

    def train_client(state, hparams: dict, data: DeviceData, key: jax.Array, client: jax.Array):
        x_SB, y_SB = gather_client_batches(data, spec, key, client)
        own_state = jax.tree.map(lambda s_C: s_C[client], state.client_states)
        params, model_state, new_own, loss = client_round(
            state.params, state.model_state, own_state, state.server_context,
            client_class_counts(data)[client], x_SB, y_SB, hparams)
        return params, model_state, own_state, new_own, loss

    return train_client
