"""Normalizer primitives on tiny hand-made arrays, preset expansion, bad names."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from fedln_jax.errors import FedlnError
from fedln_jax.models.normalizers import (GroupNorm, L2Normalize, NormModule, Scale, apply_norm,
                                          check_width, expand_norm_layers, resolve_norm)

EPS = 1e-5


def norm_module(spec, spatial):
    return resolve_norm(spec)(spatial=spatial)


def norm(spec, x, spatial=False):
    x = jnp.asarray(x, jnp.float32)
    m = norm_module(spec, spatial)
    variables = m.init(jax.random.key(0), x)
    return np.asarray(m.apply(variables, x)), variables


def close(a, b, rtol=1e-6, atol=1e-6):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b, np.float32), rtol=rtol, atol=atol)


# ---- dense positions: statistics over the feature axis, per example ----

def test_none_identity():
    y, v = norm("none", [[1.0, -2.0, 3.0]])
    close(y, [[1.0, -2.0, 3.0]])
    assert "params" not in v


def test_l2_and_l2s():
    y, _ = norm("l2", [[3.0, 4.0], [0.0, -2.0]])
    close(y, [[0.6, 0.8], [0.0, -1.0]])
    y, _ = norm("l2s", [[3.0, 4.0]])
    close(y, [[0.6 * math.sqrt(2), 0.8 * math.sqrt(2)]])


def test_l2_of_zero_is_zero_with_finite_gradient():
    y, v = norm("l2", [[0.0, 0.0]])
    close(y, [[0.0, 0.0]])
    g = jax.grad(lambda x: norm_module("l2s", False).apply(v, x).sum())(jnp.zeros((1, 2)))
    assert np.all(np.isfinite(g))


def test_mean_shift():
    y, _ = norm("mean", [[1.0, 2.0, 3.0], [10.0, 10.0, 16.0]])
    close(y, [[-1.0, 0.0, 1.0], [-2.0, -2.0, 4.0]])


def test_scale_constant():
    y, _ = norm("scale2.5", [[1.0, -2.0]])
    close(y, [[2.5, -5.0]])
    y, _ = norm("scale-0.5", [[4.0]])
    close(y, [[-2.0]])


def test_ln_dense():
    # mean 2, biased var 2/3, eps inside the sqrt (torch GroupNorm).
    y, _ = norm("ln", [[1.0, 2.0, 3.0]])
    s = math.sqrt(2.0 / 3.0 + EPS)
    close(y, [[-1 / s, 0.0, 1 / s]])


def test_gn2_dense_groups_are_contiguous_channels():
    y, _ = norm("gn2", [[1.0, 3.0, 10.0, 20.0]])
    a, b = 1 / math.sqrt(1 + EPS), 5 / math.sqrt(25 + EPS)
    close(y, [[-a, a, -b, b]])


def test_ln_is_per_example():
    x = jnp.array([[1.0, 2.0, 3.0], [100.0, -7.0, 0.5]])
    y, _ = norm("ln", x)
    y0, _ = norm("ln", x[:1])
    close(y[:1], y0)


# ---- conv positions: statistics over H, W, C per example ----

X_MAP = [[[[1.0, 2.0], [3.0, 6.0]]]]  # N=1, H=1, W=2, C=2


def test_ln_spatial():
    # elements 1, 2, 3, 6: mean 3, biased var (4+1+0+9)/4 = 3.5
    y, _ = norm("ln", X_MAP, spatial=True)
    s = math.sqrt(3.5 + EPS)
    close(y, [[[[-2 / s, -1 / s], [0.0, 3 / s]]]])


def test_gn2_spatial():
    # channel 0: {1, 3} mean 2 var 1; channel 1: {2, 6} mean 4 var 4
    y, _ = norm("gn2", X_MAP, spatial=True)
    a, b = 1 / math.sqrt(1 + EPS), 2 / math.sqrt(4 + EPS)
    close(y, [[[[-a, -b], [a, b]]]])


def test_l2_mean_spatial():
    y, _ = norm("l2", X_MAP, spatial=True)
    n = math.sqrt(1 + 4 + 9 + 36)
    close(y, np.array(X_MAP) / n)
    y, _ = norm("l2s", X_MAP, spatial=True)
    close(y, np.array(X_MAP) / n * 2.0)  # sqrt(4 elements)
    y, _ = norm("mean", X_MAP, spatial=True)
    close(y, np.array(X_MAP) - 3.0)


# ---- learnable primitives ----

def test_lscale_param_and_gradient():
    x = jnp.array([[1.0, -2.0]])
    y, v = norm("lscale", x)
    close(y, [[1.0, -2.0]])
    assert v["params"]["scale"].shape == ()
    v2 = jax.tree.map(lambda p: p * 3.0, v)
    close(norm_module("lscale", False).apply(v2, x), [[3.0, -6.0]])
    g = jax.grad(lambda v: norm_module("lscale", False).apply(v, x).sum())(v)
    close(g["params"]["scale"], -1.0)


def test_ln_affine_params():
    x = jnp.array([[1.0, 2.0, 3.0]])
    y, v = norm("ln_affine", x)
    s = math.sqrt(2.0 / 3.0 + EPS)
    close(y, [[-1 / s, 0.0, 1 / s]])
    assert v["params"]["scale"].shape == (3,) and v["params"]["bias"].shape == (3,)
    v2 = {"params": {"scale": jnp.full((3,), 2.0), "bias": jnp.ones((3,))}}
    close(norm_module("ln_affine", False).apply(v2, x), [[1 - 2 / s, 1.0, 1 + 2 / s]], rtol=1e-5)


class _BN(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
        return apply_norm(resolve_norm("bn"), x, spatial=False, train=train, name="norm0")


def test_bn_batch_stats_and_running_average():
    x = jnp.array([[1.0], [3.0]])
    m = _BN()
    v = m.init(jax.random.key(0), x)
    close(v["batch_stats"]["norm0"]["mean"], [0.0])
    y, new = m.apply(v, x, train=True, mutable=["batch_stats"])
    a = 1 / math.sqrt(1 + EPS)
    close(y, [[-a], [a]])
    # momentum 0.9: 0.9 * 0 + 0.1 * 2; var 0.9 * 1 + 0.1 * 1 (biased batch variance)
    close(new["batch_stats"]["norm0"]["mean"], [0.2])
    close(new["batch_stats"]["norm0"]["var"], [1.0])
    # eval uses the running statistics
    v2 = {"batch_stats": new["batch_stats"]}
    close(m.apply(v2, x), [[(1 - 0.2) / math.sqrt(1 + EPS)], [(3 - 0.2) / math.sqrt(1 + EPS)]],
          rtol=1e-5)
    # bn is the reference's BN: no scale, no bias (a bias would break scale-equivariance)
    assert "params" not in v


def test_bn_without_affine_cancels_a_positive_scale_and_bn_affine_adds_scale_and_bias():
    x = jnp.array([[1.0, -2.0], [3.0, 0.5], [0.0, 4.0]])
    m = _BN()
    v = m.init(jax.random.key(0), x)
    y = m.apply(v, x, train=True, mutable=["batch_stats"])[0]
    # per-feature BN in train mode: a positive scale of the input cancels (up to eps)
    close(m.apply(v, 3.0 * x, train=True, mutable=["batch_stats"])[0], y, rtol=1e-4, atol=1e-5)

    class Affine(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            return apply_norm(resolve_norm("bn_affine"), x, spatial=False, train=train,
                              name="norm0")

    a = Affine()
    va = a.init(jax.random.key(0), x)
    assert set(va["params"]["norm0"]) == {"scale", "bias"} and set(va["batch_stats"]["norm0"]) \
        == {"mean", "var"}
    va = {"params": {"norm0": {"scale": jnp.array([2.0, 3.0]), "bias": jnp.array([1.0, -1.0])}},
          "batch_stats": va["batch_stats"]}
    close(a.apply(va, x, train=True, mutable=["batch_stats"])[0],
          y * jnp.array([2.0, 3.0]) + jnp.array([1.0, -1.0]), rtol=1e-5)


# ---- names and presets ----

def described(spec):
    """(module class, keywords) of the factory a primitive name resolves to."""
    factory = resolve_norm(spec)
    return factory.func, factory.keywords


def test_resolve_norm():
    assert described("ln") == (GroupNorm, {"groups": 1})
    assert described("ln_affine") == (GroupNorm, {"groups": 1, "affine": True})
    assert described("gn4") == (GroupNorm, {"groups": 4})
    assert described("gn8_affine") == (GroupNorm, {"groups": 8, "affine": True})
    assert described("scale2.5") == (Scale, {"c": 2.5})
    assert described(" L2S ") == (L2Normalize, {"fixed_scale": True})


@pytest.mark.parametrize("bad", ["", "foo", "gn", "gn0", "gnx", "scale", "scalex", "scaleinf",
                                 "scalenan", "l3", "ln_affin"])
def test_bad_primitive(bad):
    with pytest.raises(FedlnError):
        resolve_norm(bad)


def test_check_width():
    check_width("gn4", 64)
    with pytest.raises(FedlnError):
        check_width("gn3", 64)


def test_expand_presets():
    assert expand_norm_layers("none", 4) == ("none",) * 4
    assert expand_norm_layers("bn", 4) == ("bn",) * 4
    assert expand_norm_layers("gn", 4, gn_groups=8) == ("gn8",) * 4
    assert expand_norm_layers("ln", 2) == ("ln", "ln")
    assert expand_norm_layers("fn", 4) == ("none", "none", "none", "l2s")
    assert expand_norm_layers("fn", 2) == ("none", "l2s")
    assert expand_norm_layers("none", 4, "mean, mean,mean,ln") == ("mean", "mean", "mean", "ln")


@pytest.mark.parametrize("args", [
    ("xn", 4, "", 4),               # unknown preset
    ("none", 4, "ln,ln,ln", 4),     # wrong length
    ("none", 2, "ln,foo", 4),       # unknown primitive
    ("none", 2, "ln,scaleX", 4),    # bad number
    ("none", 2, "ln,,", 4),         # empty entry
])
def test_expand_errors(args):
    with pytest.raises(FedlnError):
        expand_norm_layers(*args)


@pytest.mark.parametrize("args", [
    ("gn", 4, "", 0),               # groups < 1
    ("gn", 4, "", 2.0),             # groups not an int
])
def test_expand_programmer_errors(args):
    """gn_groups is user input checked once, in Config.validate; below it a bad value is a
    programmer error."""
    with pytest.raises(ValueError):
        expand_norm_layers(*args)


# ---- the registries: a preset or a primitive is one entry ----

def test_a_preset_registered_in_one_entry_reaches_expansion_models_and_config(monkeypatch):
    from fedln_jax.config import Config
    from fedln_jax.models import build_model, resnet_norm_layers
    from fedln_jax.models.normalizers import NORM_PRESETS, Preset

    monkeypatch.setitem(NORM_PRESETS, "reduced_ln", Preset("mean", feature="ln"))
    assert expand_norm_layers("reduced_ln", 4) == ("mean", "mean", "mean", "ln")
    assert resnet_norm_layers("reduced_ln") == ("mean", "ln")
    assert Config(norm="reduced_ln").validate().norm == "reduced_ln"
    x = jax.random.uniform(jax.random.key(1), (2, 8, 8, 1))
    by_preset = build_model("small_cnn", "reduced_ln", 10)
    by_layers = build_model("small_cnn", "none", 10, norm_layers="mean,mean,mean,ln")
    v = by_preset.init(jax.random.key(0), x)
    np.testing.assert_array_equal(by_preset.apply(v, x), by_layers.apply(v, x))


class _RootMeanSquare(NormModule):
    """A test-local primitive: x / sqrt(mean(x^2) + eps) over the position's axes."""

    def __call__(self, x, train=False):
        return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=self.axes(), keepdims=True) + EPS)


def test_a_primitive_registered_in_one_entry_is_usable_in_norm_layers(monkeypatch):
    from fedln_jax.models import build_model
    from fedln_jax.models.normalizers import PRIMITIVES, Primitive

    with pytest.raises(FedlnError, match="unknown normalizer 'rms'"):
        resolve_norm("rms")
    monkeypatch.setitem(PRIMITIVES, "rms", Primitive(_RootMeanSquare))
    y, v = norm("rms", [[3.0, 4.0]])
    close(y, [[3.0 / math.sqrt(12.5 + EPS), 4.0 / math.sqrt(12.5 + EPS)]])
    assert v == {}
    net = build_model("mlp", "none", 10, norm_layers="rms,l2s")
    x = jnp.ones((2, 8, 8, 1))
    assert net.apply(net.init(jax.random.key(0), x), x).shape == (2, 10)
    with pytest.raises(FedlnError, match="expected one of .*lscale, rms"):
        resolve_norm("rmx")
