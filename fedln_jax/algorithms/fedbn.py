"""FedBN (Li et al. 2021): BatchNorm layers stay local. Each client keeps its own BN scale,
bias and running statistics (stacked in client_states), trains from the global model with its
own BN layers overlaid, and is evaluated with them on its own test data. Everything else is
averaged as in FedAvg. BN layers are the keys of the model's `batch_stats` collection; a model
without BN makes FedBN identical to FedAvg.
"""
from fedln_jax.algorithms.base import Algorithm, make_algorithm


def bn_layer_names(model_state) -> tuple[str, ...]:
    return tuple(sorted(model_state.get("batch_stats", {}))) if model_state else ()


def local_layers(params, model_state):
    """The BN parameters and statistics of a model, or () when it has no BN."""
    names = bn_layer_names(model_state)
    if not names:
        return ()
    return {"params": {n: params[n] for n in names if n in params},
            "batch_stats": model_state["batch_stats"]}


def fedbn() -> Algorithm:
    def client_start(params, model_state, client_state):
        if not client_state:
            return params, model_state
        return ({**params, **client_state["params"]},
                {**model_state, "batch_stats": client_state["batch_stats"]})

    def update_client_state(ctx, params, model_state):
        return local_layers(params, model_state) if ctx.client_state else ()

    return make_algorithm("fedbn", personalized_eval=True, init_client_state=local_layers,
                          client_start=client_start, update_client_state=update_client_state)
