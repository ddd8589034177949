"""CIFAR-style ResNet-18: architecture, every normalizer builds and trains a federated round."""

import math

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from fedln_jax.algorithms import get_algorithm
from fedln_jax.algorithms.fedbn import bn_layer_paths, local_layers
from fedln_jax.engine.client import make_apply_fn
from fedln_jax.engine.round import make_round_fn
from fedln_jax.engine.state import RoundSpec, init_state, make_data
from fedln_jax.errors import FedlnError
from fedln_jax.models import (NORM_PRESETS, build_model, feature_dim, num_norm_positions,
                              resnet_norm_layers)
from fedln_jax.models.resnet import avg_pool_flatten

FEDAVG = get_algorithm("fedavg")
_O0 = {"xla_backend_optimization_level": 0}  # compile fast; see tests/test_models.py


def _x(shape, seed=0):
    return jax.random.uniform(jax.random.key(seed), shape, jnp.float32)


def test_resnet18_parameter_count_and_layout():
    v = jax.eval_shape(build_model("resnet18", "bn", 10).init, jax.random.key(0),
                       jnp.zeros((1, 32, 32, 3)))
    n = sum(p.size for p in jax.tree.leaves(v["params"]))
    convs = 3 * 3 * 3 * 64 + 4 * 9 * 64 * 64  # stem + stage 0
    for cin, cout in [(64, 128), (128, 256), (256, 512)]:
        convs += 9 * cin * cout + 3 * 9 * cout * cout + cin * cout  # 4 convs + 1x1 projection
    head = 512 * 10 + 10
    # bn is the reference's BN, without scale/bias, and the shortcut has no normalizer: the
    # parameters are the convs and the head, 11,164,362 (the usual 11,173,962 has BN affines
    # and a BN on each shortcut)
    assert n == convs + head == 11_164_362
    params = v["params"]
    assert params["head"]["bias"].shape == (10,)  # the only bias: docs/method.md#models
    assert params["stem"]["kernel"].shape == (3, 3, 3, 64)
    assert params["stage1_block0"]["proj"]["kernel"].shape == (1, 1, 64, 128)
    assert set(params["stage1_block0"]) == {"conv1", "conv2", "proj"}  # bare 1x1 shortcut
    assert "proj" not in params["stage0_block0"] and "proj" not in params["stage1_block1"]
    assert set(v["batch_stats"]["stage1_block0"]) == {"norm1", "norm2"}  # no proj_norm
    affine = jax.eval_shape(build_model("resnet18", "none", 10, norm_layers="bn_affine,none").init,
                            jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    bn_affine = 2 * (64 + 4 * 64 + sum(4 * c for c in (128, 256, 512)))  # stem, 4 per stage
    assert sum(p.size for p in jax.tree.leaves(affine["params"])) == convs + head + bn_affine
    assert set(affine["params"]["stage1_block0"]["norm1"]) == {"scale", "bias"}
    ln = jax.eval_shape(build_model("resnet18", "ln", 10).init, jax.random.key(0),
                        jnp.zeros((1, 32, 32, 3)))
    assert sum(p.size for p in jax.tree.leaves(ln["params"])) == convs + head
    assert num_norm_positions("resnet18") == 2


def _names(tree):
    return {name for path in traverse_util.flatten_dict(tree) for name in path}


@pytest.mark.parametrize("norm", NORM_PRESETS)
def test_no_normalizer_on_the_projection_shortcut(norm):
    v = jax.eval_shape(build_model("resnet18_tiny", norm, 10).init, jax.random.key(0),
                       jnp.zeros((1, 32, 32, 3)))
    assert "proj_norm" not in _names(v)


@pytest.mark.parametrize("hw, d", [(32, 64), (64, 4 * 64), (56, 64), (63, 4 * 64), (16, 64), (8, 64)])
def test_avg_pool_4_and_flatten_sets_the_feature_dim(hw, d):
    """The reference's F.avg_pool2d(out, 4) + flatten: the last map is H/8 x W/8, so d = 64 x
    (H/32) x (W/32) for resnet18_tiny (widths .../64): 64 at 32x32, 256 at 64x64 (resnet18:
    512 and 2048). A map under 4x4 (inputs under 25 pixels) is averaged whole."""
    model = build_model("resnet18_tiny", "none", 3)
    v = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, hw, hw, 3)))
    assert v["params"]["head"]["kernel"].shape == (d, 3)
    assert feature_dim("resnet18_tiny", image_shape=(hw, hw, 3)) == d
    logits, phi = jax.eval_shape(lambda v, x: model.apply(v, x, return_features=True), v,
                                 jnp.zeros((2, hw, hw, 3)))
    assert logits.shape == (2, 3) and phi.shape == (2, d)
    assert feature_dim("resnet18", image_shape=(hw, hw, 3)) == 8 * d


def test_feature_dim_of_a_resnet_needs_the_image_shape():
    assert feature_dim("resnet18", image_shape=(32, 32, 3)) == 512
    assert feature_dim("resnet18", image_shape=(64, 64, 3)) == 2048
    assert feature_dim("resnet18", image_shape=(64, 32, 3)) == 1024
    with pytest.raises(ValueError, match="image_shape"):
        feature_dim("resnet18")


