"""conv_impl="torch": the bias-free conv's three passes in PyTorch's CPU convolutions (oneDNN).

Optional: PyTorch is never imported unless this implementation is selected (or `auto` asks
whether it is installed), and nothing else in the package needs it (docs/install.md#torch-convs).

How it runs inside the jitted round: a `jax.custom_vjp` whose forward is one
`buffer_callback` (torch's `conv2d`) and whose backward is one more (torch's
`convolution_backward`, input and kernel gradients in one call). `buffer_callback` hands the
callback XLA's own buffers, inputs and outputs, which torch views through DLPack: no copy in,
one copy of each result into its output buffer. (`jax.pure_callback` copies every argument
onto a fresh device array and every result back: measured quiet, its 64->64 forward took
2.1 ms where the same torch call takes 1.5; BENCHMARKS.md.) NHWC is seen as NCHW with
channels_last strides and the HWIO kernel as OIHW, the layouts oneDNN takes directly. Under
`vmap` (the clients of a chunk) the callback gets the stacked clients (`vmap_method=
"expand_dims"`) and loops over them in Python, one plain conv each, as the PyTorch loop does;
inside `lax.map`/`lax.scan` it is called once per iteration.

Padding: torch pads symmetrically, so an asymmetric SAME padding pads the extra high-side
pixels in JAX first (its gradient is JAX's slice) and torch pads the symmetric rest.
"""
from __future__ import annotations

import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental.buffer_callback import buffer_callback

from fedln_jax.errors import FedlnError, first_line


def torch_available() -> bool:
    """Whether PyTorch can be imported here (without importing it)."""
    return importlib.util.find_spec("torch") is not None


@functools.lru_cache(maxsize=1)
def _torch():
    try:
        import torch
    except Exception as e:    # installed but broken (a missing library, a mismatched build)
        raise FedlnError(f"PyTorch is installed but fails to import ({first_line(e)}), and "
                         "this conv runs in it (conv_impl=torch, or torch_large: auto's pick "
                         "on a CPU with PyTorch); conv_impl=patches runs without it "
                         "(docs/install.md#torch-convs)") from e
    return torch


def _views(*buffers):
    """Torch views of XLA's buffers (DLPack, no copy); outputs are written through them."""
    torch = _torch()
    return [torch.from_dlpack(b) for b in buffers]


def _lead_indices(*shapes):
    """Per leading (vmapped) index, one index tuple per argument: its axes broadcast, a size-1
    axis (expand_dims of an unbatched argument) always read at 0."""
    lead = np.broadcast_shapes(*shapes)
    for idx in np.ndindex(*lead):
        yield idx, [tuple(i if d > 1 else 0 for i, d in zip(idx, shape)) for shape in shapes]


def _nchw(x):
    """NHWC memory seen as NCHW: torch's channels_last layout, which oneDNN takes as is."""
    return x.permute(0, 3, 1, 2)


def _oihw(k):
    """An HWIO kernel seen as torch's OIHW (a view; torch reorders the small kernel itself)."""
    return k.permute(3, 2, 0, 1)


def _forward_host(ctx, out, x, k, *, stride, pad):
    """out[...] = conv(x, k), one plain conv per leading (client) index."""
    torch = _torch()
    xt, kt, ot = _views(x, k, out)
    with torch.no_grad():
        for io, (ix, ik) in _lead_indices(xt.shape[:-4], kt.shape[:-4]):
            y = torch.nn.functional.conv2d(_nchw(xt[ix]), _oihw(kt[ik]), stride=stride,
                                           padding=pad)
            _nchw(ot[io]).copy_(y)


