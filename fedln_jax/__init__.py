"""fedln_jax: federated learning with swappable normalizers under label skew, in JAX/Flax."""
from fedln_jax.config import Config
from fedln_jax.errors import DivergedError, FedlnError, Interrupted
from fedln_jax.train import run, run_group

__all__ = ["Config", "DivergedError", "FedlnError", "Interrupted", "run", "run_group"]
__version__ = "0.1.0"
