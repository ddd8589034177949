"""Where a program's runs and clients go, decided once (docs/scale.md#layout): the devices, the
runs x clients mesh over them and the chunk width (clients one device trains at once).

The compiled round reads `Layout.chunk`, and the memory floor checked before anything is
placed, the plan and the out-of-memory message read the same Layout, for the program of R
runs it is: they cannot disagree about the width that runs.
"""
from __future__ import annotations

import math
import sys
from typing import NamedTuple

import jax
import numpy as np
from jax.sharding import Mesh

from fedln_jax.config import Config
from fedln_jax.engine.placement import default_chunk_size
from fedln_jax.errors import FedlnError
from fedln_jax.training.memory import (AUTO_CHUNK_MARGIN, Floor, check_fits, describe,
                                       device_capacity, widest_chunk)


class Layout(NamedTuple):
    """One program's placement. `floor` is what one device needs at least at this width,
    for the runs it holds; `narrowed_from` is auto's default width when auto narrowed it."""
    devices: tuple
    along_runs: int
    along_clients: int
    chunk: int
    floor: Floor
    narrowed_from: int | None = None

    @property
    def mesh(self) -> Mesh:
        return Mesh(np.array(self.devices).reshape(self.along_runs, self.along_clients),
                    ("runs", "clients"))


def mesh_devices(config: Config) -> list:
    """The devices the program is laid over (all, or the first num_devices)."""
    available = jax.devices()
    if config.num_devices is None:
        return available
    if config.num_devices > len(available):
        raise FedlnError(f"num_devices={config.num_devices} cannot host the mesh: only "
                         f"{len(available)} {jax.default_backend()} device(s) are available")
    if jax.process_count() > 1 and config.num_devices != len(available):
        raise FedlnError(f"num_devices={config.num_devices}: a multi-process run lays clients "
                         f"out over all {len(available)} devices; leave num_devices unset")
    return available[:config.num_devices]


def device_layout(runs: int, num_devices: int) -> tuple[int, int]:
    """(devices along the runs axis, devices along the clients axis) of a program's mesh.

    Runs are independent, so laying them over devices needs no communication and no padding,
    while clients of one run are summed across devices every round and a cohort that does not
    divide by the device count is padded (10 clients on 8 devices run as 16 lanes). A program
    of R runs therefore puts gcd(R, devices) devices along the runs axis and the rest along the
    clients axis: 8 seeds on 8 devices are one run per device. Multi-process programs keep the
    clients layout (each process then holds every run)."""
    if runs == 1 or jax.process_count() > 1:
        return 1, num_devices
    along_runs = math.gcd(runs, num_devices)
    return along_runs, num_devices // along_runs


def on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def decide_layout(config: Config, runs: int, floor: Floor, devices: list | None = None) -> Layout:
    """The layout of a program of `runs` runs of `config` (runs differ only in values), checked
    against the device's capacity. `floor`: one run's floor (its chunk and runs fields are
    set here). client_chunk_size unset (auto) on an accelerator narrows the default width (the
    run's whole per-device cohort) to the widest that fits AUTO_CHUNK_MARGIN of the capacity;
    the config itself is never rewritten. Raises FedlnError when even the floor does not fit."""
    devices = mesh_devices(config) if devices is None else devices
    along_runs, along_clients = device_layout(runs, len(devices))
    width = config.client_chunk_size or default_chunk_size(config.cohort_size, along_clients,
                                                           on_cpu())
    floor = floor._replace(chunk=width, runs=math.ceil(runs / along_runs))
    capacity, what = device_capacity(devices[0])
    narrowed_from = None
    if config.client_chunk_size is None and not on_cpu() and capacity is not None:
        fitting = widest_chunk(floor, int(capacity * AUTO_CHUNK_MARGIN))
        if fitting < width:
            narrowed_from, width = width, fitting
            floor = floor._replace(chunk=width)
    check_fits(floor, capacity, what)
    return Layout(tuple(devices), along_runs, along_clients, width, floor, narrowed_from)


def report_auto(layout: Layout) -> None:
    """Say on stderr when auto narrowed the width (once per program built)."""
    if layout.narrowed_from is not None:
        print(f"fedln-jax: client_chunk_size=auto chose {layout.chunk} (the default "
              f"{layout.narrowed_from} does not fit {AUTO_CHUNK_MARGIN:.0%} of the device's "
              f"free memory; {describe(layout.floor.total)} floor)", file=sys.stderr)