def _backward_host(ctx, outs, x, k, g, *, stride, pad, need_dx):
    """outs = (dx, dk) or (dk,): torch's convolution_backward per leading (client) index."""
    torch = _torch()
    xt, kt, gt, *ots = _views(x, k, g, *outs)
    for io, (ix, ik, ig) in _lead_indices(xt.shape[:-4], kt.shape[:-4], gt.shape[:-4]):
        dx, dk, _ = torch.ops.aten.convolution_backward(
            _nchw(gt[ig]), _nchw(xt[ix]), _oihw(kt[ik]), None, [stride, stride], list(pad),
            [1, 1], False, [0, 0], 1, [need_dx, True, False])
        if need_dx:
            _nchw(ots[0][io]).copy_(dx)
        _oihw(ots[-1][io]).copy_(dk)


def _out_struct(x_shape, kernel_shape, stride, pad):
    n, h, w, _ = x_shape
    kh, kw, _, cout = kernel_shape
    return jax.ShapeDtypeStruct((n, (h + 2 * pad[0] - kh) // stride + 1,
                                 (w + 2 * pad[1] - kw) // stride + 1, cout), jnp.float32)


def _forward_call(x, kernel, stride, pad):
    return buffer_callback(functools.partial(_forward_host, stride=stride, pad=pad),
                           _out_struct(x.shape, kernel.shape, stride, pad),
                           vmap_method="expand_dims")(x, kernel)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_sym(x, kernel, stride, pad):
    """The conv with symmetric padding `pad` (rows, cols): one torch call forward."""
    return _forward_call(x, kernel, stride, pad)


def _fwd(x, kernel, stride, pad):
    # symbolic_zeros: x.perturbed is False for the first layer's input (the data), whose
    # gradient the backward call then skips (torch's output_mask).
    y = _forward_call(x.value, kernel.value, stride, pad)
    residuals = (x.value, kernel.value) + (() if x.perturbed else (None,))
    return y, residuals


def _bwd(stride, pad, residuals, g):
    x, kernel = residuals[:2]
    need_dx = len(residuals) == 2
    if isinstance(g, jax.custom_derivatives.SymbolicZero):   # the output feeds no loss
        return jnp.zeros_like(x), jnp.zeros_like(kernel)
    shapes = ((jax.ShapeDtypeStruct(x.shape, jnp.float32),) if need_dx else ()) + (
        jax.ShapeDtypeStruct(kernel.shape, jnp.float32),)
    grads = buffer_callback(
        functools.partial(_backward_host, stride=stride, pad=pad, need_dx=need_dx), shapes,
        vmap_method="expand_dims")(x, kernel, g)
    return (grads[0], grads[1]) if need_dx else (jnp.zeros_like(x), grads[0])


_conv_sym.defvjp(_fwd, _bwd, symbolic_zeros=True)


def conv2d_torch(x: jax.Array, kernel: jax.Array, pads: tuple, stride: int) -> jax.Array:
    """Bias-free conv of NHWC `x` ([..., H, W, Cin]) with an HWIO kernel, torch's kernels.

    pads: ((top, bottom), (left, right)) as `layers.resolve_pads` gives them. float32 only
    (another dtype is computed in float32 and cast back).
    """
    if not torch_available():
        raise FedlnError("conv_impl=torch needs PyTorch, which is not installed here "
                         "(docs/install.md#torch-convs); conv_impl=auto or patches runs without it")
    if jax.default_backend() != "cpu":    # the callback would get device buffers
        raise FedlnError(f"conv_impl=torch runs on the CPU only (the backend is "
                         f"{jax.default_backend()}); conv_impl=auto or lax runs here")
    _torch()    # imported while tracing: a broken install is one error here, not in a callback
    (top, bottom), (left, right) = pads
    sym = (min(top, bottom), min(left, right))
    extra = ((top - sym[0], bottom - sym[0]), (left - sym[1], right - sym[1]))
    dtype = x.dtype
    x = x.astype(jnp.float32)
    if extra != ((0, 0), (0, 0)):
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [extra[0], extra[1], (0, 0)])
    lead = x.shape[:-3]
    x4 = x.reshape((-1,) + x.shape[-3:])
    y = _conv_sym(x4, kernel.astype(jnp.float32), stride, sym)
    return y.reshape(lead + y.shape[1:]).astype(dtype)
