"""Bias-free CNN (the paper's), its 8x8 counterpart, and an MLP (docs/method.md#models).

No biases anywhere, head included: the nets are then positively scale-equivariant, which
the FN/LN propositions rely on. Each hidden layer is `linear -> ReLU -> [norm]` (or
`linear -> [norm] -> ReLU` with norm_position="before"); the output of the last hidden
block is the feature phi fed to the head, and logits = head(phi) / tau.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
from flax import linen as nn

from fedln_jax.models.layers import Conv, max_pool2
from fedln_jax.models.normalizers import NormDef, apply_norm


def _act_norm(x, norm, *, position, spatial, train, name):
    if position == "before":
        return nn.relu(apply_norm(norm, x, spatial=spatial, train=train, name=name))
    return apply_norm(norm, nn.relu(x), spatial=spatial, train=train, name=name)


def _head(phi, num_classes, tau, return_features, dtype):
    # The loss is taken in float32 whatever the compute dtype.
    logits = nn.Dense(num_classes, use_bias=False, dtype=dtype, name="head")(phi).astype(jnp.float32)
    if tau != 1.0:
        logits = logits / tau
    return (logits, phi) if return_features else logits


class ConvNet(nn.Module):
    """conv -> act/norm -> pool (per conv), flatten, dense -> act/norm (per dense), head.

    Normalized positions: one per conv, then one per hidden dense layer, in that order;
    `norms` holds one normalizer factory per position (models.normalizers.resolve_norm).
    Params: conv{i}/kernel, dense{i}/kernel, head/kernel [d, num_classes], norm{j}/...
    """

    num_classes: int
    norms: Sequence[NormDef]
    conv_features: Sequence[int] = (64, 64)
    kernel_size: int = 5
    padding: str = "VALID"
    dense_features: Sequence[int] = (384, 192)
    norm_position: str = "after"
    tau: float = 1.0
    conv_impl: str = "patches"
    pool_impl: str = "reshape"
    dtype: str = "float32"      # compute dtype; parameters stay float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        x = jnp.asarray(x, self.dtype)
        j = 0
        for i, f in enumerate(self.conv_features):
            x = Conv(f, (self.kernel_size, self.kernel_size), self.padding, self.conv_impl,
                     name=f"conv{i}")(x)
            x = _act_norm(x, self.norms[j], position=self.norm_position, spatial=True,
                          train=train, name=f"norm{j}")
            x = max_pool2(x, self.pool_impl)
            j += 1
        x = x.reshape(x.shape[:-3] + (-1,))
        for i, f in enumerate(self.dense_features):
            x = nn.Dense(f, use_bias=False, dtype=self.dtype, name=f"dense{i}")(x)
            x = _act_norm(x, self.norms[j], position=self.norm_position, spatial=False,
                          train=train, name=f"norm{j}")
            j += 1
        return _head(x, self.num_classes, self.tau, return_features, self.dtype)


class MLP(nn.Module):
    """flatten, dense -> act/norm (per hidden layer), head. Normalized positions: hidden layers."""

    num_classes: int
    norms: Sequence[NormDef]
    hidden: Sequence[int] = (256, 128)
    norm_position: str = "after"
    tau: float = 1.0
    dtype: str = "float32"      # compute dtype; parameters stay float32

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        x = jnp.asarray(x, self.dtype)
        x = x.reshape(x.shape[:-3] + (-1,))
        for i, f in enumerate(self.hidden):
            x = nn.Dense(f, use_bias=False, dtype=self.dtype, name=f"dense{i}")(x)
            x = _act_norm(x, self.norms[i], position=self.norm_position, spatial=False,
                          train=train, name=f"norm{i}")
        return _head(x, self.num_classes, self.tau, return_features, self.dtype)


# Architecture of each model name: constructor kwargs and the width at each normalized position.
ARCHS = {
    "cnn": dict(cls=ConvNet, kw=dict(conv_features=(64, 64), kernel_size=5, padding="VALID",
                                     dense_features=(384, 192)),
                widths=(64, 64, 384, 192)),
    "small_cnn": dict(cls=ConvNet, kw=dict(conv_features=(16, 32), kernel_size=3, padding="SAME",
                                           dense_features=(128, 64)),
                      widths=(16, 32, 128, 64)),
    "mlp": dict(cls=MLP, kw=dict(hidden=(256, 128)), widths=(256, 128)),
}
