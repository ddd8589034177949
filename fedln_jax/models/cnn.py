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

from fedln_jax.errors import FedlnError
from fedln_jax.models.layers import Conv, kernel_init, max_pool2
from fedln_jax.models.normalizers import NormDef, apply_norm


def _act_norm(x, norm, *, position, spatial, train, name):
    if position == "before":
        return nn.relu(apply_norm(norm, x, spatial=spatial, train=train, name=name))
    return apply_norm(norm, nn.relu(x), spatial=spatial, train=train, name=name)


def _head(phi, num_classes, tau, return_features, dtype, init):
    # The loss is taken in float32 whatever the compute dtype.
    logits = nn.Dense(num_classes, use_bias=False, dtype=dtype, kernel_init=kernel_init(init),
                      name="head")(phi).astype(jnp.float32)
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
    weight_init: str = "torch"  # models.layers.INITS (not `init`: that is Module.init)

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        x = jnp.asarray(x, self.dtype)
        j = 0
        for i, f in enumerate(self.conv_features):
            x = Conv(f, (self.kernel_size, self.kernel_size), self.padding, self.conv_impl,
                     weight_init=self.weight_init, name=f"conv{i}")(x)
            x = _act_norm(x, self.norms[j], position=self.norm_position, spatial=True,
                          train=train, name=f"norm{j}")
            x = max_pool2(x, self.pool_impl)
            j += 1
        x = x.reshape(x.shape[:-3] + (-1,))
        x = _dense_layers(x, self.dense_features, self.norms[j:], j, self.norm_position, train,
                          self.dtype, self.weight_init)
        return _head(x, self.num_classes, self.tau, return_features, self.dtype, self.weight_init)


def _dense_layers(x, features: Sequence[int], norms: Sequence[NormDef], first_norm: int,
                  norm_position: str, train: bool, dtype: str, weight_init: str):
    """dense{i} -> act/norm per width, inside the calling module (the CNN's dense tail, the
    MLP's hidden layers); the norms are numbered on from first_norm."""
    for i, f in enumerate(features):
        x = nn.Dense(f, use_bias=False, dtype=dtype, kernel_init=kernel_init(weight_init),
                     name=f"dense{i}")(x)
        x = _act_norm(x, norms[i], position=norm_position, spatial=False, train=train,
                      name=f"norm{first_norm + i}")
    return x


class MLP(nn.Module):
    """flatten, dense -> act/norm (per hidden layer), head. Normalized positions: hidden layers."""

    num_classes: int
    norms: Sequence[NormDef]
    hidden: Sequence[int] = (256, 128)
    norm_position: str = "after"
    tau: float = 1.0
    dtype: str = "float32"      # compute dtype; parameters stay float32
    weight_init: str = "torch"  # models.layers.INITS (not `init`: that is Module.init)

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        x = jnp.asarray(x, self.dtype)
        x = x.reshape(x.shape[:-3] + (-1,))
        x = _dense_layers(x, self.hidden, self.norms, 0, self.norm_position, train, self.dtype,
                          self.weight_init)
        return _head(x, self.num_classes, self.tau, return_features, self.dtype, self.weight_init)


# Architecture of each model name: constructor kwargs and the width at each normalized position.
ARCHS = {
    "cnn": dict(cls=ConvNet, kw=dict(conv_features=(64, 64), kernel_size=5, padding="VALID",
                                     dense_features=(384, 192)),
                widths=(64, 64, 384, 192)),
    # The digits CNN. Its convs are narrow (16/32); the demo runs it at conv_features=32/64,
    # the narrowest width of the width ablation at which fn comes close to ln (final accuracy
    # 0.902 vs 0.918 on AVX2, 0.858 vs 0.923 on AVX-512, against 0.798 vs 0.909 at 16/32;
    # docs/models.md#width). The default
    # stays 16/32, the model of the other digits sections of docs/results.md (each names its own).
    "small_cnn": dict(cls=ConvNet, kw=dict(conv_features=(16, 32), kernel_size=3, padding="SAME",
                                           dense_features=(128, 64)),
                      widths=(16, 32, 128, 64)),
    "mlp": dict(cls=MLP, kw=dict(hidden=(256, 128)), widths=(256, 128)),
}

# Config keys that set the widths, and the constructor field each one fills per model.
WIDTH_FIELDS = {"conv_features": {"cnn": "conv_features", "small_cnn": "conv_features"},
                "dense_features": {"cnn": "dense_features", "small_cnn": "dense_features",
                                   "mlp": "hidden"}}


def parse_features(key: str, value, expected: int) -> tuple[int, ...]:
    """A width list from a config value: "32/64" (or "32,64"; a sweep grid splits its values
    on commas, so "/" is the separator that works everywhere) or a sequence of ints; "" or
    () = unset.

    Raises FedlnError on a non-integer, a width < 1 or a list whose length is not `expected`
    (the number of layers is fixed by the model, so a list only sets their widths)."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.replace("/", ",").split(",")] if value.strip() else []
    else:
        parts = list(value)
    widths = []
    for part in parts:
        if isinstance(part, bool) or (not isinstance(part, (int, str))):
            raise FedlnError(f"{key}={value!r}: every width must be a positive integer, got {part!r}")
        try:
            width = int(part)
        except ValueError:
            raise FedlnError(f"{key}={value!r}: every width must be a positive integer, "
                             f"got {part!r}") from None
        if width < 1:
            raise FedlnError(f"{key}={value!r}: every width must be >= 1, got {width}")
        widths.append(width)
    if widths and len(widths) != expected:
        raise FedlnError(f"{key}={value!r} has {len(widths)} entries; this model has "
                         f"{expected} such layers, e.g. {key}={'/'.join(['32'] * expected)}")
    return tuple(widths)


def resolve_arch(name: str, conv_features="", dense_features="") -> dict:
    """ARCHS[name] with the widths of the config keys conv_features / dense_features applied
    ("" = the model's own). Returns dict(cls, kw, widths) like an ARCHS entry."""
    arch = ARCHS[name]
    kw = dict(arch["kw"])
    for key, value in (("conv_features", conv_features), ("dense_features", dense_features)):
        is_set = value.strip() if isinstance(value, str) else len(value)
        if not is_set:
            continue
        field = WIDTH_FIELDS[key].get(name)
        if field is None:
            models = ", ".join(WIDTH_FIELDS[key])
            raise FedlnError(f"{key} applies to model {models} only, not {name!r}")
        kw[field] = parse_features(key, value, len(kw[field]))
    if arch["cls"] is ConvNet:
        widths = tuple(kw["conv_features"]) + tuple(kw["dense_features"])
    else:
        widths = tuple(kw["hidden"])
    return dict(cls=arch["cls"], kw=kw, widths=widths)
