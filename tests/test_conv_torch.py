"""conv_impl=torch (models/conv_torch.py): values, gradients and determinism against
`lax.conv_general_dilated`, plain, under vmap and inside scan; skipped where PyTorch is not
installed (it is optional: docs/install.md#torch-convs)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from fedln_jax.errors import FedlnError
from fedln_jax.models import auto_conv_choice, build_model, conv2d, resolve_conv_impl
from fedln_jax.models.conv_torch import torch_available
from fedln_jax.models.layers import AUTO_TORCH, TORCH_MIN_MACS, conv_macs

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


def test_auto_keeps_patches_on_the_cpu_with_or_without_torch():
    conv, why = auto_conv_choice()
    if jax.default_backend() != "cpu":
        assert conv == "lax"
    else:
        assert conv == "patches", why
    assert resolve_conv_impl("auto") == (conv, "lax" if conv == "lax" else "reshape")
    assert resolve_conv_impl("torch") == ("torch", "reshape")


@needs_torch
def test_torch_large_runs_torch_for_large_convs_and_patches_for_small_ones():
    """The digits CNN's tiny convs stay on patches (each torch conv costs two host callbacks)."""
    small = ((2, 8, 8, 1), (3, 3, 1, 16), "SAME")
    large = ((3, 18, 18, 64), (3, 3, 64, 64), "VALID")
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
