"""XLA_FLAGS checked before XLA reads it in this process.

XLA parses XLA_FLAGS the first time it builds compile options or a backend, and a flag it does
not know, a value it cannot parse, or a word without `--` (taken for a file of flags that does
not exist) ends the process there: a fatal log line (glog's `F...`) and up to 90 lines of
usage, nothing Python can catch. So every command that may start XLA first builds XLA's
compile options under the same environment in a child interpreter (about 0.2 s, and only when
XLA_FLAGS is set), and a child that died of it becomes one FedlnError quoting XLA's reason.
A GPU or TPU plugin carries its own copy of XLA; a flag that only the plugin's copy refuses is
not seen here (docs/install.md#xla_flags).
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
