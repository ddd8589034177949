"""fedln_jax: federated learning with swappable normalizers under label skew, in JAX/Flax."""
from fedln_jax.config import Config
from fedln_jax.errors import FedlnError
from fedln_jax.train import run, run_group

__all__ = ["Config", "FedlnError", "run", "run_group"]
__version__ = "0.1.0"
