"""Models and normalizers: `build_model(name, norm, num_classes, ...)` is the entry point."""

from __future__ import annotations

import math

from fedln_jax.choices import DTYPES
from fedln_jax.errors import FedlnError
from fedln_jax.models.cnn import ARCHS, MLP, WIDTH_FIELDS, ConvNet, parse_features, resolve_arch
from fedln_jax.models.flops import forward_macs, train_flops_per_example
from fedln_jax.models.layers import (CONV_IMPLS, INITS, Conv, auto_conv_choice, conv2d, kernel_init,
                                     max_pool2, resolve_conv_impl)
from fedln_jax.models.normalizers import (NORM_PRESETS, PRIMITIVES, NormDef, NormModule, Preset,
                                          Primitive, apply_norm, check_width, expand_norm_layers,
                                          group_norm, preset, resolve_norm)
from fedln_jax.models.resnet import RESNET_WIDTHS, ResNet, resnet_feature_dim

# The model registry: the CNN/MLP architecture table (models/cnn.py) and the ResNet widths
# (models/resnet.py); a new model is an entry in one of them.
MODEL_NAMES = tuple(ARCHS) + tuple(RESNET_WIDTHS)
NORM_POSITIONS = ("after", "before")


def num_norm_positions(name: str) -> int:
    """Entries of `norm_layers` for model `name`: 4 for cnn/small_cnn, 2 for mlp, and 2 for
    the ResNets (every hidden position, the pooled feature)."""
    _check_name(name)
    if name in RESNET_WIDTHS:
        return 2
    return len(ARCHS[name]["widths"])


def feature_dim(name: str, dense_features="", image_shape=None) -> int:
    """Dimension d of the penultimate feature phi of model `name` (with the widths of the
    dense_features config key, when set). A ResNet's d depends on the input size (avg_pool 4 +
    flatten, as the reference: 512 at 32x32, 2048 at 64x64), so it needs `image_shape`, the
    [H, W, ...] of one input; the CNN and MLP ignore it."""
    _check_name(name)
    if name in RESNET_WIDTHS:
        if image_shape is None:
            raise ValueError(f"feature_dim of {name!r} depends on the input size: pass "
                             "image_shape=(H, W, C)")
        return resnet_feature_dim(RESNET_WIDTHS[name][-1], tuple(image_shape)[:2])
    return resolve_arch(name, dense_features=dense_features)["widths"][-1]


def resnet_norm_layers(norm: str, norm_layers: str = "", gn_groups: int = 4) -> tuple[str, str]:
    """(hidden, feature) primitives of a ResNet: a preset normalizes every hidden position
    (fn: only the pooled feature); `norm_layers` is "<hidden>,<feature>"."""
    if norm_layers and norm_layers.strip() and len(norm_layers.split(",")) != 2:
        raise FedlnError(
            f"norm_layers {norm_layers!r} has {len(norm_layers.split(','))} entries; a ResNet "
            "takes exactly 2: <hidden>,<feature> (one primitive for every conv position, one "
            "for the pooled feature), e.g. norm_layers=ln,none")
    if norm_layers and norm_layers.strip():
        return expand_norm_layers(norm, 2, norm_layers, gn_groups)
    layers, feature = preset(norm, gn_groups)
    return (layers, feature or "none")


def checked_norms(name: str, norm: str, norm_layers: str, gn_groups: int,
                  widths: tuple[int, ...]) -> tuple[str, ...]:
    """The primitive names of model `name` (cnn/small_cnn/mlp: one per normalized position; a
    ResNet: hidden, feature), each checked against the widths it normalizes (those of
    model_widths); FedlnError on an unknown or malformed name, a wrong count or a width it
    cannot normalize. Config.validate calls it, so the model is never built to find out."""
    if name in RESNET_WIDTHS:
        hidden, feature = resnet_norm_layers(norm, norm_layers, gn_groups)
        for width in widths:
            check_width(hidden, width)
        check_width(feature, widths[-1])
        return hidden, feature
    specs = expand_norm_layers(norm, len(widths), norm_layers, gn_groups)
    for spec, width in zip(specs, widths):
        check_width(spec, width)
    return specs


def resolve_resnet_widths(name, conv_features, dense_features) -> None:
    """The ResNets have fixed widths: a width key set for one is an error, not ignored."""
    for key, value in (("conv_features", conv_features), ("dense_features", dense_features)):
        if (value.strip() if isinstance(value, str) else len(value)):
            raise FedlnError(f"{key} applies to model {', '.join(WIDTH_FIELDS[key])} only, "
                             f"not {name!r}")