def test_avg_pool_flatten_by_hand():
    x = jnp.arange(2 * 9 * 8 * 3, dtype=jnp.float32).reshape(2, 9, 8, 3)
    y = avg_pool_flatten(x)
    # VALID: the 9th row is dropped; windows rows 0-3 x cols 0-3, 0-3 x 4-7, 4-7 x 0-3, 4-7 x 4-7
    expected = np.stack([np.asarray(x)[:, r:r + 4, c:c + 4].mean(axis=(1, 2))
                         for r in (0, 4) for c in (0, 4)], axis=1).reshape(2, 12)
    np.testing.assert_allclose(y, expected, rtol=1e-6)
    small = jnp.arange(2 * 2 * 3 * 5, dtype=jnp.float32).reshape(2, 2, 3, 5)
    np.testing.assert_allclose(avg_pool_flatten(small), small.mean(axis=(1, 2)), rtol=1e-6)


@pytest.mark.parametrize("hw", [32, 64])
def test_fn_normalizes_the_flattened_pooled_feature(hw):
    model = build_model("resnet18_tiny", "fn", 3)
    x = _x((2, hw, hw, 3))

    def f(x):
        v = model.init(jax.random.key(1), x)
        return model.apply(v, x, return_features=True)

    logits, phi = jax.jit(f, compiler_options=_O0)(x)
    d = feature_dim("resnet18_tiny", image_shape=x.shape[1:])
    assert phi.shape == (2, d) and logits.shape == (2, 3)
    np.testing.assert_allclose(np.linalg.norm(phi, axis=-1), math.sqrt(d), rtol=1e-5)


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

HP = {"lr": jnp.float32(0.05), "server_lr": jnp.float32(1.0)}


def tiny_round(model, algorithm):
    """(model, apply_fn, initial state, round fn) of a 2-client x 2-step round at 32x32; the
    round's hyper-parameters are HP."""
    apply_fn = make_apply_fn(model)
    spec = RoundSpec(num_clients=2, cohort_size=2, local_steps=2, batch_size=3,
                     max_epochs=1, pixel_scale=1 / 255, chunk_size=1, momentum=0.0,
                     weight_decay=0.0)
    state = init_state(model, jnp.zeros((1, 32, 32, 3)), 0, algorithm, hparams=HP, num_clients=2)
    return model, apply_fn, state, make_round_fn(apply_fn, spec, algorithm)


@pytest.mark.parametrize("norm", NORM_PRESETS)
def test_every_norm_trains_a_round(norm, cifar_like):
    """Build, one vmapped FedAvg round (2 clients x 2 steps), eval; shapes and finiteness."""
    model, apply_fn, state, round_fn = tiny_round(build_model("resnet18_tiny", norm, 3), FEDAVG)
    x = cifar_like.x[:4].astype(jnp.float32) / 255

    def f(state, data):
        new, metrics = round_fn(state, HP, data)
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


# ----------------------------------------------------------------------------- FedBN on the ResNet
# FedBN keeps local the modules that own batch_stats, found by full path: in the ResNet they sit
# inside the blocks (stage0_block0/norm1), so the blocks' convolutions are averaged.

FEDBN = get_algorithm("fedbn")
# resnet18_tiny's BN positions: the stem, and norm1, norm2 of each of the 8 blocks
TINY_BN_PATHS = {("stem_norm",)} | {(f"stage{i}_block{j}", f"norm{k}")
                                     for i in range(4) for j in range(2) for k in (1, 2)}


