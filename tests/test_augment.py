"""On-device augmentation: hand-checked crops and resampling, value range, rng per
(seed, round, client, step), and the vectorized round == the reference loop with it on."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedln_jax.config import Config
from fedln_jax.data.augment import (augment_round, crop_padding, interpolation_matrix,
                                    random_crop_flip, random_resized_crop, resolve_augmentation)
from fedln_jax.engine.client import AUGMENT_TAG, gather_client_batches
from fedln_jax.engine.reference import make_loop_round
from fedln_jax.engine.round import client_keys, make_round_fn, round_key
from fedln_jax.training.experiment import build_experiment, hparams_of, initial_state

from conftest import tiny_round_config


def ramp(h, w, c=1):
    """Distinct values in (0, 1]: every pixel identifies its source position."""
    return (jnp.arange(1, h * w * c + 1, dtype=jnp.float32) / (h * w * c)).reshape(h, w, c)


def test_interpolation_matrix_by_hand():
    np.testing.assert_allclose(interpolation_matrix(0.0, 4.0, 4, 4), np.eye(4), atol=1e-7)
    # box [0, 2) of 4 pixels stretched to 4: sources -0.25 (clamped to 0), 0.25, 0.75, 1.25
    expected = [[1, 0, 0, 0], [0.75, 0.25, 0, 0], [0.25, 0.75, 0, 0], [0, 0.75, 0.25, 0]]
    np.testing.assert_allclose(interpolation_matrix(0.0, 2.0, 4, 4), expected, atol=1e-6)
    # box [2, 4): sources 1.75, 2.25, 2.75, 3.25 (clamped to 3)
    expected = [[0, 0.25, 0.75, 0], [0, 0, 0.75, 0.25], [0, 0, 0.25, 0.75], [0, 0, 0, 1]]
    np.testing.assert_allclose(interpolation_matrix(2.0, 2.0, 4, 4), expected, atol=1e-6)


def test_crop_flip_is_a_shifted_window_of_the_zero_padded_image():
    x = ramp(8, 8)
    pad = crop_padding(8)
    assert pad == 1 and crop_padding(32) == 4 and crop_padding(64) == 8
    padded = np.pad(np.asarray(x), ((pad, pad), (pad, pad), (0, 0)))
    seen = set()
    for seed in range(40):
        out = np.asarray(random_crop_flip(jax.random.PRNGKey(seed), x))
        assert out.shape == x.shape
        windows = [(dy, dx, flip) for dy in range(3) for dx in range(3) for flip in (0, 1)
                   if np.array_equal(out, (lambda w: w[:, ::-1] if flip else w)(
                       padded[dy:dy + 8, dx:dx + 8]))]
        assert len(windows) == 1
        seen.add(windows[0])
    assert len(seen) >= 12  # offsets and flips all get used


def test_resized_crop_values_come_from_the_image_and_full_box_is_identity():
    x = ramp(16, 16, 3)
    for seed in range(10):
        out = np.asarray(random_resized_crop(jax.random.PRNGKey(seed), x))
        assert out.shape == (16, 16, 3)
        assert out.min() >= float(x.min()) - 1e-6 and out.max() <= float(x.max()) + 1e-6
    # the full box resamples the image onto itself
    rows = interpolation_matrix(0.0, 16.0, 16, 16)
    np.testing.assert_allclose(jnp.einsum("ih,hwc,jw->ijc", rows, x, rows), x, atol=1e-6)


@pytest.mark.parametrize("mode", ["crop_flip", "resized_crop"])
def test_augment_round_shapes_range_and_rng(mode):
    x_SB = jnp.broadcast_to(ramp(8, 8, 3), (3, 4, 8, 8, 3))   # 3 steps x 4 identical examples
    key = jax.random.PRNGKey(7)
    augment = jax.jit(augment_round, static_argnums=2)
    out = np.asarray(augment(key, x_SB, mode))
    assert out.shape == x_SB.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_array_equal(out, np.asarray(augment(key, x_SB, mode)))  # reproducible
    # different steps and different examples of one step get different views of the same image
    assert not np.array_equal(out[0], out[1]) and not np.array_equal(out[1], out[2])
    assert len({out[0, b].tobytes() for b in range(4)}) > 1
    other = np.asarray(augment(jax.random.PRNGKey(8), x_SB, mode))
    assert not np.array_equal(out, other)
    np.testing.assert_array_equal(augment_round(key, x_SB, "none"), x_SB)


def test_resolve_augmentation_defaults_per_dataset():
    assert resolve_augmentation("auto", "cifar10") == "crop_flip"
    assert resolve_augmentation("auto", "cifar100") == "crop_flip"
    assert resolve_augmentation("auto", "tinyimagenet") == "crop_flip"
    assert resolve_augmentation("auto", "pacs") == "resized_crop"
    assert resolve_augmentation("auto", "digits") == "none"
    assert resolve_augmentation("false", "cifar10") == "none"
    assert resolve_augmentation("true", "digits") == "crop_flip"
    assert resolve_augmentation("resized_crop", "synthetic") == "resized_crop"
    assert Config(dataset="pacs", augment="false").resolved_augment == "none"


def tiny(**kw):
    return tiny_round_config(**{"classes_per_client": 3, "augment": "crop_flip",
                                "client_chunk_size": 2, **kw})


def test_augmentation_depends_on_round_client_and_step_only():
    exp = build_experiment(tiny())
    assert exp.spec.augment == "crop_flip"
    plain = build_experiment(tiny(augment="false"))
    state = initial_state(exp)
    gather = jax.jit(gather_client_batches, static_argnums=1)
    keys = client_keys(round_key(state), jnp.arange(4, dtype=jnp.int32))
    x0, y0 = gather(exp.data, exp.spec, keys[0], jnp.int32(0))
    x0_plain, y0_plain = gather(plain.data, plain.spec, keys[0], jnp.int32(0))
    np.testing.assert_array_equal(y0, y0_plain)            # same batches; only pixels change
    assert not np.array_equal(x0, x0_plain)
    again, _ = gather(exp.data, exp.spec, keys[0], jnp.int32(0))
    np.testing.assert_array_equal(x0, again)               # same (seed, round, client)
    next_round = client_keys(round_key(state._replace(round=jnp.int32(1))),
                                    jnp.arange(4, dtype=jnp.int32))
    x0_r1, _ = gather(exp.data, exp.spec, next_round[0], jnp.int32(0))
    assert not np.array_equal(x0, x0_r1)
    # the same images under two clients' keys get different crops
    augment = jax.jit(lambda k, x: augment_round(jax.random.fold_in(k, AUGMENT_TAG), x,
                                                 "crop_flip"))
    x_SB = x0_plain
    views = [np.asarray(augment(keys[c], x_SB)) for c in range(4)]
    assert all(not np.array_equal(views[i], views[j]) for i in range(4) for j in range(i))
    np.testing.assert_array_equal(views[0], x0)   # what the round itself saw for client 0


@pytest.mark.parametrize("mode, norm", [("crop_flip", "bn"), ("resized_crop", "fn")])
def test_vectorized_round_equals_reference_loop_with_augmentation(mode, norm):
    config = tiny(augment=mode, norm=norm)
    exp = build_experiment(config)
    vec = jax.jit(make_round_fn(exp.apply_fn, exp.spec, exp.algorithm))
    ref = make_loop_round(exp.apply_fn, exp.spec, exp.algorithm)
    hp, state = hparams_of(config), initial_state(exp)
    a, ma = vec(state, hp, exp.data)
    b, mb = ref(state, hp, exp.data)
    diff = max(float(jnp.abs(p - q).max()) for p, q in
               zip(jax.tree.leaves((a.params, a.model_state)), jax.tree.leaves((b.params, b.model_state))))
    assert diff < 1e-5
    assert abs(float(ma["train_loss"]) - float(mb["train_loss"])) < 1e-5
    # and augmentation changed the training (same seed, augment off)
    off = build_experiment(tiny(augment="false", norm=norm))
    c, _ = jax.jit(make_round_fn(off.apply_fn, off.spec, off.algorithm))(
        initial_state(off), hp, off.data)
    assert max(float(jnp.abs(p - q).max()) for p, q in
               zip(jax.tree.leaves(a.params), jax.tree.leaves(c.params))) > 1e-4
