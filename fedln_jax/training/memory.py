"""What a run needs on its device and what the device has (docs/scale.md#memory-plan).

The floor is counted from shapes only (nothing is allocated): the placed data, the server
state (from `jax.eval_shape` of its initialization, so a model far too wide is sized, not
built), and for each client a device trains at once (the chunk) its float32 batches of the
round, its shuffles and a working copy of its parameters and gradients. XLA needs more than
this (activations, temporaries), so the floor is a lower bound: a run refused on it could not
fit in any case. `fedln-jax config --plan` prints it with XLA's own analysis of the compiled
round (plan.py).
"""
from __future__ import annotations

import contextlib
import math
import os
from typing import Any, NamedTuple

import jax
import numpy as np

from fedln_jax.errors import FedlnError, OutOfMemory, first_line


class Floor(NamedTuple):
    """Bytes a round needs at least on one device, by part."""
    data: int          # images, labels, index tables, the test set (shared by a program's runs)
    state: int         # one run's server state (params, optimizer, per-client algorithm states)
    per_client: int    # one client's batches, shuffles, params and gradients in a round
    chunk: int         # clients one device trains at once, per run
    runs: int = 1      # runs one device holds (a program of R runs: layout.decide_layout)

    @property
    def total(self) -> int:
        return self.data + self.runs * (self.state + self.chunk * self.per_client)


# client_chunk_size=auto on an accelerator fills at most this share of the free memory with the
# floor: XLA's temporaries come on top of it (docs/scale.md#memory-plan).
AUTO_CHUNK_MARGIN = 0.5


