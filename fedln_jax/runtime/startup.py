"""What JAX starts from, checked before it starts, so that a bad environment is one error line.

XLA_FLAGS: XLA parses it the first time it builds compile options or a backend, and a flag it
does not know, a value it cannot parse, or a word without `--` (taken for a file of flags that
does not exist) ends the process there: a fatal log line (glog's `F...`) and up to 90 lines of
usage, nothing Python can catch. So every command first builds XLA's compile options under the
same environment in a child interpreter (about 0.2 s, and only when XLA_FLAGS is set), and a
child that died of it becomes one FedlnError quoting XLA's reason. A GPU or TPU plugin carries
its own copy of XLA; a flag that only the plugin's copy refuses is not seen here
(docs/install.md#when-jax-cannot-start).

JAX's own variables (JAX_ENABLE_X64=maybe, JAX_DEFAULT_MATMUL_PRECISION=bogus) fail as a
ValueError while `import jax` runs: `import_jax` makes that one FedlnError. FEDLN_TEST_PAUSE,
the tests' hook (fedln_jax/training/checkpoint.py), is read here too, before anything is written.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

from fedln_jax.errors import FedlnError

# The jaxlib extension module: `_jax` in the supported jaxlibs, `xla_extension` in older ones.
PROBE = ("try:\n    from jaxlib import _jax as xla\n"
         "except ImportError:\n    from jaxlib import xla_extension as xla\n"
         "xla.CompileOptions()\n")
# glog's prefix: severity, date, time, thread, file:line]
GLOG_LINE = re.compile(r"^([EF])\d{4} [\d:.]+\s+\d+ [\w.]+:\d+\] (.*)$")
PROBE_TIMEOUT_S = 120


def xla_flags_problem(stderr: str) -> str | None:
    """XLA's reason in the child's log: its error line (a value it could not interpret) if
    there is one, else its fatal line; None when the child did not die of a fatal log line."""
    errors, fatal = [], None
    for line in stderr.splitlines():
        match = GLOG_LINE.match(line.strip())
        if match and match.group(1) == "E":
            errors.append(match.group(2))
        elif match:
            fatal = match.group(2)
    if fatal is None:
        return None
    reason = errors[0] if errors else fatal
    return reason if len(reason) <= 300 else reason[:297] + "..."


def check_xla_flags(environ=None) -> None:
    """Raise FedlnError if XLA would abort this process on its XLA_FLAGS."""
    environ = os.environ if environ is None else environ
    flags = environ.get("XLA_FLAGS", "")
    if not flags.strip():
        return
    try:
        child = subprocess.run([sys.executable, "-c", PROBE], env=dict(environ),
                               capture_output=True, text=True, timeout=PROBE_TIMEOUT_S)
    except (OSError, subprocess.TimeoutExpired):
        return   # no verdict: JAX starts as it would have
    if child.returncode == 0:
        return
    problem = xla_flags_problem(child.stderr)
    if problem is not None:
        raise FedlnError(f"XLA_FLAGS={flags!r} is refused by XLA: {problem}; correct or unset "
                         f"XLA_FLAGS")


def import_jax():
    """`import jax`, with a JAX environment variable it cannot read as one FedlnError."""
    try:
        import jax
    except ValueError as exc:   # raised by jax._src.config while it reads the environment
        text = " ".join(str(exc).split())
        flag = re.search(r"JAX flag (jax_\w+)", text)
        named = f" (the environment variable {flag.group(1).upper()})" if flag else ""
        raise FedlnError(f"JAX cannot start: {text}{named}; correct or unset it") from None
    return jax


# The tests' pause hook: EVENT:ROUND:SECONDS:DIR (fedln_jax/training/checkpoint.py).
PAUSE_ENV = "FEDLN_TEST_PAUSE"
PAUSE_EVENTS = ("block", "save", "metrics", "saved")


def pause_spec(environ=None) -> tuple[str, int, float, str] | None:
    """FEDLN_TEST_PAUSE parsed, None when unset; FedlnError when it is malformed."""
    spec = (os.environ if environ is None else environ).get(PAUSE_ENV, "")
    if not spec:
        return None
    parts = spec.split(":", 3)
    try:
        event, round_, seconds, directory = parts
        parsed = event, int(round_), float(seconds), directory
    except ValueError:
        parsed = None
    if parsed is None or parsed[0] not in PAUSE_EVENTS or not parsed[3]:
        raise FedlnError(f"{PAUSE_ENV}={spec!r} is not EVENT:ROUND:SECONDS:DIR with EVENT one of "
                         f"{', '.join(PAUSE_EVENTS)} (a hook of the tests); unset it")
    return parsed


def check_environment() -> None:
    """Every check of the environment a command starts from, before JAX is imported."""
    pause_spec()
    check_xla_flags()
    import_jax()
