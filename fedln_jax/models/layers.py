"""Bias-free conv and 2x2 max-pool with a fast formulation for XLA:CPU.

On XLA:CPU the gradients of `lax.conv_general_dilated` and of reduce-window max-pool are the
slow parts of a vmapped/scanned federated round (BENCHMARKS.md): a vmap over
clients turns each conv into a grouped conv, and conv gradients inside a loop compile to a
naive loop. Expressing the conv as im2col + one matmul and the pool as reshape + max keeps
everything on the matmul path. Both formulations share ONE parameter layout (`kernel`
[kh, kw, cin, cout], exactly like `nn.Conv(use_bias=False)`), so the same variables run with
either implementation.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from flax import linen as nn
from jax import lax

from fedln_jax.errors import FedlnError
from fedln_jax.models.conv_torch import conv2d_torch, torch_available

CONV_IMPLS = ("auto", "patches", "lax", "torch", "torch_large")

# Weight initializations by the `init` config key (docs/models.md#initialization):
#   torch  PyTorch's default for Conv2d and Linear, kaiming_uniform with a = sqrt(5), i.e.
#          U(-1/sqrt(fan_in), +1/sqrt(fan_in)): the paper's reference code sets no init of its own
#   lecun  flax's default lecun_normal (std 1/sqrt(fan_in), ~1.7x the scale); this package's
#          init before the `init` key, kept to reproduce those runs
INITS = ("torch", "lecun")


def kernel_init(init: str) -> Callable:
    """The kernel initializer of an `init` name (fan_in = kh * kw * cin for a conv)."""
    if init == "torch":
        return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
    if init == "lecun":
        return nn.initializers.lecun_normal()
    raise FedlnError(f"unknown init {init!r}; expected one of {', '.join(INITS)}")


def bias_init(init: str, fan_in: int) -> Callable:
    """The bias initializer of an `init` name: torch's U(+-1/sqrt(fan_in)), flax's zeros."""
    if init == "lecun":
        return nn.initializers.zeros
    bound = 1.0 / fan_in ** 0.5
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)

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


# conv_impl=torch_large (auto's pick on a CPU with PyTorch): torch for a conv of at least this
# many multiply-adds per call (one client's batch), patches below. Measured quiet on the
# 2-core EPYC of BENCHMARKS.md ("Torch convs"): the paper CNN's round (convs of 120M and 328M
# MACs at batch 32; `fedln-jax bench --clients 40`, 4 interleaved runs) at 220-242 GFLOP/s with
# both convs in torch, 218-228 with only the 328M one, 164-175 on patches; mnist5k's CNN at
# widths 32/64 (15M and 105M) 4.80 ms per local step with its 105M conv in torch against 4.69
# on patches: no gain, so the line sits above it. Small convs lose in torch: the two host
# callbacks outweigh the conv (the digits CNN's, under 1M, ran 5x slower).
TORCH_MIN_MACS = 110_000_000
AUTO_TORCH = "torch_large"    # torch for large convs, patches below


def auto_conv_choice() -> tuple[str, str]:
    """(the conv impl that "auto" picks here, why), the rule of docs/install.md#torch-convs.

    GPU/TPU: lax (cuDNN / the TPU's convs). CPU with PyTorch and one device: torch_large
    (BENCHMARKS.md, "Torch convs"); the smaller convs (the digits demo's, mnist5k's at widths
    32/64) stay on patches, so their numbers do not depend on PyTorch being installed.
    Several CPU devices: patches (each device's callbacks would queue for the one Python
    interpreter).
    """
    backend = jax.default_backend()
    if backend != "cpu":
        return "lax", f"backend {backend}: XLA's own conv"
    if not torch_available():
        return "patches", ("CPU without PyTorch: im2col + matmul (with PyTorch installed, "
                           "auto runs large convs in it: docs/install.md#torch-convs)")
    if jax.local_device_count() > 1:
        return "patches", (f"CPU with {jax.local_device_count()} devices: im2col + matmul "
                           "(PyTorch's convs are picked on one CPU device only)")
    return AUTO_TORCH, (f"CPU with PyTorch: its convs (oneDNN) for convs of >= "
                        f"{TORCH_MIN_MACS // 1_000_000}M multiply-adds per client batch, "
                        "patches below (docs/install.md#torch-convs)")


def resolve_conv_impl(conv_impl: str) -> tuple[str, str]:
    """Map a `conv_impl` name to (conv impl, pool impl); "auto" by `auto_conv_choice`."""
    if conv_impl not in CONV_IMPLS:
        raise FedlnError(f"unknown conv_impl {conv_impl!r}; expected one of {', '.join(CONV_IMPLS)}")
    if conv_impl == "auto":
        conv_impl = auto_conv_choice()[0]
    return conv_impl, ("lax" if conv_impl == "lax" else "reshape")


def resolve_pads(padding, h: int, w: int, kh: int, kw: int, stride: int) -> tuple:
    """((top, bottom), (left, right)) zero padding for "VALID", "SAME" (XLA's rule: output
    ceil(in / stride), the odd extra pixel on the high side) or an int p (p on every side,
    like torch's `padding=p`; ResNet uses it so stride-2 convs match the reference)."""
    if isinstance(padding, str):
        if padding == "VALID":
            return (0, 0), (0, 0)
        if padding != "SAME":
            raise FedlnError(f"unknown padding {padding!r}; expected VALID, SAME or an int")

        def same(n, k):
            total = max((-(-n // stride) - 1) * stride + k - n, 0)
            return total // 2, total - total // 2
        return same(h, kh), same(w, kw)
    if isinstance(padding, bool) or not isinstance(padding, int) or padding < 0:
        raise FedlnError(f"padding must be VALID, SAME or a non-negative int, got {padding!r}")
    return (padding, padding), (padding, padding)


def extract_patches(x: jax.Array, kh: int, kw: int, padding, method: str = _PATCHES_METHOD,
                    stride: int = 1) -> jax.Array:
    """im2col: [..., H, W, C] -> [..., Ho, Wo, kh*kw*C], feature order (i, j, c).

    That order matches `kernel.reshape(kh*kw*cin, cout)` for a [kh, kw, cin, cout] kernel.
    A stride s keeps every s-th window (strided static slices: still no conv op).
    """
    if isinstance(stride, bool) or not isinstance(stride, int) or stride < 1:
        raise FedlnError(f"stride must be a positive int, got {stride!r}")
    pad_h, pad_w = resolve_pads(padding, x.shape[-3], x.shape[-2], kh, kw, stride)
    if pad_h != (0, 0) or pad_w != (0, 0):
        x = jnp.pad(x, [(0, 0)] * (x.ndim - 3) + [pad_h, pad_w, (0, 0)])
    h, w, c = x.shape[-3:]
    ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
    if h < kh or w < kw:
        raise FedlnError(f"conv input {h}x{w} is smaller than the {kh}x{kw} kernel")
    if method == "slices":
        span_h, span_w = (ho - 1) * stride + 1, (wo - 1) * stride + 1
        cols = [x[..., i:i + span_h:stride, j:j + span_w:stride, :]
                for i in range(kh) for j in range(kw)]
        return cols[0] if len(cols) == 1 else jnp.concatenate(cols, axis=-1)
    if method == "lax":
        lead = x.shape[:-3]
        x4 = x.reshape((-1, h, w, c))
        p = lax.conv_general_dilated_patches(
            x4, (kh, kw), (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
        # The op orders patch features as (c, i, j); reorder to (i, j, c).
        p = p.reshape(p.shape[:3] + (c, kh * kw)).swapaxes(-1, -2).reshape(p.shape[:3] + (kh * kw * c,))
        return p.reshape(lead + p.shape[1:])
    raise ValueError(f"unknown patches method {method!r}")


def conv_macs(x_shape: tuple, kernel_shape: tuple, padding, stride: int) -> int:
    """Multiply-adds of one conv call on [..., H, W, Cin] (every leading axis counted)."""
    kh, kw, cin, cout = kernel_shape
    pad_h, pad_w = resolve_pads(padding, x_shape[-3], x_shape[-2], kh, kw, stride)
    rows = (x_shape[-3] + sum(pad_h) - kh) // stride + 1
    cols = (x_shape[-2] + sum(pad_w) - kw) // stride + 1
    return math.prod(x_shape[:-3]) * rows * cols * kh * kw * cin * cout


def conv2d(x: jax.Array, kernel: jax.Array, padding, impl: str, stride: int = 1) -> jax.Array:
    """Bias-free 2D conv of NHWC `x` with an HWIO `kernel`; padding VALID | SAME | int."""
    kh, kw, cin, cout = kernel.shape
    if impl == AUTO_TORCH:
        impl = "torch" if conv_macs(x.shape, kernel.shape, padding, stride) >= TORCH_MIN_MACS else "patches"
    if impl == "patches":
        p = extract_patches(x, kh, kw, padding, stride=stride)
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
        pads = padding if isinstance(padding, str) else resolve_pads(padding, 0, 0, kh, kw, stride)
        y = lax.conv_general_dilated(x4, kernel, (stride, stride), pads,
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y.reshape(lead + y.shape[1:])
    if impl == "torch":
        return conv2d_torch(x, kernel, resolve_pads(padding, x.shape[-3], x.shape[-2], kh, kw, stride),
                            stride)
    raise FedlnError(f"unknown conv impl {impl!r}; expected patches, lax or torch")


class Conv(nn.Module):
    """Bias-free conv with the parameter layout of `nn.Conv(use_bias=False)`."""

    features: int
    kernel_size: Sequence[int] = (3, 3)
    padding: Any = "VALID"              # "VALID", "SAME" or an int (zeros on every side)
    impl: str = "patches"
    strides: int = 1
    weight_init: str = "torch"          # INITS (not `init`: that is Module.init)

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kh, kw = self.kernel_size
        kernel = self.param("kernel", kernel_init(self.weight_init), (kh, kw, x.shape[-1], self.features), jnp.float32)
        return conv2d(x, kernel.astype(x.dtype), self.padding, self.impl, self.strides)


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
