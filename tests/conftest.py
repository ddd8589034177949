import os

# Tests run on the CPU; keep XLA from grabbing every core's worth of threads per test process.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# The command line turns on a persistent compilation cache in the user's cache directory: tests
# (and the subprocesses they start) must not write there. test_compile_cache.py turns it on in
# a temporary directory.
os.environ["FEDLN_JAX_CACHE_DIR"] = "off"


import pytest


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
