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

`initialize` must run before anything that can start a JAX backend (jax.devices(), the
CPU-fallback check of fedln_jax.runtime.environment, a computation): JAX refuses to join the processes
once a backend is up, and on a host with a GPU/TPU plugin installed any backend query starts
one. fedln_jax.cli calls it first, then the environment check.

XLA's coordination client does not raise when the coordinator cannot be reached: it aborts the
process (a fatal log line and a C++ stack). So the address is checked here first, in one
`error:` line each: a host that does not resolve, process 0's port already taken, and for the
other processes no coordinator answering within FEDLN_COORDINATOR_TIMEOUT seconds (default 300,
JAX's own initialization timeout, which is set to the same value).
"""
from __future__ import annotations

import errno
import os
import socket
import time
from typing import Optional

from fedln_jax.errors import FedlnError

ENV = {"coordinator": "FEDLN_COORDINATOR", "num_processes": "FEDLN_NUM_PROCESSES",
       "process_id": "FEDLN_PROCESS_ID"}
TIMEOUT_ENV = "FEDLN_COORDINATOR_TIMEOUT"
DEFAULT_TIMEOUT = 300   # seconds; jax.distributed.initialize's own default


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


def timeout() -> int:
    """Seconds to wait for the coordinator (FEDLN_COORDINATOR_TIMEOUT, default 300)."""
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    if not (text.isascii() and text.isdecimal()) or not 1 <= int(text) <= 86400:
        raise FedlnError(f"{TIMEOUT_ENV} must be a whole number of seconds in 1..86400, "
                         f"got {text!r}")
    return int(text)


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.strip().rpartition(":")
    return host.strip("[]"), int(port)   # [::1]:1234 -> ::1


def check_reachable(address: str, process_id: int, wait_s: int) -> None:
    """What XLA would abort on, as one FedlnError: an unresolvable host; for process 0 (which
    serves the coordinator on every interface at that port) a port already in use; for the
    others, no coordinator accepting connections at the address within `wait_s` seconds."""
    host, port = _split(address)
    try:
        socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc)
        raise FedlnError(f"--coordinator {address}: host {host!r} does not resolve "
                         f"({reason})") from None
    if process_id == 0:
        problem = _port_taken(port)
        if problem:
            raise FedlnError(f"--coordinator {address}: process 0 serves the coordinator on "
                             f"port {port}, which is in use ({problem}); pick a free port for "
                             "every process")
        return
    deadline = time.monotonic() + wait_s
    while True:
        try:
            with socket.create_connection((host, port), timeout=2):
                return
        except OSError as exc:
            if time.monotonic() >= deadline:
                raise FedlnError(
                    f"--coordinator {address}: no coordinator answered within {wait_s} s "
                    f"({exc.strerror or exc}); start process 0 with the same --coordinator, "
                    f"check the address and the firewall ({TIMEOUT_ENV} sets the wait)") from None
        time.sleep(0.5)


def _port_taken(port: int) -> str | None:
    """Why the coordinator service could not listen on `port` (as gRPC does: every interface,
    SO_REUSEADDR), or None when it can."""
    for family, host in ((socket.AF_INET6, "::"), (socket.AF_INET, "0.0.0.0")):
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:   # no IPv6 here: try IPv4
            continue
        with sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
                sock.listen(1)
            except OSError as exc:
                if exc.errno in (errno.EADDRINUSE, errno.EACCES):
                    return exc.strerror or str(exc)
                continue   # IPv6 switched off: try IPv4
        return None
    return None


def initialize(coordinator: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, auto: bool = False) -> bool:
    """Call jax.distributed.initialize if asked to (before any other JAX call). True if called."""
    args = settings(coordinator, num_processes, process_id, auto)
    if args is None:
        return False
    wait_s = timeout()
    if args:
        check_reachable(args["coordinator"], args["process_id"], wait_s)
    import jax
    # CPU devices of different processes talk through gloo (the default has no cross-process
    # collectives); the setting only concerns the CPU backend, so GPU/TPU runs are unaffected.
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if args:
        call = dict(coordinator_address=args["coordinator"], num_processes=args["num_processes"],
                    process_id=args["process_id"])
    else:
        call = {}
    try:
        jax.distributed.initialize(**call, initialization_timeout=wait_s)
    except (RuntimeError, ValueError, TypeError) as exc:   # what JAX raises before XLA starts
        said = " ".join(str(exc).split())
        if not args:
            raise FedlnError(f"--distributed: JAX found no cluster to join ({said}); outside a "
                             "Cloud TPU slice, SLURM or Open MPI job give --coordinator, "
                             "--num-processes and --process-id") from None
        raise FedlnError(f"jax.distributed.initialize failed: {said}") from None
    return True
