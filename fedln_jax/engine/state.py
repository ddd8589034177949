"""What a round reads and writes: the training data on the device, the server state, and the
round's static spec (round.py has the round itself and the shape-suffix legend)."""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fedln_jax.algorithms import Algorithm, init_client_states
from fedln_jax.errors import FedlnError

Pytree = Any
INIT_TAG = 2   # folded into the root key for the model's initialization (round.py: the others)


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
    root PRNG key (raw uint32), from the seed. server_context: what every client of the next
    round reads as ctx.server (SCAFFOLD's server variate; () for most algorithms), kept up to
    date from the cohort's changes so a round never reads all clients' states.
    """
    params: Pytree
    model_state: Pytree
    opt_state: Pytree
    client_states: Pytree
    round: jax.Array
    key: jax.Array
    server_context: Pytree = ()   # last: checkpoints written before it existed lack it


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
    # device_put copies the host array once; jnp.asarray held a second, transient copy
    # (measured on CPU: +109 MiB vs +49 MiB for 49 MiB of uint8 images).
    return DeviceData(jax.device_put(np.asarray(x)), jax.device_put(y.astype(np.int32)),
                      jax.device_put(table), jax.device_put(counts),
                      jax.device_put(class_counts.astype(np.float32)))


def init_state(model, sample_x: jax.Array, seed: int, algorithm: Algorithm, *,
               hparams: dict, num_clients: int) -> ServerState:
    """The ServerState of round 0: the global model initialized from the seed (root key
    PRNGKey(seed)), the algorithm's server optimizer state (from `hparams`) and its client
    states stacked along a leading axis of num_clients. sample_x: an input batch (shapes only).
    """
    key = jax.random.PRNGKey(seed)
    variables = model.init(jax.random.fold_in(key, INIT_TAG), sample_x, train=False)
    params = variables["params"]
    model_state = {k: v for k, v in variables.items() if k != "params"}
    return ServerState(params=params, model_state=model_state,
                       opt_state=algorithm.server_tx(hparams).init(params),
                       client_states=init_client_states(algorithm, params, model_state,
                                                        num_clients),
                       round=jnp.int32(0), key=key,
                       server_context=initial_server_context(algorithm, params, model_state))


def initial_server_context(algorithm: Algorithm, params: Pytree, model_state: Pytree) -> Pytree:
    """The server context of round 0. Every client starts from the same state, so any weighting
    of the clients gives that state: the context of one client's copy is that of all of them."""
    one_client = init_client_states(algorithm, params, model_state, 1)
    return algorithm.server_context(one_client, jnp.ones(1))


def derive_server_context(algorithm: Algorithm, data: DeviceData):
    """state -> the algorithm's server context computed from all clients' states (for a
    checkpoint written before ServerState kept it; O(num_clients), once)."""
    weights_C = data.counts_C.astype(jnp.float32)
    return jax.jit(lambda state: algorithm.server_context(state.client_states, weights_C))
