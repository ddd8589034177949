"""Where arrays live: the device mesh a round's clients axis is laid over, replication of its
inputs, and the per-device vmap width."""
from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

Pytree = Any


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


def default_chunk_size(cohort_size: int, num_devices: int, on_cpu: bool | None = None) -> int:
    """Per-device vmap width: narrow on CPU (wide vmaps measured slower there), full elsewhere.
    on_cpu: the backend is the CPU (None: ask JAX).

    On a 2-core CPU width 1 was best for the paper CNN and tied with 5 for the digits CNN
    (BENCHMARKS.md, "Levers tried").
    """
    if jax.default_backend() == "cpu" if on_cpu is None else on_cpu:
        return 1
    return max(1, math.ceil(cohort_size / num_devices))
