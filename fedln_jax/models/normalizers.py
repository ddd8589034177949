"""Normalizer primitives, selectable by name at every normalized position (docs/method.md#normalizers).

A position is either a conv map [..., H, W, C] ("spatial": per-example statistics over
H, W, C) or a dense feature [..., D] (statistics over D). Primitives:

  none          identity
  bn            flax BatchNorm (running stats in `batch_stats`, momentum 0.9, eps 1e-5, affine)
  gn<G>         GroupNorm with G groups, eps 1e-5, no affine ("gn<G>_affine": per-channel affine)
  ln            GroupNorm with 1 group, no affine
  ln_affine     ln + learnable per-channel scale and bias (the bias breaks scale-equivariance)
  mean          mean-shift only: x - mean
  l2            x / max(||x||, 1e-12)
  l2s           l2 * sqrt(#elements per example)   (FN's fixed-scale feature normalization)
  scale<c>      multiply by the constant c, e.g. scale2.5
  lscale        learnable scalar scale, init 1

Presets expand to one primitive per position: none, bn, gn (gn<gn_groups>), ln, and fn
(identity at the hidden positions, l2s at the penultimate feature).
"""

from __future__ import annotations

import math
import re

import jax
import jax.numpy as jnp
from flax import linen as nn

from fedln_jax.errors import FedlnError

NORM_PRESETS = ("none", "bn", "gn", "ln", "fn")
PRIMITIVES = ("none", "bn", "gn<G>", "gn<G>_affine", "ln", "ln_affine", "mean", "l2", "l2s",
              "scale<c>", "lscale")

GN_EPS = 1e-5
BN_EPS = 1e-5
BN_MOMENTUM = 0.9
L2_EPS = 1e-12

_SIMPLE = {"none", "bn", "ln", "ln_affine", "mean", "l2", "l2s", "lscale"}
_GN_RE = re.compile(r"gn(\d+)(_affine)?")


def parse_primitive(spec: str) -> tuple[str, float | int | None, bool]:
    """Parse a primitive name into (kind, argument, affine); raise FedlnError if malformed.

    kind is one of none, bn, gn, mean, l2, l2s, scale, lscale ("ln" is gn with 1 group).
    """
    s = spec.strip().lower()
    if s in _SIMPLE:
        if s in ("ln", "ln_affine"):
            return "gn", 1, s == "ln_affine"
        return s, None, False
    m = _GN_RE.fullmatch(s)
    if m:
        groups = int(m.group(1))
        if groups < 1:
            raise FedlnError(f"bad normalizer {spec!r}: the number of groups must be >= 1")
        return "gn", groups, m.group(2) is not None
    if s.startswith("scale"):
        try:
            c = float(s[len("scale"):])
        except ValueError:
            c = float("nan")
        if not math.isfinite(c) or not s[len("scale"):]:
            raise FedlnError(f"bad normalizer {spec!r}: expected scale<number>, e.g. scale2.5")
        return "scale", c, False
    raise FedlnError(
        f"unknown normalizer {spec!r}; expected one of {', '.join(PRIMITIVES)}")


def check_width(spec: str, width: int) -> None:
    """Raise FedlnError if `spec` cannot normalize a position with `width` channels."""
    kind, arg, _ = parse_primitive(spec)
    if kind == "gn" and width % arg:
        raise FedlnError(f"normalizer {spec!r}: {arg} groups do not divide the width {width}")


