"""conv_impl=torch (models/conv_torch.py): values, gradients and determinism against
`lax.conv_general_dilated`, plain, under vmap and inside scan; skipped where PyTorch is not
installed (it is optional: docs/install.md#torch-convs)."""

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import tiny_round_config

from fedln_jax import run
from fedln_jax.config import load_config_file
from fedln_jax.errors import FedlnError
from fedln_jax.models import auto_conv_choice, build_model, conv2d, resolve_conv_impl
from fedln_jax.models import conv_torch, layers
from fedln_jax.models.conv_torch import torch_available
from fedln_jax.models.layers import AUTO_TORCH, TORCH_MIN_MACS, conv_macs
from fedln_jax.studies import demo

needs_torch = pytest.mark.skipif(not torch_available(),
                                 reason="PyTorch is not installed (the optional `bench` extra)")
TOL = dict(rtol=2e-5, atol=2e-5)

CASES = [  # (input NHWC, kernel HWIO, padding, stride): odd shapes, cin 1 and 3, batch 1
    ((1, 7, 9, 1), (3, 3, 1, 4), "SAME", 1),
    ((2, 9, 8, 3), (5, 5, 3, 6), "VALID", 1),
    ((1, 7, 9, 3), (3, 2, 3, 5), "SAME", 2),       # asymmetric SAME pads, stride 2
    ((2, 8, 7, 1), (3, 3, 1, 2), "VALID", 2),
    ((1, 7, 6, 3), (3, 3, 3, 4), 1, 2),            # torch-style int padding (ResNet)
]


def _loss(impl, padding, stride):
    return lambda x, k: jnp.sum(jnp.sin(conv2d(x, k, padding, impl, stride)))


def _value_and_grads(impl, padding, stride):
    """(conv output, d loss / d input, d loss / d kernel)."""
    def f(x, k):
        return conv2d(x, k, padding, impl, stride), *jax.grad(_loss(impl, padding, stride), (0, 1))(x, k)
    return f


def _inputs(xs, ks, lead=()):
    kx, kk = jax.random.split(jax.random.key(0))
    return jax.random.normal(kx, lead + xs), 0.3 * jax.random.normal(kk, lead + ks)


@needs_torch
@pytest.mark.parametrize("xs,ks,padding,stride", CASES)
def test_values_and_gradients_match_lax_plain_vmapped_and_scanned(xs, ks, padding, stride):
    x, k = _inputs(xs, ks)
    xc, kc = _inputs(xs, ks, lead=(3,))

    def run(impl):
        f = _value_and_grads(impl, padding, stride)
        scanned = jax.lax.scan(lambda c, xk: (c, f(*xk)), 0.0, (xc, kc))[1]
        return f(x, k), jax.vmap(f)(xc, kc), scanned

    mine, ref = jax.jit(lambda: (run("torch"), run("lax")))()
    assert jax.tree.structure(mine) == jax.tree.structure(ref)
    for a, b in zip(jax.tree.leaves(mine), jax.tree.leaves(ref)):
        assert a.shape == b.shape
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), **TOL)


@needs_torch
def test_kernel_gradient_alone_and_nested_vmap():
    """The data's gradient skipped (only the kernel is differentiated), under two vmaps with an
    unbatched kernel on the outer one: the callback broadcasts the size-1 axis."""
    xs, ks, padding, stride = CASES[2]
    x, k = _inputs(xs, ks, lead=(2, 3))

    def run(impl):
        g = jax.grad(_loss(impl, padding, stride), argnums=1)
        return jax.vmap(jax.vmap(g, in_axes=(0, 0)), in_axes=(0, None))(x, k[0])

    mine, ref = jax.jit(lambda: (run("torch"), run("lax")))()
    np.testing.assert_allclose(np.asarray(mine), np.asarray(ref), **TOL)


@needs_torch
def test_same_bits_twice():
    xs, ks, padding, stride = CASES[1]
    xc, kc = _inputs(xs, ks, lead=(2,))
    f = jax.jit(jax.vmap(_value_and_grads("torch", padding, stride)))
    first, second = f(xc, kc), jax.jit(jax.vmap(_value_and_grads("torch", padding, stride)))(xc, kc)
    for a, b in zip(first, second):
        assert np.array_equal(np.asarray(a), np.asarray(b))


