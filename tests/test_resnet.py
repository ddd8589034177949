"""CIFAR-style ResNet-18: architecture, every normalizer builds and trains a federated round."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedln_jax.algorithms import get_algorithm
from fedln_jax.client import make_apply_fn
from fedln_jax.errors import FedlnError
from fedln_jax.models import (NORM_PRESETS, build_model, feature_dim, num_norm_positions,
                              resnet_norm_layers)
from fedln_jax.round import make_round_fn
from fedln_jax.state import RoundSpec, init_state, make_data

FEDAVG = get_algorithm("fedavg")
_O0 = {"xla_backend_optimization_level": 0}  # compile fast; see tests/test_models.py


def _x(shape, seed=0):
    return jax.random.uniform(jax.random.key(seed), shape, jnp.float32)


def test_resnet18_parameter_count_and_layout():
    v = jax.eval_shape(build_model("resnet18", "bn", 10).init, jax.random.key(0),
                       jnp.zeros((1, 32, 32, 3)))
    n = sum(p.size for p in jax.tree.leaves(v["params"]))
    assert n == 11_173_962  # the usual CIFAR ResNet-18 with BN (conv weights, BN affine, head)
    convs = 3 * 3 * 3 * 64 + 4 * 9 * 64 * 64  # stem + stage 0
    for cin, cout in [(64, 128), (128, 256), (256, 512)]:
        convs += 9 * cin * cout + 3 * 9 * cout * cout + cin * cout  # 4 convs + 1x1 projection
    head = 512 * 10 + 10
    bn_affine = 2 * (64 + 4 * 64 + sum(5 * c for c in (128, 256, 512)))
    assert n == convs + head + bn_affine
    params = v["params"]
    assert params["head"]["bias"].shape == (10,)  # the only bias: docs/method.md#models
    assert params["stem"]["kernel"].shape == (3, 3, 3, 64)
    assert params["stage1_block0"]["proj"]["kernel"].shape == (1, 1, 64, 128)
    assert "proj" not in params["stage0_block0"] and "proj" not in params["stage1_block1"]
    none = jax.eval_shape(build_model("resnet18", "ln", 10).init, jax.random.key(0),
                          jnp.zeros((1, 32, 32, 3)))
    assert sum(p.size for p in jax.tree.leaves(none["params"])) == convs + head
    assert feature_dim("resnet18") == 512 and num_norm_positions("resnet18") == 2


def test_preset_mapping_and_norm_layers():
    assert resnet_norm_layers("none") == ("none", "none")
    assert resnet_norm_layers("bn") == ("bn", "none")
    assert resnet_norm_layers("gn", gn_groups=8) == ("gn8", "none")
    assert resnet_norm_layers("ln") == ("ln", "none")
    assert resnet_norm_layers("fn") == ("none", "l2s")
    assert resnet_norm_layers("none", "mean, l2s") == ("mean", "l2s")


@pytest.mark.parametrize("kwargs, fragment", [
    ({"norm_layers": "ln,ln,ln,ln"}, "exactly 2"),
    ({"norm_layers": "ln,foo"}, "unknown normalizer"),
    ({"norm_layers": "scalex,none"}, "scale<number>"),
    ({"norm_layers": "gn3,none"}, "do not divide"),
    ({"norm": "gn", "gn_groups": 16}, "do not divide the width 8"),
])
def test_bad_resnet_norm_spec(kwargs, fragment):
    kwargs = {"norm": "none", **kwargs}
    with pytest.raises(FedlnError, match=fragment):
        build_model("resnet18_tiny", num_classes=10, **kwargs)


@pytest.fixture(scope="module")
def cifar_like():
    """A tiny synthetic 32x32x3 dataset, 2 clients with one class each."""
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(2, dtype=np.int32), 6)
    x = rng.integers(0, 256, (12, 32, 32, 3)).astype(np.uint8)
    x[y == 1, :16] //= 4  # some class signal
    return make_data(x, y, [np.arange(6), np.arange(6, 12)])


@pytest.mark.parametrize("norm", NORM_PRESETS)
def test_every_norm_trains_a_round(norm, cifar_like):
    """Build, one vmapped FedAvg round (2 clients x 2 steps), eval; shapes and finiteness."""
    model = build_model("resnet18_tiny", norm, 3)
    apply_fn = make_apply_fn(model)
    spec = RoundSpec(num_clients=2, cohort_size=2, local_steps=2, batch_size=3,
                     max_epochs=1, pixel_scale=1 / 255, chunk_size=1, momentum=0.0,
                     weight_decay=0.0)
    hp = {"lr": jnp.float32(0.05), "server_lr": jnp.float32(1.0)}
    state = init_state(model, jnp.zeros((1, 32, 32, 3)), 0, FEDAVG, hparams=hp, num_clients=2)
    round_fn = make_round_fn(apply_fn, spec, FEDAVG)
    x = cifar_like.x[:4].astype(jnp.float32) / 255

    def f(state, data):
        new, metrics = round_fn(state, hp, data)
        logits, phi = model.apply({"params": new.params, **new.model_state}, x,
                                  return_features=True)
        return new, metrics, logits, phi

    new, metrics, logits, phi = jax.jit(f, compiler_options=_O0)(state, cifar_like)
    assert int(new.round) == 1 and np.isfinite(float(metrics["train_loss"]))
    assert logits.shape == (4, 3) and phi.shape == (4, 64)
    assert np.all(np.isfinite(logits)) and np.all(np.isfinite(phi))
    moved = jax.tree.map(lambda a, b: float(jnp.abs(a - b).max()), state.params, new.params)
    assert max(jax.tree.leaves(moved)) > 0 and all(np.isfinite(jax.tree.leaves(moved)))
    if norm == "bn":
        assert new.model_state["batch_stats"]
        changed = jax.tree.map(lambda a, b: bool(jnp.any(a != b)),
                               state.model_state["batch_stats"], new.model_state["batch_stats"])
        assert all(jax.tree.leaves(changed))
    else:
        assert new.model_state == {}
    if norm == "fn":
        np.testing.assert_allclose(np.linalg.norm(phi, axis=-1), math.sqrt(64), rtol=1e-5)


def test_patches_and_lax_convs_agree_on_resnet():
    x = _x((2, 16, 16, 3))
    fast = build_model("resnet18_tiny", "ln", 4, conv_impl="patches")
    ref = build_model("resnet18_tiny", "ln", 4, conv_impl="lax")

    def f(x):
        v = fast.init(jax.random.key(1), x)
        return fast.apply(v, x), ref.apply(v, x)

    a, b = jax.jit(f, compiler_options=_O0)(x)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_norm_position_before_and_tau():
    x = _x((2, 8, 8, 1))
    after = build_model("resnet18_tiny", "ln", 4)
    before = build_model("resnet18_tiny", "ln", 4, norm_position="before")
    hot = build_model("resnet18_tiny", "ln", 4, tau=2.0)

    def f(x):
        v = after.init(jax.random.key(1), x)
        return after.apply(v, x), before.apply(v, x), hot.apply(v, x)

    a, b, c = jax.jit(f, compiler_options=_O0)(x)
    assert np.all(np.isfinite(b)) and not np.allclose(a, b)
    np.testing.assert_allclose(c, a / 2.0, rtol=1e-6)