def model_widths(name: str, conv_features="", dense_features="") -> tuple[int, ...]:
    """Width at each normalized position of model `name` with the width keys applied
    (FedlnError on a bad width list); Config.validate calls it so a bad list is refused
    before anything runs."""
    _check_name(name)
    if name in RESNET_WIDTHS:
        resolve_resnet_widths(name, conv_features, dense_features)
        return tuple(RESNET_WIDTHS[name])
    return resolve_arch(name, conv_features, dense_features)["widths"]


def _check_name(name):
    if name not in MODEL_NAMES:
        raise FedlnError(f"unknown model {name!r}; expected one of {', '.join(MODEL_NAMES)}")


def build_model(name: str, norm: str, num_classes: int, *, norm_layers: str = "",
                norm_position: str = "after", gn_groups: int = 4, tau: float = 1.0,
                conv_impl: str = "auto", dtype: str = "float32", conv_features="",
                dense_features="", init: str = "torch"):
    """Build a flax Linen model (bias-free everywhere except the ResNet head).

    Args:
      name: one of MODEL_NAMES.
      norm: a preset name (NORM_PRESETS: none | bn | gn | ln | fn).
      num_classes: C, the head width.
      norm_layers: comma-separated primitives, one per normalized position; overrides `norm`.
        ResNets take two: "<hidden>,<feature>" (see models/resnet.py).
      norm_position: "after" (linear -> ReLU -> norm) or "before" (linear -> norm -> ReLU).
      gn_groups: G of the "gn" preset.
      tau: logits are divided by tau.
      conv_impl: one of CONV_IMPLS: "auto" (`auto_conv_choice`: torch_large on a CPU with
        PyTorch, else patches on CPU, lax on GPU/TPU), "patches", "lax", "torch",
        "torch_large"; the same variables work with every choice.
      dtype: compute dtype, "float32" or "bfloat16" (for GPU/TPU). Parameters, normalizer
        statistics and logits stay float32 either way.
      conv_features: widths of the convs of cnn/small_cnn, "32,64" or (32, 64); "" = the model's.
      dense_features: widths of the hidden dense layers of cnn/small_cnn/mlp; "" = the model's.
      init: weight initialization, "torch" (PyTorch's default, the paper's reference code) or
        "lecun" (flax's default); models.layers.INITS.

    Returns:
      A Linen module: `apply(variables, x, train=..., return_features=...)`, x float32 NHWC.
    """
    _check_name(name)
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise FedlnError(f"num_classes must be a positive integer, got {num_classes!r}")
    if norm_position not in NORM_POSITIONS:
        raise FedlnError(f"unknown norm_position {norm_position!r}; expected after or before")
    # A programmer-error guard: the user's tau is checked once, in Config.validate.
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not (math.isfinite(tau) and tau > 0):
        raise ValueError(f"tau must be a positive number, got {tau!r}")
    tau = float(tau)
    if dtype not in DTYPES:
        raise FedlnError(f"unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
    conv, pool = resolve_conv_impl(conv_impl)
    kernel_init(init)   # an unknown name is refused here, before anything is built
    if name in RESNET_WIDTHS:
        resolve_resnet_widths(name, conv_features, dense_features)
        if dtype != "float32":
            raise FedlnError(f"model {name!r} runs in float32 only (dtype={dtype!r} is not supported)")
        widths = RESNET_WIDTHS[name]
        hidden, feature = checked_norms(name, norm, norm_layers, gn_groups, widths)
        return ResNet(num_classes=num_classes, norms=(resolve_norm(hidden), resolve_norm(feature)),
                      widths=widths, norm_position=norm_position, tau=tau, conv_impl=conv,
                      weight_init=init)
    arch = resolve_arch(name, conv_features, dense_features)
    widths = arch["widths"]
    specs = checked_norms(name, norm, norm_layers, gn_groups, widths)
    # The names are resolved here, once: the modules receive factories.
    kw = dict(arch["kw"], num_classes=num_classes, norms=tuple(resolve_norm(s) for s in specs),
              norm_position=norm_position, tau=tau, dtype=dtype, weight_init=init)
    if arch["cls"] is ConvNet:
        kw.update(conv_impl=conv, pool_impl=pool)
    return arch["cls"](**kw)


__all__ = [
    "build_model", "MODEL_NAMES", "DTYPES", "INITS", "kernel_init", "NORM_PRESETS", "NORM_POSITIONS", "PRIMITIVES", "CONV_IMPLS",
    "expand_norm_layers", "resolve_norm", "preset", "check_width", "num_norm_positions",
    "feature_dim", "checked_norms", "ConvNet", "MLP", "ResNet", "resnet_norm_layers", "Conv", "conv2d", "max_pool2",
    "resolve_conv_impl", "auto_conv_choice", "NormDef", "NormModule", "Preset", "Primitive", "apply_norm",
    "group_norm", "forward_macs",
    "train_flops_per_example", "model_widths", "parse_features", "resolve_arch",
]