@needs_torch
def test_paper_cnn_logits_match_patches():
    x = jax.random.uniform(jax.random.key(2), (2, 32, 32, 3))
    nets = [build_model("cnn", "ln", 10, conv_impl=impl) for impl in ("torch", "patches")]
    variables = nets[1].init(jax.random.key(0), x)
    mine, ref = (net.apply(variables, x) for net in nets)
    np.testing.assert_allclose(np.asarray(mine), np.asarray(ref), rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the CPU's rule")
@pytest.mark.parametrize("installed,devices,expected", [
    (True, 1, AUTO_TORCH), (False, 1, "patches"), (True, 8, "patches"), (False, 8, "patches")])
def test_auto_on_the_cpu_runs_large_convs_in_torch_where_it_is_installed(
        monkeypatch, installed, devices, expected):
    monkeypatch.setattr(layers, "torch_available", lambda: installed)
    monkeypatch.setattr(jax, "local_device_count", lambda: devices)
    conv, why = auto_conv_choice()
    assert conv == expected, why
    assert resolve_conv_impl("auto") == (expected, "reshape")
    assert resolve_conv_impl("torch") == ("torch", "reshape")


def _trace_grads(model, x_shape):
    """Trace (not compile) the gradient of `model`'s loss on one batch of x_shape: the choice
    of conv, and a torch conv's check, happen while tracing."""
    def grads(x):
        variables = model.init(jax.random.key(0), x[:1])
        return jax.grad(lambda v: jnp.sum(model.apply(v, x)))(variables)
    return jax.eval_shape(grads, jax.ShapeDtypeStruct(x_shape, jnp.float32))


MNIST5K_HEADLINE = os.path.join(os.path.dirname(__file__), "..", "experiments", "configs",
                                "mnist5k_headline.py")


@pytest.mark.parametrize("config", [demo.get_config(), load_config_file(MNIST5K_HEADLINE)],
                         ids=["digits demo", "mnist5k headline"])
def test_the_readme_studies_convs_stay_on_patches(monkeypatch, config):
    """conv_impl=torch_large (auto's pick with PyTorch) on the README demo's model and the
    mnist5k headline's: every conv is under TORCH_MIN_MACS at their batch, so none reaches
    PyTorch (made absent here: a torch conv would raise) and their numbers do not depend on it
    being installed."""
    monkeypatch.setattr(conv_torch, "torch_available", lambda: False)
    shapes = {"digits": (8, 8, 1), "mnist5k": (28, 28, 1)}
    model = build_model(config.resolved_model, config.norm, 10, conv_impl=AUTO_TORCH,
                        conv_features=config.conv_features)
    _trace_grads(model, (config.batch_size,) + shapes[config.dataset])


@pytest.mark.parametrize("conv_features", ["64/8", "48/64"],
                         ids=["first conv 120M", "second conv 246M"])
def test_the_paper_cnns_convs_reach_torch(monkeypatch, conv_features):
    """...while a paper-CNN conv over the line does, the first (3->64 on 32x32) or the second
    alone (the check above can fail)."""
    monkeypatch.setattr(conv_torch, "torch_available", lambda: False)
    paper_cnn = build_model("cnn", "none", 10, conv_impl=AUTO_TORCH, conv_features=conv_features)
    with pytest.raises(FedlnError, match="needs PyTorch"):
        _trace_grads(paper_cnn, (32, 32, 32, 3))


@needs_torch
def test_torch_large_runs_torch_for_large_convs_and_patches_for_small_ones():
    """The digits CNN's tiny convs stay on patches (each torch conv costs two host callbacks)."""
    small = ((2, 8, 8, 1), (3, 3, 1, 16), "SAME")
    large = ((8, 20, 20, 64), (5, 5, 64, 64), "VALID")
    assert conv_macs(small[0], small[1], "SAME", 1) < TORCH_MIN_MACS <= conv_macs(large[0], large[1], "VALID", 1)

    def run(case):
        x, k = _inputs(case[0], case[1])
        return [conv2d(x, k, case[2], impl) for impl in (AUTO_TORCH, "torch", "patches")]

    (auto_s, _, patches_s), (auto_l, torch_l, _) = jax.jit(lambda: (run(small), run(large)))()
    assert np.array_equal(np.asarray(auto_s), np.asarray(patches_s))
    assert np.array_equal(np.asarray(auto_l), np.asarray(torch_l))


@pytest.mark.skipif(torch_available(), reason="PyTorch is installed here")
def test_torch_impl_without_torch_is_one_clear_error():
    with pytest.raises(FedlnError, match="needs PyTorch"):
        conv2d(jnp.zeros((1, 5, 5, 1)), jnp.zeros((3, 3, 1, 2)), "VALID", "torch")


def test_torch_impl_on_an_accelerator_is_one_clear_error(monkeypatch):
    """The callback would be handed device buffers there: refused before tracing it."""
    monkeypatch.setattr(conv_torch, "torch_available", lambda: True)
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    with pytest.raises(FedlnError, match="CPU only"):
        conv2d(jnp.zeros((1, 5, 5, 1)), jnp.zeros((3, 3, 1, 2)), "VALID", "torch")


@needs_torch
def test_a_run_on_torch_convs_trains_records_it_and_repeats_its_bits(tmp_path):
    """End to end through the round (clients under lax.map, local steps under scan, the
    evaluation): two runs of the same config give the same metrics, and summary.json names
    the conv that ran."""
    config = tiny_round_config(conv_impl="torch", rounds=2, eval_every=1)
    summaries = [run(config, str(tmp_path / name), quiet=True) for name in ("a", "b")]
    assert [s["conv_impl"] for s in summaries] == ["torch", "torch"]
    rows = [(tmp_path / name / "metrics.jsonl").read_text().splitlines() for name in ("a", "b")]
    strip = [[{k: v for k, v in json.loads(r).items() if k != "elapsed_seconds"} for r in rs]
             for rs in rows]
    assert strip[0] == strip[1] and len(strip[0]) == 2
    assert np.isfinite(strip[0][-1]["train_loss"])


def test_a_broken_torch_install_is_one_clear_error_while_tracing(monkeypatch):
    """Installed but failing to import (a missing library): refused while the model is traced,
    naming the way out, never a traceback from inside a host callback mid-run."""
    monkeypatch.setattr(conv_torch, "torch_available", lambda: True)
    monkeypatch.setitem(sys.modules, "torch", None)    # `import torch` raises ImportError
    conv_torch._torch.cache_clear()
    try:
        with pytest.raises(FedlnError, match="fails to import .*conv_impl=patches runs without"):
            conv2d(jnp.zeros((1, 5, 5, 1)), jnp.zeros((3, 3, 1, 2)), "VALID", "torch")
    finally:
        conv_torch._torch.cache_clear()