def widest_chunk(floor: Floor, budget: int) -> int:
    """The widest chunk (at least 1, at most floor.chunk) whose floor fits `budget` bytes."""
    room = budget - floor.data - floor.runs * floor.state
    return max(1, min(floor.chunk, room // max(floor.runs * floor.per_client, 1)))


def tree_bytes(tree: Any) -> int:
    """Bytes of a pytree of arrays or ShapeDtypeStructs."""
    return sum(math.prod(a.shape) * np.dtype(a.dtype).itemsize for a in jax.tree.leaves(tree))


def client_round_bytes(image_shape: tuple, local_steps: int, batch_size: int, max_epochs: int,
                       max_examples: int, params_bytes: int, activations_per_example: int = 0) -> int:
    """One client's round: float32 batches [S, B, H, W, C] (and their uint8 gather), the
    shuffle scores and permutations [E, max_n], its parameters and gradients, and the layer
    outputs of one step's batch (kept for the backward pass)."""
    pixels = math.prod(image_shape)
    batches = local_steps * batch_size * (pixels * 5 + 4 * 2)
    shuffles = max_epochs * max_examples * 8
    return batches + shuffles + 2 * params_bytes + batch_size * activations_per_example


def activation_bytes(model, variables, image_shape: tuple) -> int:
    """Bytes of the outputs of the model's layers (its submodules) for one example, from
    shapes (inside jax.eval_shape nothing is computed): a step holds them for a batch."""
    def forward(variables):
        x = jax.numpy.zeros((1,) + tuple(image_shape), jax.numpy.float32)
        _, captured = model.apply(variables, x, train=False, capture_intermediates=True,
                                  mutable=["intermediates"])
        return captured
    return tree_bytes(jax.eval_shape(forward, variables))


def describe(num_bytes: float) -> str:
    for unit, size in (("TiB", 2 ** 40), ("GiB", 2 ** 30), ("MiB", 2 ** 20), ("KiB", 2 ** 10)):
        if num_bytes >= size:
            return f"{num_bytes / size:.1f} {unit}"
    return f"{int(num_bytes)} B"


ANALYSIS_FIELDS = ("argument_size_in_bytes", "output_size_in_bytes", "alias_size_in_bytes",
                   "temp_size_in_bytes", "generated_code_size_in_bytes")


def analysis_of(compiled) -> dict:
    """The byte counts of a compiled executable's memory_analysis() (absent fields: None)."""
    analysis = compiled.memory_analysis()
    return {f.replace("_size_in_bytes", ""): getattr(analysis, f, None) for f in ANALYSIS_FIELDS}


def peak_of(sizes: dict) -> int:
    """Bytes live at once while the executable runs: its inputs, its outputs that do not
    reuse (alias) a donated input, and its temporaries."""
    return (sizes["argument"] or 0) + (sizes["output"] or 0) - (sizes["alias"] or 0) \
        + (sizes["temp"] or 0)


def meminfo_available() -> int | None:
    """MemAvailable of /proc/meminfo in bytes (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def device_capacity(device=None) -> tuple[int | None, str]:
    """(bytes a run may use on the device, what that figure is). GPU/TPU: the allocator's
    bytes_limit less what is in use; CPU: the machine's available memory. None when unknown."""
    device = jax.devices()[0] if device is None else device
    stats = None
    try:
        stats = device.memory_stats()
    except Exception:   # noqa: BLE001 (a backend without allocator statistics)
        stats = None
    if stats and "bytes_limit" in stats:
        free = int(stats["bytes_limit"]) - int(stats.get("bytes_in_use", 0))
        return free, f"free on {device.platform.upper()} device {device.id}"
    if device.platform == "cpu":
        available = meminfo_available()
        if available is None:
            try:
                available = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
            except (ValueError, OSError):
                available = None
        return available, "available host memory (MemAvailable)"
    return None, "unknown"


def knob_hint(floor: Floor) -> str:
    """The config key that would shrink the largest part of the floor."""
    parts = {"data": floor.data, "state": floor.runs * floor.state,
             "clients": floor.runs * floor.chunk * floor.per_client}
    largest = max(parts, key=parts.get)
    if largest == "clients":
        if floor.chunk > 1:
            return "lower client_chunk_size (clients trained at once per device)"
        return "lower batch_size or local_steps, or the model's width (conv_features, dense_features)"
    if largest == "state":
        return "lower the model's width (conv_features, dense_features) or num_clients"
    return "use a smaller dataset or image_size"


def check_fits(floor: Floor, capacity: int | None, what: str) -> None:
    """FedlnError naming the need, the capacity and the knob when the floor does not fit."""
    if capacity is None or floor.total <= capacity:
        return
    runs = f"{floor.runs} runs x (" if floor.runs > 1 else ""
    raise FedlnError(f"this {'program' if floor.runs > 1 else 'run'} needs at least "
                     f"{describe(floor.total)} on the device (data {describe(floor.data)}, "
                     f"{runs}state {describe(floor.state)}, {floor.chunk} client(s) at once x "
                     f"{describe(floor.per_client)}{')' if runs else ''}) but has "
                     f"{describe(capacity)} ({what}); {knob_hint(floor)}")


def is_out_of_memory(exc: BaseException) -> bool:
    """XLA's allocation failure (RESOURCE_EXHAUSTED, on the device or in a compilation) or
    the host's MemoryError."""
    return isinstance(exc, MemoryError) or "RESOURCE_EXHAUSTED" in str(exc)


def out_of_memory_message(exc: BaseException, chunk: int, last_saved: int | None) -> str:
    """One line: what ran out, what survived, the knob (docs/scale.md#out-of-memory)."""
    first = first_line(exc, 160, with_type=False)
    saved = (f"the checkpoint of round {last_saved} is intact" if last_saved
             else "no checkpoint was written yet")
    knob = (f"lower client_chunk_size (now {chunk}; a resumable change) and run the same "
            f"command again" if chunk > 1 else
            "client_chunk_size is already 1: free the device, or start a new run with a "
            "smaller batch_size or width (conv_features, dense_features)")
    return f"out of memory while training ({first}); {saved}; {knob}"


@contextlib.contextmanager
def out_of_memory_reported(chunk: int, last_saved):
    """Turns an allocation failure in the block into OutOfMemory (one line, CLI exit 1);
    last_saved() is the round of the newest checkpoint (None before the first)."""
    try:
        yield
    except (RuntimeError, MemoryError) as exc:
        if not is_out_of_memory(exc):
            raise
        raise OutOfMemory(out_of_memory_message(exc, chunk, last_saved())) from None
