"""The grid of `fedln-jax bench --protocol paper`: its configurations, their sizes (the paper's,
or --quick's), the flags that choose them, and the memory floor of each (protocol.py
measures them; docs/benchmarks.md describes the grid)."""
from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from fedln_jax.engine.client import epochs_needed
from fedln_jax.errors import FedlnError
from fedln_jax.models import DTYPES, build_model
from fedln_jax.training.memory import Floor, client_round_bytes, describe, tree_bytes

PROTOCOL_ROUNDS = 10_000
LOCAL_STEPS, BATCH_SIZE, NUM_CLASSES = 10, 32, 10
TRAIN_IMAGES = 50_000                 # CIFAR-10's training set, split evenly over the clients
# A program's runs are built one by one in Python (about 25 ms each on a 2-core CPU: 64 runs
# in 1.2-1.8 s), so a runs axis far past the grid's 64 would build for minutes before timing.
MAX_RUNS = 1024
CONV_IMPLS = ("lax", "patches", "torch")   # torch: PyTorch's CPU convs (docs/install.md#torch-convs)
CHUNKS = ("cohort", "narrow")         # the whole cohort in one vmap, or one client at a time
DEFAULT_GRID = {"conv_impl": "lax,patches", "dtype": "float32,bfloat16", "runs": "1,8,64",
                "cohort": "10,100", "chunk": "cohort,narrow"}


class Point(NamedTuple):
    """One configuration of the grid. chunk: 'cohort', 'narrow' or a width as text."""
    conv_impl: str
    dtype: str
    runs: int
    cohort: int
    chunk: str


class Sizes(NamedTuple):
    """How big and how long: the protocol's sizes, or --quick's tiny ones."""
    name: str
    side: int                         # images are side x side x 3
    conv_features: str                # "" = the paper CNN's widths
    dense_features: str
    local_steps: int
    batch_size: int
    images_per_client: int | None     # None: TRAIN_IMAGES / cohort
    warmup: bool                      # a warm-up round before the timed calls
    calls: int                        # timed calls of run_block (the median is reported)
    seconds_per_config: float         # target time of the timed calls together
    max_rounds_per_call: int
    matmul_size: int

    @property
    def fewest_rounds(self) -> int:
        """The rounds a configuration runs at the least (report.time_calls)."""
        return 1 + 2 * self.calls if self.warmup else self.calls * self.max_rounds_per_call


# matmul size 0: chosen per backend
FULL = Sizes("paper", 32, "", "", LOCAL_STEPS, BATCH_SIZE, None, True, 3, 10.0, 1000, 0)
# The paper CNN's layers at 16x16 and widths 4/4, 8/8, one round each: it checks that every
# configuration runs; compiling dominates, and costs about what it costs at the full size.
QUICK = Sizes("quick", 16, "4/4", "8/8", 2, 2, 4, False, 1, 0.0, 1, 128)


# ----------------------------------------------------------------------------- the grid


def is_count(item: str) -> bool:
    """ASCII digits only: str.isdigit also accepts "²", which int() refuses."""
    return item.isascii() and item.isdecimal()


def parse_list(text: str, flag: str, allowed=None, positive_int=False) -> list:
    items = [item.strip() for item in str(text).split(",")]
    if not items or any(not item for item in items):
        raise FedlnError(f"{flag} must be a comma-separated list without empty items, got {text!r}")
    items = [str(int(item)) if is_count(item) else item for item in items]   # 01 is 1
    if len(set(items)) != len(items):
        raise FedlnError(f"{flag} repeats a value: {text!r}")
    if positive_int:
        if not all(is_count(item) and int(item) >= 1 for item in items):
            raise FedlnError(f"{flag} must list positive integers, got {text!r}")
        return [int(item) for item in items]
    if allowed is not None and (bad := [item for item in items if item not in allowed]):
        raise FedlnError(f"{flag}: unknown value {bad[0]!r}; expected some of {', '.join(allowed)}")
    return items


def parse_chunks(text: str) -> list[str]:
    items = parse_list(text, "--chunk-policy")
    for item in items:
        if item not in CHUNKS and not (is_count(item) and int(item) >= 1):
            raise FedlnError(f"--chunk-policy: {item!r} is neither one of {', '.join(CHUNKS)} "
                             f"nor a positive width")
    return items


def build_grid(conv_impls: str, dtypes: str, runs: str, cohorts: str, chunks: str) -> list[Point]:
    """Every configuration, the important ones first (a time limit then cuts the least
    important): the paper's cohort before the larger one, one run before many, the listed
    dtype, chunk and conv order within."""
    axes = (parse_list(conv_impls, "--conv-impl", CONV_IMPLS), parse_list(dtypes, "--dtype", DTYPES),
            parse_list(runs, "--runs", positive_int=True),
            parse_list(cohorts, "--cohort", positive_int=True), parse_chunks(chunks))
    points = [Point(c, d, r, k, w) for c in axes[0] for d in axes[1] for r in axes[2]
              for k in axes[3] for w in axes[4]]
    rank = lambda p: (axes[3].index(p.cohort), axes[2].index(p.runs), axes[1].index(p.dtype),
                      axes[4].index(p.chunk), axes[0].index(p.conv_impl))
    return sorted(points, key=rank)


def chunk_width(chunk: str, cohort: int) -> int:
    if chunk == "cohort":
        return cohort
    if chunk == "narrow":
        return 1
    return min(int(chunk), cohort)


# ----------------------------------------------------------------------------- what fits


def client_images(cohort: int, sizes: Sizes) -> int:
    """Images each client holds: CIFAR-10's training set split evenly, or --quick's few."""
    return sizes.images_per_client or TRAIN_IMAGES // cohort


def protocol_floors(grid: list[Point], sizes: Sizes) -> dict[Point, Floor]:
    """Each configuration's memory floor (memory.Floor), from shapes alone: nothing is built,
    so a configuration far too large is refused without first building it."""
    net = build_model("cnn", "none", NUM_CLASSES, conv_features=sizes.conv_features,
                      dense_features=sizes.dense_features)
    image = jnp.zeros((1, sizes.side, sizes.side, 3), jnp.float32)
    params = tree_bytes(jax.eval_shape(lambda: net.init(jax.random.PRNGKey(0), image, train=False)))
    floors = {}
    for point in grid:
        per_client = client_images(point.cohort, sizes)
        one_client = client_round_bytes(
            (sizes.side, sizes.side, 3), sizes.local_steps, sizes.batch_size,
            epochs_needed(per_client, sizes.local_steps, sizes.batch_size), per_client, params)
        floors[point] = Floor(data=point.cohort * per_client * (3 * sizes.side ** 2 + 8),
                              state=params, per_client=one_client, runs=point.runs,
                              chunk=chunk_width(point.chunk, point.cohort))
    return floors


def memory_reason(floor: Floor, capacity: int | None, what: str) -> str | None:
    """Why a configuration cannot run on this device: its floor exceeds the capacity."""
    if capacity is None or floor.total <= capacity:
        return None
    return (f"skipped: needs at least {describe(floor.total)} (data {describe(floor.data)}, "
            f"{floor.runs} run(s) x (state {describe(floor.state)}, {floor.chunk} client(s) at "
            f"once x {describe(floor.per_client)})), the device has {describe(capacity)} ({what})")