def expand_norm_layers(norm: str, num_positions: int, norm_layers: str = "",
                       gn_groups: int = 4) -> tuple[str, ...]:
    """One primitive name per normalized position, from a preset or an explicit list.

    Args:
      norm: preset in NORM_PRESETS.
      num_positions: normalized positions of the model (4 for cnn/small_cnn, 2 for mlp).
      norm_layers: comma-separated primitives, one per position; overrides the preset when
        non-empty.
      gn_groups: G of the "gn" preset.
    """
    if norm not in NORM_PRESETS:
        raise FedlnError(f"unknown norm {norm!r}; expected one of {', '.join(NORM_PRESETS)}")
    # A programmer-error guard: the user's gn_groups is checked once, in Config.validate.
    if isinstance(gn_groups, bool) or not isinstance(gn_groups, int) or gn_groups < 1:
        raise ValueError(f"gn_groups must be a positive integer, got {gn_groups!r}")
    if num_positions < 1:
        raise ValueError("num_positions must be >= 1")
    if norm_layers and norm_layers.strip():
        specs = tuple(s.strip().lower() for s in norm_layers.split(","))
        if len(specs) != num_positions:
            raise FedlnError(
                f"norm_layers {norm_layers!r} has {len(specs)} entries; this model has "
                f"{num_positions} normalized positions")
        for s in specs:
            parse_primitive(s)
        return specs
    if norm == "fn":
        return ("none",) * (num_positions - 1) + ("l2s",)
    prim = f"gn{gn_groups}" if norm == "gn" else norm
    return (prim,) * num_positions


def _sum_sq_norm(x: jax.Array, axes: tuple[int, ...]) -> jax.Array:
    # max(sqrt(s), eps) == sqrt(max(s, eps^2)); the latter has a finite gradient at 0.
    s = jnp.sum(jnp.square(x), axis=axes, keepdims=True)
    return jnp.sqrt(jnp.maximum(s, L2_EPS * L2_EPS))


def group_norm(x: jax.Array, groups: int, spatial: bool, eps: float = GN_EPS) -> jax.Array:
    """GroupNorm without affine, per example; groups are contiguous channel blocks (torch)."""
    c = x.shape[-1]
    if c % groups:
        raise FedlnError(f"{groups} groups do not divide the width {c}")
    xg = x.astype(jnp.float32).reshape(x.shape[:-1] + (groups, c // groups))
    axes = (-4, -3, -1) if spatial else (-1,)
    mean = jnp.mean(xg, axis=axes, keepdims=True)
    var = jnp.mean(jnp.square(xg - mean), axis=axes, keepdims=True)
    y = (xg - mean) * jax.lax.rsqrt(var + eps)
    return y.reshape(x.shape).astype(x.dtype)


class Normalizer(nn.Module):
    """Every primitive except bn (which is a plain nn.BatchNorm, see `apply_norm`)."""

    spec: str
    spatial: bool

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kind, arg, affine = parse_primitive(self.spec)
        axes = (-3, -2, -1) if self.spatial else (-1,)
        dtype = x.dtype
        xf = x.astype(jnp.float32)
        if kind == "none":
            return x
        if kind == "gn":
            y = group_norm(xf, arg, self.spatial)
            if affine:
                c = x.shape[-1]
                y = y * self.param("scale", nn.initializers.ones, (c,), jnp.float32)
                y = y + self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        elif kind == "mean":
            y = xf - jnp.mean(xf, axis=axes, keepdims=True)
        elif kind in ("l2", "l2s"):
            y = xf / _sum_sq_norm(xf, axes)
            if kind == "l2s":
                y = y * math.sqrt(math.prod(x.shape[a] for a in axes))
        elif kind == "scale":
            y = xf * arg
        elif kind == "lscale":
            y = xf * self.param("scale", nn.initializers.ones, (), jnp.float32)
        else:
            raise FedlnError(f"normalizer {self.spec!r} is not available here")
        return y.astype(dtype)


def apply_norm(spec: str, x: jax.Array, *, spatial: bool, train: bool, name: str) -> jax.Array:
    """Apply primitive `spec` at one position; call inside a parent's compact method.

    bn is a flax BatchNorm named `name` directly (params scale/bias, batch_stats mean/var),
    so an algorithm like FedBN finds BN layers as the keys of the `batch_stats` collection.
    """
    check_width(spec, x.shape[-1])
    if parse_primitive(spec)[0] == "bn":
        # Normalize in float32 whatever the compute dtype: x - mean cancels badly in bf16.
        return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS,
                            dtype=jnp.float32, name=name)(x.astype(jnp.float32)).astype(x.dtype)
    if parse_primitive(spec)[0] == "none":
        return x
    return Normalizer(spec, spatial, name=name)(x)
