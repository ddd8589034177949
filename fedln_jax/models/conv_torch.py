"""conv_impl="torch": the bias-free conv's three passes in PyTorch's CPU convolutions (oneDNN).

Optional: PyTorch is never imported unless this implementation is selected (or `auto` asks
whether it is installed), and nothing else in the package needs it (docs/install.md#torch-convs).

How it runs inside the jitted round: a `jax.custom_vjp` whose forward is one
`jax.pure_callback` (torch's `conv2d`) and whose backward is one more (torch's
`convolution_backward`, input and kernel gradients in one call). The arrays cross zero-copy:
the callback's numpy arguments are viewed by `torch.from_numpy`, NHWC seen as NCHW with
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
import math
import warnings

import jax
import jax.numpy as jnp
import numpy as np

from fedln_jax.errors import FedlnError


def torch_available() -> bool:
    """Whether PyTorch can be imported here (without importing it)."""
    return importlib.util.find_spec("torch") is not None


@functools.lru_cache(maxsize=1)
def _torch():
    try:
        import torch
    except ImportError as e:    # pragma: no cover - depends on the install
        raise FedlnError("conv_impl=torch needs PyTorch (pip install -e '.[bench]', "
                         "docs/install.md#torch-convs)") from e
    return torch


def _as_torch(array: np.ndarray):
    """A torch view of a (possibly read-only) numpy array: no copy."""
    # from_numpy warns on read-only memory (XLA's buffers); torch never writes its conv inputs.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return _torch().from_numpy(array)


def _lead_loop(lead_shapes, fn, out_shapes):
    """Run fn(index tuple per argument) over the broadcast of the arguments' leading (vmapped)
    axes; size-1 leading axes (expand_dims of an unbatched argument) are broadcast."""
    lead = np.broadcast_shapes(*lead_shapes)
    if math.prod(lead) == 1:    # one client (the CPU's chunk width): its results, no copy
        zeros = [(0,) * len(shape) for shape in lead_shapes]
        return [r.reshape(lead + s) for r, s in zip(fn(*zeros), out_shapes)]
    outs = [np.empty(lead + s, np.float32) for s in out_shapes]
    for idx in np.ndindex(*lead):
        per_arg = [tuple(i if d > 1 else 0 for i, d in zip(idx, shape)) for shape in lead_shapes]
        for out, r in zip(outs, fn(*per_arg)):
            out[idx] = r
    return outs


def _nchw(x):
    """NHWC memory seen as NCHW: torch's channels_last layout, which oneDNN takes as is."""
    return x.permute(0, 3, 1, 2)


def _oihw(k):
    """An HWIO kernel seen as torch's OIHW (a view; torch reorders the small kernel itself)."""
    return k.permute(3, 2, 0, 1)


def _forward_host(x, k, *, stride, pad):
    torch = _torch()
    x, k = np.asarray(x), np.asarray(k)
    ho = (x.shape[-3] + 2 * pad[0] - k.shape[-4]) // stride + 1
    wo = (x.shape[-2] + 2 * pad[1] - k.shape[-3]) // stride + 1
    out_shape = (x.shape[-4], ho, wo, k.shape[-1])

    def one(ix, ik):
        with torch.no_grad():
            y = torch.nn.functional.conv2d(_nchw(_as_torch(x[ix])), _oihw(_as_torch(k[ik])),
                                           stride=stride, padding=pad)
        return (y.permute(0, 2, 3, 1).numpy(),)
    return _lead_loop([x.shape[:-4], k.shape[:-4]], one, [out_shape])[0]


def _backward_host(x, k, g, *, stride, pad, need_dx):
    torch = _torch()
    x, k, g = np.asarray(x), np.asarray(k), np.asarray(g)

    def one(ix, ik, ig):
        xt, kt = _nchw(_as_torch(x[ix])), _oihw(_as_torch(k[ik]))
        gt = _nchw(_as_torch(g[ig]))
        dx, dk, _ = torch.ops.aten.convolution_backward(
            gt, xt, kt, None, [stride, stride], list(pad), [1, 1], False, [0, 0], 1,
            [need_dx, True, False])
        dk = dk.permute(2, 3, 1, 0).numpy()
        return (dx.permute(0, 2, 3, 1).numpy(), dk) if need_dx else (dk,)
    shapes = [x.shape[-4:], k.shape[-4:]] if need_dx else [k.shape[-4:]]
    return tuple(_lead_loop([x.shape[:-4], k.shape[:-4], g.shape[:-4]], one, shapes))


def _out_struct(x_shape, kernel_shape, stride, pad):
    n, h, w, _ = x_shape
    kh, kw, _, cout = kernel_shape
    return jax.ShapeDtypeStruct((n, (h + 2 * pad[0] - kh) // stride + 1,
                                 (w + 2 * pad[1] - kw) // stride + 1, cout), jnp.float32)


def _forward_call(x, kernel, stride, pad):
    return jax.pure_callback(functools.partial(_forward_host, stride=stride, pad=pad),
                             _out_struct(x.shape, kernel.shape, stride, pad),
                             x, kernel, vmap_method="expand_dims")


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
    grads = jax.pure_callback(
        functools.partial(_backward_host, stride=stride, pad=pad, need_dx=need_dx), shapes,
        x, kernel, g, vmap_method="expand_dims")
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
