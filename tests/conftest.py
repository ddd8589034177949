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
