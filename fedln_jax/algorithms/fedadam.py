"""FedAdam (Reddi et al. 2021): Adam on the server's pseudo-gradient, as in the paper: no bias
correction, second moment started at v0, tau added outside the square root.

optax.scale_by_adam always bias-corrects and starts v at 0 (and optax.scale_by_yogi
bias-corrects and also starts m at its initial value), so both server rules live here.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedln_jax.algorithms.base import Algorithm, make_algorithm

V0 = 1e-6   # initial second moment (docs/method.md#baselines)


class ServerMomentsState(NamedTuple):
    m: optax.Params
    v: optax.Params


def scale_by_server_moments(b1, b2, tau, rule: str, v0: float = V0) -> optax.GradientTransformation:
    """m <- b1 m + (1-b1) g; v <- adam: b2 v + (1-b2) g^2 | yogi: v - (1-b2) g^2 sign(v - g^2);
    direction m / (sqrt(v) + tau). m starts at 0, v at v0; no bias correction."""
    if rule not in ("adam", "yogi"):
        raise ValueError(f"unknown rule {rule!r}")

    def init(params):
        return ServerMomentsState(m=jax.tree.map(jnp.zeros_like, params),
                                  v=jax.tree.map(lambda p: jnp.full_like(p, v0), params))

    def update(updates, state, params=None):
        del params
        m = jax.tree.map(lambda g, m: b1 * m + (1 - b1) * g, updates, state.m)
        if rule == "adam":
            v = jax.tree.map(lambda g, v: b2 * v + (1 - b2) * g * g, updates, state.v)
        else:
            v = jax.tree.map(lambda g, v: v - (1 - b2) * g * g * jnp.sign(v - g * g),
                             updates, state.v)
        direction = jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + tau), m, v)
        return direction, ServerMomentsState(m=m, v=v)

    return optax.GradientTransformation(init, update)


SERVER_MOMENT_KEYS = ("server_beta1", "server_beta2", "server_tau")


def server_moments_tx(rule):
    return lambda hp: scale_by_server_moments(hp["server_beta1"], hp["server_beta2"],
                                              hp["server_tau"], rule)


def fedadam() -> Algorithm:
    return make_algorithm("fedadam", hparam_keys=SERVER_MOMENT_KEYS, default_server_lr=1e-2,
                          server_tx=server_moments_tx("adam"))
