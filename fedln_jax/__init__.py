"""fedln_jax: federated learning with swappable normalizers under label skew, in JAX/Flax."""
from fedln_jax.config import Config
from fedln_jax.errors import DivergedError, FedlnError, Interrupted
from fedln_jax.train import run, run_group
from fedln_jax.version import __version__

__all__ = ["Config", "DivergedError", "FedlnError", "Interrupted", "__version__", "run",
           "run_group"]
