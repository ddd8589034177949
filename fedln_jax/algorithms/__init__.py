"""Federated algorithms as plug-ins (contract in base.py), a registry by name."""
from fedln_jax.algorithms.base import (Algorithm, ClientContext, cross_entropy, init_client_states,
                                       make_algorithm)
from fedln_jax.algorithms.fedadam import fedadam, scale_by_server_moments
from fedln_jax.algorithms.fedavg import fedavg
from fedln_jax.algorithms.fedavgm import fedavgm
from fedln_jax.algorithms.fedbn import fedbn
from fedln_jax.algorithms.feddecorr import decorrelation_penalty, feddecorr
from fedln_jax.algorithms.fedlc import calibration_margins, fedlc
from fedln_jax.algorithms.fedprox import fedprox
from fedln_jax.algorithms.fedrs import fedrs, restriction_scales
from fedln_jax.algorithms.fedyogi import fedyogi
from fedln_jax.algorithms.scaffold import scaffold
from fedln_jax.errors import FedlnError

REGISTRY = {a.name: a for a in (fedavg(), fedprox(), scaffold(), fedavgm(), fedadam(), fedyogi(),
                                fedlc(), fedrs(), feddecorr(), fedbn())}
ALGORITHM_NAMES = tuple(REGISTRY)
# Config keys owned by some algorithm: setting one to a non-default value under another
# algorithm is an error (config.validate).
OWNED_HPARAMS = {key: tuple(a.name for a in REGISTRY.values() if key in a.hparam_keys)
                 for a in REGISTRY.values() for key in a.hparam_keys}


def without_inert_hparams(values: dict) -> dict:
    """A recorded config dict (config.json, a checkpoint's) without the hyperparameters its
    algorithm does not read. Filled in with today's defaults (config.with_defaults), a run
    recorded before such a default changed (prox_mu 1.0 -> 0.01, feddecorr_coef 0.1 -> 0.5)
    still matches its config; the run's own algorithm's hyperparameters are kept as recorded."""
    algorithm = values.get("algorithm", "fedavg")
    return {k: v for k, v in values.items()
            if k not in OWNED_HPARAMS or algorithm in OWNED_HPARAMS[k]}


def get_algorithm(name: str) -> Algorithm:
    if name not in REGISTRY:
        raise FedlnError(f"unknown algorithm {name!r}; expected one of {', '.join(ALGORITHM_NAMES)}")
    return REGISTRY[name]


__all__ = ["Algorithm", "ClientContext", "REGISTRY", "ALGORITHM_NAMES", "OWNED_HPARAMS",
           "get_algorithm", "make_algorithm", "init_client_states", "cross_entropy",
           "calibration_margins", "restriction_scales", "decorrelation_penalty",
           "scale_by_server_moments", "without_inert_hparams"]
