"""Models and normalizers: `build_model(name, norm, num_classes, ...)` is the entry point."""

from __future__ import annotations

import math

from fedln_jax.errors import FedlnError
from fedln_jax.models.cnn import ARCHS, MLP, ConvNet
from fedln_jax.models.flops import forward_macs, train_flops_per_example
from fedln_jax.models.layers import CONV_IMPLS, Conv, conv2d, max_pool2, resolve_conv_impl
from fedln_jax.models.normalizers import (NORM_PRESETS, PRIMITIVES, Normalizer, apply_norm,
                                          check_width, expand_norm_layers, group_norm,
                                          parse_primitive)

MODEL_NAMES = ("cnn", "small_cnn", "mlp")
DTYPES = ("float32", "bfloat16")
NORM_POSITIONS = ("after", "before")


def num_norm_positions(name: str) -> int:
    """Number of normalized positions of model `name` (4 for cnn/small_cnn, 2 for mlp)."""
    _check_name(name)
    return len(ARCHS[name]["widths"])


def feature_dim(name: str) -> int:
    """Dimension d of the penultimate feature phi of model `name`."""
    _check_name(name)
    return ARCHS[name]["widths"][-1]


def _check_name(name):
    if name not in MODEL_NAMES:
        raise FedlnError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")


def build_model(name: str, norm: str, num_classes: int, *, norm_layers: str = "",
                norm_position: str = "after", gn_groups: int = 4, tau: float = 1.0,
                conv_impl: str = "auto", dtype: str = "float32"):
    """Build a bias-free flax Linen model.

    Args:
      name: one of MODEL_NAMES.
      norm: preset in NORM_PRESETS (none | bn | gn | ln | fn).
      num_classes: C, the head width.
      norm_layers: comma-separated primitives, one per normalized position; overrides `norm`.
      norm_position: "after" (linear -> ReLU -> norm) or "before" (linear -> norm -> ReLU).
      gn_groups: G of the "gn" preset.
      tau: logits are divided by tau.
      conv_impl: "auto" (patches on CPU, lax on GPU/TPU), "patches" or "lax"; the same
        variables work with every choice.
      dtype: compute dtype, "float32" or "bfloat16" (for GPU/TPU). Parameters, normalizer
        statistics and logits stay float32 either way.

    Returns:
      A Linen module: `apply(variables, x, train=..., return_features=...)`, x float32 NHWC.
    """
    _check_name(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise FedlnError(f"num_classes must be a positive integer, got {num_classes!r}")
    if norm_position not in NORM_POSITIONS:
        raise FedlnError(f"unknown norm_position {norm_position!r}; expected after or before")
    try:
        tau = float(tau)
    except (TypeError, ValueError):
        raise FedlnError(f"tau must be a positive number, got {tau!r}") from None
    if not (math.isfinite(tau) and tau > 0):
        raise FedlnError(f"tau must be a positive number, got {tau!r}")
    if dtype not in DTYPES:
        raise FedlnError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    arch = ARCHS[name]
    widths = arch["widths"]
    specs = expand_norm_layers(norm, len(widths), norm_layers, gn_groups)
    for spec, width in zip(specs, widths):
        check_width(spec, width)
    kw = dict(arch["kw"], num_classes=num_classes, norm_layers=specs,
              norm_position=norm_position, tau=tau, dtype=dtype)
    conv, pool = resolve_conv_impl(conv_impl)
    if arch["cls"] is ConvNet:
        kw.update(conv_impl=conv, pool_impl=pool)
    return arch["cls"](**kw)


__all__ = [
    "build_model", "MODEL_NAMES", "DTYPES", "NORM_PRESETS", "NORM_POSITIONS", "PRIMITIVES", "CONV_IMPLS",
    "expand_norm_layers", "parse_primitive", "check_width", "num_norm_positions", "feature_dim",
    "ConvNet", "MLP", "Conv", "conv2d", "max_pool2", "resolve_conv_impl", "Normalizer",
    "apply_norm", "group_norm", "forward_macs", "train_flops_per_example",
]