def _abstract_variables(name, norm, norm_layers=""):
    v = jax.eval_shape(build_model(name, norm, 10, norm_layers=norm_layers).init,
                       jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    return v["params"], {"batch_stats": v["batch_stats"]}


def _local_fraction(params, local):
    size = lambda tree: sum(leaf.size for leaf in jax.tree.leaves(tree))
    return size(local.get("params", {})) / size(params)


def test_fedbn_keeps_only_the_bn_statistics_local_with_bn():
    params, mstate = _abstract_variables("resnet18_tiny", "bn")
    assert set(bn_layer_paths(mstate)) == TINY_BN_PATHS
    local = local_layers(params, mstate)
    assert set(local) == {"batch_stats"}              # bn has no scale/bias: no params local
    stats = traverse_util.flatten_dict(local["batch_stats"])
    assert set(stats) == {p + (s,) for p in TINY_BN_PATHS for s in ("mean", "var")}
    assert _local_fraction(params, local) == 0.0


@pytest.mark.parametrize("name, bn_params, total", [
    # 2 x (stem + 4 norms per stage x width), convs + head (10 classes) + those
    ("resnet18_tiny", 2 * (8 + 4 * (8 + 16 + 32 + 64)), 174_552 + 650),
    ("resnet18", 2 * (64 + 4 * (64 + 128 + 256 + 512)), 11_164_362),
])
def test_fedbn_keeps_the_bn_affine_scale_and_bias_local_and_no_conv(name, bn_params, total):
    params, mstate = _abstract_variables(name, "none", norm_layers="bn_affine,none")
    local = local_layers(params, mstate)
    owned = traverse_util.flatten_dict(local["params"])
    paths = set(bn_layer_paths(mstate))
    assert set(owned) == {p + (leaf,) for p in paths for leaf in ("scale", "bias")}
    assert not any("kernel" in path or "conv1" in path or "proj" in path for path in owned)
    assert sum(leaf.size for leaf in owned.values()) == bn_params
    # the fraction of the parameters kept local: 0.55% of resnet18_tiny, 0.07% of resnet18
    # (keying on the top-level batch_stats names kept whole blocks, about 99.5%, local)
    assert _local_fraction(params, local) == pytest.approx(bn_params / (total + bn_params))
    assert _local_fraction(params, local) < 0.006


def test_fedbn_client_start_overlays_the_resnet_bn_layers_by_path():
    model = build_model("resnet18_tiny", "none", 3, norm_layers="bn_affine,none")
    v = jax.jit(model.init, compiler_options=_O0)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    params, mstate = v["params"], {"batch_stats": v["batch_stats"]}
    own = jax.tree.map(lambda a: a + 1.0, local_layers(params, mstate))
    p, s = FEDBN.client_start(params, mstate, own)
    chex.assert_trees_all_equal_structs(p, params)     # the same nested-dict structure
    local = traverse_util.flatten_dict(own["params"])
    for path, leaf in traverse_util.flatten_dict(p).items():
        expected = local[path] if path in local else traverse_util.flatten_dict(params)[path]
        np.testing.assert_array_equal(leaf, expected)
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b + 1.0)),
                                     s["batch_stats"], mstate["batch_stats"]))
    chex.assert_trees_all_equal(local_layers(p, s), own)


def test_fedbn_round_on_the_resnet_averages_the_convs_and_keeps_bn_per_client(cifar_like, tmp_path):
    """One vmapped FedBN round (2 one-class clients) of resnet18_tiny with bn_affine: the client
    states hold the BN layers only, they differ between the clients, the personalized
    evaluation runs each client's own BN layers, and the nested client states checkpoint."""
    from fedln_jax.training import checkpoint
    from fedln_jax.engine.evaluation import make_personalized_eval_fn
    from fedln_jax.engine.placement import client_mesh, replicate

    model, apply_fn, state, round_fn = tiny_round(
        build_model("resnet18_tiny", "none", 3, norm_layers="bn_affine,none"), FEDBN)
    evaluate = make_personalized_eval_fn(apply_fn, FEDBN, 3, 1 / 255, batch_size=4)
    x, y = cifar_like.x[::3], cifar_like.y[::3]

    def f(state, data):
        new, metrics = round_fn(state, HP, data)
        return new, metrics, evaluate(new.params, new.model_state, new.client_states, x, y)

    new, metrics, out = jax.jit(f, compiler_options=_O0)(state, cifar_like)
    assert np.isfinite(float(metrics["train_loss"])) and out["correct_CK"].shape == (2, 3)
    names = {n for path in traverse_util.flatten_dict(new.client_states) for n in path}
    assert {"kernel", "proj", "conv1", "head"}.isdisjoint(names)
    own = [jax.tree.map(lambda s: s[c], new.client_states) for c in (0, 1)]
    differs = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), own[0], own[1])
    assert all(jax.tree.leaves(differs))
    moved = jax.tree.map(lambda a, b: bool(jnp.any(a != b)), state.params["stage3_block1"]["conv2"],
                         new.params["stage3_block1"]["conv2"])
    assert all(jax.tree.leaves(moved))                  # a block's conv is averaged, not local
    new = replicate(new, client_mesh())
    manager = checkpoint.open_manager(str(tmp_path), 1)
    assert checkpoint.save(manager, new, {"progress": {}}) is not None
    restored = checkpoint.restore_latest(checkpoint.open_manager(str(tmp_path), 1),
                                         jax.tree.map(jnp.zeros_like, new), lambda meta: None)
    chex.assert_trees_all_equal(restored.state.client_states, new.client_states)


def test_the_resnet_starts_from_the_init_it_is_given():
    """init=torch: every kernel within +-1/sqrt(fan_in) and the head's bias within
    +-1/sqrt(d) (PyTorch's defaults); init=lecun: flax's, the bias zeros."""
    import numpy as np
    x = jnp.zeros((1, 32, 32, 3))
    for init in ("torch", "lecun"):
        params = build_model("resnet18_tiny", "none", 10, init=init).init(jax.random.key(0), x)["params"]
        bias = np.asarray(params["head"]["bias"])
        d = params["head"]["kernel"].shape[0]
        if init == "lecun":
            assert not bias.any()
            continue
        assert 0 < np.abs(bias).max() <= 1 / np.sqrt(d)
        kernels = [params["stem"]["kernel"], params["stage1_block0"]["proj"]["kernel"],
                   params["stage3_block1"]["conv2"]["kernel"], params["head"]["kernel"]]
        for k in kernels:
            assert np.abs(np.asarray(k)).max() <= 1 / np.sqrt(np.prod(k.shape[:-1])) + 1e-7
