"""Normalizers: a registry of primitives (name -> flax module) and a registry of presets.

A position is either a conv map [..., H, W, C] ("spatial": per-example statistics over
H, W, C) or a dense feature [..., D] (statistics over D). Primitives:

  none          identity
  bn            BatchNorm, running stats in `batch_stats` (momentum 0.9, eps 1e-5), no affine,
                as the reference's BN (a bias would break the positive scale-equivariance)
  bn_affine     bn + learnable per-channel scale and bias (flax's default BatchNorm)
  gn<G>         GroupNorm with G groups, eps 1e-5, no affine ("gn<G>_affine": per-channel affine)
  ln            GroupNorm with 1 group, no affine
  ln_affine     ln + learnable per-channel scale and bias (the bias breaks scale-equivariance)
  mean          mean-shift only: x - mean
  l2            x / max(||x||, 1e-5)   (eps 1e-5 as in every normalizer of the paper, p.19)
  l2s           l2 * sqrt(#elements per example)   (FN's fixed-scale feature normalization)
  scale<c>      multiply by the constant c, e.g. scale2.5
  lscale        learnable scalar scale, init 1

A name is resolved once, when the model is built (`resolve_norm`), into a module factory in
the style of flax's `norm: ModuleDef`: a functools.partial of a module class. Models call
`factory(spatial=..., name=...)(x, train)` and never see the names. Presets (`norm=`) expand
to one primitive name per position (`expand_norm_layers`). How to add a primitive or a
preset: docs/models.md#adding-a-normalizer-or-a-model.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any, Callable, Mapping, Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from fedln_jax.errors import FedlnError

GN_EPS = 1e-5
BN_EPS = 1e-5
BN_MOMENTUM = 0.9
L2_EPS = 1e-5   # the paper uses eps 1e-5 in every normalization, FN included (p.19)

# A module factory: factory(spatial=bool, name=str) -> a module called as module(x, train).
NormDef = Callable[..., nn.Module]


# ---------------------------------------------------------------------------------------
# Modules: one per kind of primitive. Each computes in float32 and returns x's dtype.


class NormModule(nn.Module):
    """Base of the normalizer modules: `module(x, train)` normalizes one position."""

    spatial: bool = False   # x is a conv map [..., H, W, C]; else a dense feature [..., D]

    @classmethod
    def width_problem(cls, width: int, **keywords) -> Optional[str]:
        """Why this primitive cannot normalize `width` channels, or None if it can."""
        return None

    def axes(self) -> tuple[int, ...]:
        return (-3, -2, -1) if self.spatial else (-1,)


class Identity(NormModule):
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return x


class BatchNorm(NormModule):
    """flax's nn.BatchNorm in this module's own scope (batch_stats mean/var, and with `affine`
    params scale/bias, directly under the position's name), so FedBN finds a BN layer as the
    module path that owns `batch_stats` leaves. Without `affine` (primitive `bn`, the reference's
    BN) it has no parameters at all; `bn_affine` adds a learnable per-channel scale and bias."""

    affine: bool = False

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        bn = nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=BN_EPS,
                          use_scale=self.affine, use_bias=self.affine, dtype=jnp.float32)
        nn.share_scope(self, bn)
        # Normalize in float32 whatever the compute dtype: x - mean cancels badly in bf16.
        return bn(x.astype(jnp.float32)).astype(x.dtype)


class GroupNorm(NormModule):
    """GroupNorm over contiguous channel blocks (torch's), optionally with a per-channel affine."""

    groups: int = 1
    affine: bool = False

    @classmethod
    def width_problem(cls, width: int, groups: int = 1, **keywords) -> Optional[str]:
        return f"{groups} groups do not divide the width {width}" if width % groups else None

    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        y = group_norm(x.astype(jnp.float32), self.groups, self.spatial)
        if self.affine:
            c = x.shape[-1]
            y = y * self.param("scale", nn.initializers.ones, (c,), jnp.float32)
            y = y + self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
        return y.astype(x.dtype)


class MeanShift(NormModule):
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        xf = x.astype(jnp.float32)
        return (xf - jnp.mean(xf, axis=self.axes(), keepdims=True)).astype(x.dtype)


class L2Normalize(NormModule):
    """x / max(||x||, eps); fixed_scale multiplies by sqrt(#elements) (FN's l2s)."""

    fixed_scale: bool = False

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        axes = self.axes()
        xf = x.astype(jnp.float32)
        y = xf / _sum_sq_norm(xf, axes)
        if self.fixed_scale:
            y = y * math.sqrt(math.prod(x.shape[a] for a in axes))
        return y.astype(x.dtype)


class Scale(NormModule):
    c: float = 1.0

    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        return (x.astype(jnp.float32) * self.c).astype(x.dtype)


class LearnedScale(NormModule):
    @nn.compact
    def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
        scale = self.param("scale", nn.initializers.ones, (), jnp.float32)
        return (x.astype(jnp.float32) * scale).astype(x.dtype)


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


# ---------------------------------------------------------------------------------------
# The primitive registry: one entry per name.


def group_count(text: str) -> int:
    """The G of gn<G>: a positive integer (ValueError says what is wrong)."""
    if not re.fullmatch(r"\d+", text) or int(text) < 1:
        raise ValueError("the number of groups must be >= 1")
    return int(text)


def scale_constant(text: str) -> float:
    """The c of scale<c>: a finite number (ValueError says what is wrong)."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not math.isfinite(value):
        raise ValueError("expected scale<number>, e.g. scale2.5")
    return value


@dataclasses.dataclass(frozen=True)
class Primitive:
    """What a primitive name builds: `module(**keywords)`. arg = (keyword, parser): a name with
    a `<...>` part (gn<G>, scale<c>) passes that part, parsed, as the module's `keyword`."""

    module: type[NormModule]
    keywords: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    arg: Optional[tuple[str, Callable[[str], Any]]] = None


PRIMITIVES: dict[str, Primitive] = {
    "none": Primitive(Identity),
    "bn": Primitive(BatchNorm),
    "bn_affine": Primitive(BatchNorm, dict(affine=True)),
    "gn<G>": Primitive(GroupNorm, arg=("groups", group_count)),
    "gn<G>_affine": Primitive(GroupNorm, dict(affine=True), arg=("groups", group_count)),
    "ln": Primitive(GroupNorm, dict(groups=1)),
    "ln_affine": Primitive(GroupNorm, dict(groups=1, affine=True)),
    "mean": Primitive(MeanShift),
    "l2": Primitive(L2Normalize),
    "l2s": Primitive(L2Normalize, dict(fixed_scale=True)),
    "scale<c>": Primitive(Scale, arg=("c", scale_constant)),
    "lscale": Primitive(LearnedScale),
}


def resolve_norm(spec: str) -> NormDef:
    """The module factory of a primitive name (case and spaces ignored); FedlnError if the
    name is unknown or its argument malformed."""
    s = spec.strip().lower()
    if "<" not in s and s in PRIMITIVES:
        entry = PRIMITIVES[s]
        return functools.partial(entry.module, **entry.keywords)
    malformed = None
    for template, entry in PRIMITIVES.items():
        prefix, sep, rest = template.partition("<")
        suffix = rest.partition(">")[2]
        if not sep or entry.arg is None or not (s.startswith(prefix) and s.endswith(suffix)) \
                or len(s) < len(prefix) + len(suffix):
            continue
        keyword, parse = entry.arg
        try:
            value = parse(s[len(prefix):len(s) - len(suffix)])
        except ValueError as exc:
            malformed = malformed or f"bad normalizer {spec!r}: {exc}"
            continue
        return functools.partial(entry.module, **entry.keywords, **{keyword: value})
    raise FedlnError(malformed or f"unknown normalizer {spec!r}; expected one of "
                                  f"{', '.join(PRIMITIVES)}")


def check_width(spec: str, width: int) -> None:
    """Raise FedlnError if `spec` cannot normalize a position with `width` channels."""
    factory = resolve_norm(spec)
    problem = factory.func.width_problem(width, **factory.keywords)
    if problem:
        raise FedlnError(f"normalizer {spec!r}: {problem}")


# ---------------------------------------------------------------------------------------
# The preset registry (`norm=`): one entry per preset.


@dataclasses.dataclass(frozen=True)
class Preset:
    """The primitive after every hidden layer, and the one at the penultimate feature phi.

    In the CNN and MLP phi is the last hidden layer's output, so `feature` replaces `layers`
    at the last position (None: the same as the layers). A ResNet normalizes its pooled phi
    separately, with `feature` (None: not at all). "{gn_groups}" in a name is filled in from
    the config key gn_groups.
    """

    layers: str
    feature: Optional[str] = None

    def expand(self, gn_groups: int) -> tuple[str, Optional[str]]:
        fill = lambda name: None if name is None else name.format(gn_groups=gn_groups)
        return fill(self.layers), fill(self.feature)


NORM_PRESETS: dict[str, Preset] = {
    "none": Preset("none"),
    "bn": Preset("bn"),
    "gn": Preset("gn{gn_groups}"),
    "ln": Preset("ln"),
    "fn": Preset("none", feature="l2s"),
}


def preset(norm: str, gn_groups: int = 4) -> tuple[str, Optional[str]]:
    """(layers, feature) primitive names of preset `norm`; FedlnError if unknown."""
    if norm not in NORM_PRESETS:
        raise FedlnError(f"unknown norm {norm!r}; expected one of {', '.join(NORM_PRESETS)}")
    # A programmer-error guard: the user's gn_groups is checked once, in Config.validate.
    if isinstance(gn_groups, bool) or not isinstance(gn_groups, int) or gn_groups < 1:
        raise ValueError(f"gn_groups must be a positive integer, got {gn_groups!r}")
    return NORM_PRESETS[norm].expand(gn_groups)


def expand_norm_layers(norm: str, num_positions: int, norm_layers: str = "",
                       gn_groups: int = 4) -> tuple[str, ...]:
    """One primitive name per normalized position, from a preset or an explicit list.

    Args:
      norm: a preset name (NORM_PRESETS).
      num_positions: normalized positions of the model (4 for cnn/small_cnn, 2 for mlp);
        the last one is the feature phi.
      norm_layers: comma-separated primitives, one per position; overrides the preset when
        non-empty.
      gn_groups: G of the "gn" preset.
    """
    layers, feature = preset(norm, gn_groups)
    if num_positions < 1:
        raise ValueError("num_positions must be >= 1")
    if norm_layers and norm_layers.strip():
        specs = tuple(s.strip().lower() for s in norm_layers.split(","))
        if len(specs) != num_positions:
            raise FedlnError(
                f"norm_layers {norm_layers!r} has {len(specs)} entries; this model has "
                f"{num_positions} normalized positions")
        for s in specs:
            resolve_norm(s)
        return specs
    return (layers,) * (num_positions - 1) + (feature or layers,)


def apply_norm(norm: NormDef, x: jax.Array, *, spatial: bool, train: bool, name: str) -> jax.Array:
    """Normalize x with a module of factory `norm` named `name`; call inside a parent's compact
    method (the variables live under `name`)."""
    return norm(spatial=spatial, name=name)(x, train)
