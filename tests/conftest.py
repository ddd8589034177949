import os
import shutil
import tempfile

# Tests run on the CPU; keep XLA from grabbing every core's worth of threads per test process.
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache for the whole test session, in a temporary directory that
# the session's first process (plain pytest, or the xdist controller) makes and removes; the
# xdist workers and every `fedln-jax` subprocess inherit it through the environment. Many
# tests compile the same tiny round in-process and again in a subprocess: the second time it
# is read from disk. Never the user's cache directory (test_compile_cache.py checks that with
# directories of its own).
SESSION_CACHE_VAR = "FEDLN_TEST_SESSION_CACHE"
_OWNS_SESSION_CACHE = SESSION_CACHE_VAR not in os.environ
if _OWNS_SESSION_CACHE:
    os.environ[SESSION_CACHE_VAR] = tempfile.mkdtemp(prefix="fedln_test_jax_cache_")
os.environ["FEDLN_JAX_CACHE_DIR"] = os.environ[SESSION_CACHE_VAR]

import pytest  # noqa: E402

from fedln_jax.runtime import compile_cache  # noqa: E402

compile_cache.enable()


def pytest_xdist_auto_num_workers(config):
    """`-n auto` (pyproject.toml): one worker per core this process may use, at most 4 (each
    worker is a JAX process of up to ~1 GB, and XLA already threads within a worker)."""
    return max(1, min(len(os.sched_getaffinity(0)), 4))


def pytest_sessionfinish(session, exitstatus):
    if _OWNS_SESSION_CACHE and not hasattr(session.config, "workerinput"):
        shutil.rmtree(os.environ[SESSION_CACHE_VAR], ignore_errors=True)


def _snapshot(path):
    """Every file below `path` with its bytes, to prove a workdir was left untouched."""
    out = {}
    for root, _, files in os.walk(path):
        for name in files:
            full = os.path.join(root, name)
            with open(full, "rb") as f:
                out[os.path.relpath(full, path)] = f.read()
    return out


@pytest.fixture
def snapshot():
    return _snapshot


# A round small enough to compile and run in seconds: 4 synthetic clients, 3 sampled per round.
TINY_ROUND = dict(dataset="synthetic", num_clients=4, clients_per_round=3, local_steps=2,
                  batch_size=8, partition="n_class", lr=0.05)


def tiny_round_config(**overrides):
    """A validated Config of TINY_ROUND with `overrides`."""
    from fedln_jax.config import Config
    return Config(**{**TINY_ROUND, **overrides}).validate()


def max_diff(a, b) -> float:
    """The largest absolute difference between two pytrees of the same structure (0 if empty)."""
    import jax
    import jax.numpy as jnp
    return max([float(jnp.abs(x - y).max()) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))]
               + [0.0])


def weighted_mean(trees_M, weights_M):
    """The textbook sample-count-weighted mean over a leading clients axis (w / sum(w) times
    the stacked trees): what a round's aggregation is checked against."""
    import jax
    import jax.numpy as jnp
    w_M = weights_M / weights_M.sum()
    return jax.tree.map(lambda t: jnp.tensordot(w_M, t, axes=1), trees_M)
