"""FedBN (Li et al. 2021): BatchNorm layers stay local. Each client keeps its own BN running
statistics, and the BN scale and bias where the layers have them (`bn_affine`), stacked in
client_states; it trains from the global model with its own BN layers overlaid, and is
evaluated with them on its own test data. Everything else is averaged as in FedAvg.

A BN layer is a module that owns leaves of the model's `batch_stats` collection, found by its
full path, at any depth: ('norm0',) in the CNN, ('stage0_block0', 'norm1') in the ResNet. Only
the parameters directly under such a path are local, so a ResNet block's convolutions are
averaged while its BN layers are not. A model without BN makes FedBN identical to FedAvg.

The client state is a nested dict shaped like the model's collections,
{"batch_stats": {...}, "params": {...}} ("params" only when the BN layers have parameters),
so it is an ordinary pytree that checkpoints as the global model does.
"""
from __future__ import annotations

from typing import Any, Mapping

from flax import traverse_util

from fedln_jax.algorithms.base import Algorithm, make_algorithm

Path = tuple[str, ...]


def bn_layer_paths(model_state) -> tuple[Path, ...]:
    """The module paths that own `batch_stats` leaves (the BN layers), sorted; () without BN."""
    stats = model_state.get("batch_stats", {}) if model_state else {}
    return tuple(sorted({path[:-1] for path in traverse_util.flatten_dict(stats)}))


def local_layers(params, model_state):
    """The BN layers of a model as a nested dict: {"batch_stats": all of them, "params": the
    parameters directly under a BN layer's path, when there are any}; () when it has no BN."""
    paths = set(bn_layer_paths(model_state))
    if not paths:
        return ()
    flat = traverse_util.flatten_dict(params)
    own = {path: leaf for path, leaf in flat.items() if path[:-1] in paths}
    local = {"batch_stats": model_state["batch_stats"]}
    if own:
        local["params"] = traverse_util.unflatten_dict(own)
    return local


def overlay(tree: Mapping[str, Any], local: Mapping[str, Any]) -> dict:
    """`tree` with the leaves of `local` (a nested dict on a subset of its paths) put in place;
    the rest of `tree`, its structure included, is left as it is."""
    out = dict(tree)
    for key, value in local.items():
        out[key] = overlay(tree[key], value) if isinstance(value, Mapping) else value
    return out


def fedbn() -> Algorithm:
    def client_start(params, model_state, client_state):
        if not client_state:
            return params, model_state
        return (overlay(params, client_state.get("params", {})),
                overlay(model_state, {"batch_stats": client_state["batch_stats"]}))

    def update_client_state(ctx, params, model_state):
        return local_layers(params, model_state) if ctx.client_state else ()

    return make_algorithm("fedbn", personalized_eval=True, init_client_state=local_layers,
                          client_start=client_start, update_client_state=update_client_state)
