"""Multi-host start-up: `jax.distributed.initialize` when the command line or environment asks.

Every process runs the same command with the same config; JAX then sees the devices of all
processes as one mesh (docs/scale.md), each process feeds its own addressable devices
(`placement.replicate`), and only process 0 writes the workdir. Settings, flag first, then
environment variable:

  --coordinator HOST:PORT   FEDLN_COORDINATOR      address of process 0's coordination service
  --num-processes N         FEDLN_NUM_PROCESSES    total number of processes
  --process-id I            FEDLN_PROCESS_ID       this process, 0..N-1

On Cloud TPU slices (and SLURM / Open MPI clusters) JAX detects all three by itself: set
FEDLN_DISTRIBUTED=1 (or pass --distributed) to call `jax.distributed.initialize()` with no
arguments. On CPU the cross-process collectives use gloo.
"""
from __future__ import annotations

import os
from typing import Optional

from fedln_jax.errors import FedlnError

ENV = {"coordinator": "FEDLN_COORDINATOR", "num_processes": "FEDLN_NUM_PROCESSES",
       "process_id": "FEDLN_PROCESS_ID"}


def settings(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
             process_id: Optional[int] = None, auto: bool = False) -> Optional[dict]:
    """The arguments for jax.distributed.initialize, or None for a single-process run."""
    given = {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id}
    for name, var in ENV.items():
        if given[name] is None and os.environ.get(var, "") != "":
            text = os.environ[var]
            if name == "coordinator":
                given[name] = text
            else:
                try:
                    given[name] = int(text)
                except ValueError:
                    raise FedlnError(f"{var} must be an integer, got {text!r}") from None
    auto = auto or os.environ.get("FEDLN_DISTRIBUTED", "") not in ("", "0")
    if all(v is None for v in given.values()):
        return {} if auto else None
    missing = [name for name, v in given.items() if v is None]
    if missing:
        raise FedlnError("multi-process runs need --coordinator, --num-processes and "
                         f"--process-id (or {', '.join(ENV.values())}); missing: "
                         + ", ".join(missing))
    check_address(given["coordinator"])
    if given["num_processes"] < 1 or not 0 <= given["process_id"] < given["num_processes"]:
        raise FedlnError(f"process_id must be in 0..num_processes-1, got process_id="
                         f"{given['process_id']}, num_processes={given['num_processes']}")
    return given


def check_address(address: str) -> None:
    """HOST:PORT with a non-empty host and a port in 1..65535 (jax would fail deep inside)."""
    host, sep, port = address.strip().rpartition(":")
    port_ok = port.isascii() and port.isdecimal() and 0 < int(port) < 65536   # "²" is a digit
    if not sep or not host or any(c.isspace() for c in host) or not port_ok:
        raise FedlnError(f"--coordinator must be HOST:PORT with a port in 1..65535, got {address!r}")


def initialize(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, auto: bool = False) -> bool:
    """Call jax.distributed.initialize if asked to (before any other JAX call). True if called."""
    args = settings(coordinator, num_processes, process_id, auto)
    if args is None:
        return False
    import jax
    # CPU devices of different processes talk through gloo (the default has no cross-process
    # collectives); the setting only concerns the CPU backend, so GPU/TPU runs are unaffected.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args:
        jax.distributed.initialize(coordinator_address=args["coordinator"],
                                   num_processes=args["num_processes"],
                                   process_id=args["process_id"])
    else:
        jax.distributed.initialize()
    return True
