"""JAX's persistent compilation cache, on by default for the command line (docs/running.md).

A run, a resumed run and each program of a sweep then load their compiled XLA executables from
disk the second time instead of compiling again. The directory is, first found:
  --cache-dir DIR (CLI flag) > $FEDLN_JAX_CACHE_DIR > $XDG_CACHE_HOME/fedln_jax/jax
  > ~/.cache/fedln_jax/jax
and the value `off` (flag or variable) turns the cache off. JAX keys each entry by the program,
the jax/jaxlib versions, the backend and the compile options, so a stale entry is never used.
"""
from __future__ import annotations

import os
import sys
import tempfile

ENV_VAR = "FEDLN_JAX_CACHE_DIR"
OFF = "off"
# Programs that compile faster than this are not written: the evaluation and init functions
# compile in well under a second, and thousands of tiny entries would cost more than they save.
MIN_COMPILE_SECONDS = 0.5


def default_cache_dir() -> str:
    """$XDG_CACHE_HOME/fedln_jax/jax, or ~/.cache/fedln_jax/jax when XDG_CACHE_HOME is unset."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "fedln_jax", "jax")


def resolve_cache_dir(flag: str | None = None) -> str | None:
    """The cache directory to use, or None when the cache is off (flag or variable `off`)."""
    for value in (flag, os.environ.get(ENV_VAR)):
        if value is not None and value.strip():
            return None if value.strip().lower() == OFF else os.path.expanduser(value.strip())
    return default_cache_dir()


def _writable(path: str) -> str | None:
    """None when `path` is (or can be made) a writable directory, else why not."""
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".probe"):
            pass
    except OSError as exc:
        return exc.strerror or str(exc)
    return None


def enable(flag: str | None = None, warn=None) -> str | None:
    """Point JAX's persistent compilation cache at the resolved directory; return it.

    Must run before the first compilation of the process (JAX reads the setting once). An
    unwritable directory prints one warning line and leaves the cache off: the run goes on,
    compiling as usual. Returns None when the cache is off.
    """
    import jax
    path = resolve_cache_dir(flag)
    if path is None:
        return None
    problem = _writable(path)
    if problem is not None:
        (warn or _warn)(f"warning: compilation cache directory {path!r} is not writable "
                        f"({problem}); running without the cache (set {ENV_VAR}=off to "
                        f"silence this)")
        return None
    jax.config.update("jax_compilation_cache_dir", path)
    # JAX's own variable, when set, wins (e.g. 0 to cache every program)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
    return path


def _warn(message: str) -> None:
    print(message, file=sys.stderr)
