"""Bias-free conv and 2x2 max-pool with a fast formulation for XLA:CPU.

On XLA:CPU the gradients of `lax.conv_general_dilated` and of reduce-window max-pool are the
slow parts of a vmapped/scanned federated round (FACTS.md "Speed on XLA:CPU"): a vmap over
clients turns each conv into a grouped conv, and conv gradients inside a loop compile to a
naive loop. Expressing the conv as im2col + one matmul and the pool as reshape + max keeps
everything on the matmul path. Both formulations share ONE parameter layout (`kernel`
[kh, kw, cin, cout], exactly like `nn.Conv(use_bias=False)`), so the same variables run with
either implementation.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from fedln_jax.errors import FedlnError

CONV_IMPLS = ("auto", "patches", "lax")

# Patch extraction used by impl="patches". Measured on this 2-core CPU (jax 0.10.2): median
# time of a jitted vmap(value_and_grad) w.r.t. kernel and input, 10 clients x batch 32,
# variants run back to back (shared machine, +-20% noise):
#   conv5x5 3->64 on 32x32 VALID:  slices 130-140 ms | conv_general_dilated_patches 350-380 ms
#                                  | lax.conv_general_dilated 440-530 ms | sum of 25 shifted dots 637 ms
#   conv5x5 64->64 on 14x14 VALID: slices 219-228 ms | patches op 1164-1191 ms | lax conv 492-554 ms
#                                  | sum of shifted dots 220 ms
#   conv3x3 1->16 on 8x8 SAME:     slices 1.1 ms | patches op 2.5 ms | lax conv 3.0-3.3 ms
#   conv3x3 16->32 on 4x4 SAME:    slices 1.0-1.8 ms | patches op 11.5-14.9 ms | lax conv 2.4-2.9 ms
# The patches op is itself a conv with an identity kernel, so under vmap its gradient is a
# grouped conv again. Static slices + concat + one matmul win everywhere measured.
_PATCHES_METHOD = "slices"


def resolve_conv_impl(conv_impl: str) -> tuple[str, str]:
    """Map a `conv_impl` name to (conv impl, pool impl).

    "auto" -> patches + reshape on CPU, lax + lax on GPU/TPU (where cuDNN/TPU convs are fast).
    """
    if conv_impl not in CONV_IMPLS:
        raise FedlnError(f"unknown conv_impl {conv_impl!r}; expected one of {', '.join(CONV_IMPLS)}")
    if conv_impl == "auto":
        conv_impl = "patches" if jax.default_backend() == "cpu" else "lax"
    return conv_impl, ("reshape" if conv_impl == "patches" else "lax")


def _same_pads(k: int) -> tuple[int, int]:
    # XLA's SAME for stride 1: total k-1, the extra one (even k) on the high side.
    lo = (k - 1) // 2
    return lo, k - 1 - lo


def _pad_same(x: jax.Array, kh: int, kw: int) -> jax.Array:
    pads = [(0, 0)] * (x.ndim - 3) + [_same_pads(kh), _same_pads(kw), (0, 0)]
    return jnp.pad(x, pads)


def extract_patches(x: jax.Array, kh: int, kw: int, padding: str, method: str = _PATCHES_METHOD) -> jax.Array:
    """im2col for stride 1: [..., H, W, C] -> [..., Ho, Wo, kh*kw*C], feature order (i, j, c).

    That order matches `kernel.reshape(kh*kw*cin, cout)` for a [kh, kw, cin, cout] kernel.
    """
    if padding == "SAME":
        x = _pad_same(x, kh, kw)
    elif padding != "VALID":
        raise FedlnError(f"unknown padding {padding!r}; expected VALID or SAME")
    h, w, c = x.shape[-3:]
    ho, wo = h - kh + 1, w - kw + 1
    if ho < 1 or wo < 1:
        raise FedlnError(f"conv input {h}x{w} is smaller than the {kh}x{kw} kernel")
    if method == "slices":
        cols = [x[..., i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)]
        return jnp.concatenate(cols, axis=-1)
    if method == "lax":
        lead = x.shape[:-3]
        x4 = x.reshape((-1, h, w, c))
        p = lax.conv_general_dilated_patches(
            x4, (kh, kw), (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        # The op orders patch features as (c, i, j); reorder to (i, j, c).
        p = p.reshape(p.shape[:3] + (c, kh * kw)).swapaxes(-1, -2).reshape(p.shape[:3] + (kh * kw * c,))
        return p.reshape(lead + p.shape[1:])
    raise ValueError(f"unknown patches method {method!r}")


def conv2d(x: jax.Array, kernel: jax.Array, padding: str, impl: str) -> jax.Array:
    """Stride-1, bias-free 2D conv of NHWC `x` with an HWIO `kernel`."""
    kh, kw, cin, cout = kernel.shape
    if impl == "patches":
        p = extract_patches(x, kh, kw, padding)
        # One 2-D [pixels, kh*kw*cin] x [kh*kw*cin, cout] matmul. With the batch axes kept,
        # XLA:CPU transposes the 4-D output gradient for the kernel-gradient matmul with a
        # slow generic 4-D transpose; flattened, it is a 2-D one. Measured back to back on
        # the paper CNN's training step (batch 32): 54-59 ms vs 60-63 ms per step.
        p2 = p.reshape((-1, p.shape[-1]))
        y = jnp.dot(p2, kernel.reshape(kh * kw * cin, cout))
        return y.reshape(p.shape[:-1] + (cout,))
    if impl == "lax":
        lead = x.shape[:-3]
        x4 = x.reshape((-1,) + x.shape[-3:])
        y = lax.conv_general_dilated(x4, kernel, (1, 1), padding,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y.reshape(lead + y.shape[1:])
    raise FedlnError(f"unknown conv impl {impl!r}; expected patches or lax")


class Conv(nn.Module):
    """Bias-free stride-1 conv with the parameter layout of `nn.Conv(use_bias=False)`."""

    features: int
    kernel_size: Sequence[int] = (3, 3)
    padding: str = "VALID"
    impl: str = "patches"
    kernel_init: Callable = nn.initializers.lecun_normal()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        kernel = self.param("kernel", self.kernel_init, (kh, kw, x.shape[-1], self.features), jnp.float32)
        return conv2d(x, kernel.astype(x.dtype), self.padding, self.impl)


def max_pool2(x: jax.Array, impl: str = "reshape") -> jax.Array:
    """2x2 max-pool, stride 2, VALID (odd trailing rows/cols dropped, like nn.max_pool).

    "reshape" splits the gradient evenly among exact ties inside a window, while
    reduce-window ("lax") gives it to one element; with continuous inputs they agree.
    """
    if impl == "reshape":
        h, w, c = x.shape[-3:]
        h2, w2 = h // 2, w // 2
        if h2 < 1 or w2 < 1:
            raise FedlnError(f"cannot 2x2 max-pool a {h}x{w} map")
        x = x[..., : 2 * h2, : 2 * w2, :]
        x = x.reshape(x.shape[:-3] + (h2, 2, w2, 2, c))
        return jnp.max(x, axis=(-4, -2))
    if impl == "lax":
        lead = x.shape[:-3]
        x4 = x.reshape((-1,) + x.shape[-3:])
        y = nn.max_pool(x4, (2, 2), strides=(2, 2), padding="VALID")
        return y.reshape(lead + y.shape[1:])
    raise FedlnError(f"unknown pool impl {impl!r}; expected reshape or lax")
