"""fedln_jax: federated learning with swappable normalizers under label skew, in JAX/Flax."""
from fedln_jax.config import Config
from fedln_jax.errors import DivergedError, FedlnError, Interrupted
from fedln_jax.train import run

__all__ = ["Config", "DivergedError", "FedlnError", "Interrupted", "run"]
__version__ = "0.1.0"
