"""fedln_jax: federated learning with swappable normalizers under label skew, in JAX/Flax.

The public names load on first use (PEP 562), so `import fedln_jax.cli` and `fedln-jax --help`
do not import JAX (docs/config.md#start-up)."""
from fedln_jax.version import __version__

# name -> the module that defines it
_PUBLIC = {"Config": "fedln_jax.config", "DivergedError": "fedln_jax.errors",
           "FedlnError": "fedln_jax.errors", "Interrupted": "fedln_jax.errors",
           "run": "fedln_jax.training.train", "run_group": "fedln_jax.training.train"}

__all__ = ["Config", "DivergedError", "FedlnError", "Interrupted", "__version__", "run",
           "run_group"]


def __getattr__(name):
    if name not in _PUBLIC:
        raise AttributeError(f"module 'fedln_jax' has no attribute {name!r}")
    import importlib
    return getattr(importlib.import_module(_PUBLIC[name]), name)


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
