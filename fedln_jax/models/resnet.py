"""ResNet-18, CIFAR style (docs/method.md#models), with the same swappable normalizers.

It follows the paper's reference implementation: 3x3 stem conv (stride 1, padding 1), no
max-pool; BasicBlocks [2, 2, 2, 2] with widths 64/128/256/512 (the first block of stages 2-4
has stride 2 and a projection shortcut that is a bare 1x1 conv with that stride, no
normalizer); then the reference's `F.avg_pool2d(out, 4)` and flatten: 4x4 average pooling,
stride 4, VALID, over the last map, flattened into the feature phi (d = 512 for 32x32 inputs,
512 * (H/32) * (W/32) for larger ones: 2048 for 64x64 TinyImageNet); linear head WITH bias,
as in the reference. A last map smaller than 4x4 (inputs under 25 pixels, e.g. 8x8 digits),
which the reference cannot take, is averaged whole on that axis. The convs are bias-free; the
head bias is the one place where the net is not positively scale-equivariant (so the
reduced-FN/LN propositions are stated for the CNN, not for this net).

Normalizers go after the activation, as in the reference: "conv -> ReLU -> norm" inside a
block and "add -> ReLU -> norm" at its end (norm_position="before" swaps each to
"norm -> ReLU"). All of these are *hidden* positions and share one primitive; the pooled
feature phi is the *feature* position. So `norm_layers` for a ResNet has exactly two
entries, "<hidden>,<feature>":

  none -> none,none    bn -> bn,none    gn -> gn<G>,none    ln -> ln,none    fn -> none,l2s

Convolutions use `fedln_jax.models.layers.Conv` (patches + matmul on CPU, strided slices for
the stride-2 convs), so a vmapped federated round stays on the matmul path.
"""

from __future__ import annotations

import functools
from typing import Sequence

import jax.numpy as jnp
from flax import linen as nn

from fedln_jax.models.layers import Conv, bias_init, kernel_init
from fedln_jax.models.normalizers import NormDef, apply_norm


def _act_norm(x, norm, *, position, train, name):
    if position == "before":
        return nn.relu(apply_norm(norm, x, spatial=True, train=train, name=name))
    return apply_norm(norm, nn.relu(x), spatial=True, train=train, name=name)


POOL = 4   # the reference's F.avg_pool2d(out, 4): 4x4 windows, stride 4


def _pooled(size: int) -> int:
    return size // POOL if size >= POOL else 1


def avg_pool_flatten(x):
    """4x4 average pooling, stride 4, VALID (trailing rows/columns dropped, as torch's
    avg_pool2d), then flatten [..., H, W, C] -> [..., (H//4) * (W//4) * C] in H, W, C order.
    An axis shorter than 4, which torch would refuse, is averaged whole (one window)."""
    h, w, c = x.shape[-3:]
    wh, ww = min(POOL, h), min(POOL, w)
    ph, pw = _pooled(h), _pooled(w)
    x = x[..., : ph * wh, : pw * ww, :].reshape(x.shape[:-3] + (ph, wh, pw, ww, c))
    return jnp.mean(x, axis=(-4, -2)).reshape(x.shape[:-5] + (ph * pw * c,))


def resnet_feature_dim(width: int, image_hw: Sequence[int]) -> int:
    """d of the pooled feature phi for [H, W] inputs: the stem keeps H x W, each of the three
    stride-2 stages takes ceil(size / 2) (3x3 conv, padding 1), then avg_pool 4 + flatten."""
    dims = []
    for size in image_hw:
        for _ in range(3):
            size = (size + 1) // 2
        dims.append(_pooled(size))
    return width * dims[0] * dims[1]


class BasicBlock(nn.Module):
    """conv3x3(stride) -> ReLU -> norm -> conv3x3 -> (+ shortcut) -> ReLU -> norm."""

    features: int
    stride: int
    norm: NormDef
    norm_position: str = "after"
    conv_impl: str = "patches"
    weight_init: str = "torch"  # models.layers.INITS (not `init`: that is Module.init)

    @nn.compact
    def __call__(self, x, train: bool = False):
        conv = functools.partial(Conv, impl=self.conv_impl, weight_init=self.weight_init)
        y = conv(self.features, (3, 3), 1, strides=self.stride, name="conv1")(x)
        y = _act_norm(y, self.norm, position=self.norm_position, train=train, name="norm1")
        y = conv(self.features, (3, 3), 1, name="conv2")(y)
        if self.stride != 1 or x.shape[-1] != self.features:
            # the reference's shortcut: a bare 1x1 conv with the block's stride, no normalizer
            x = conv(self.features, (1, 1), 0, strides=self.stride, name="proj")(x)
        return _act_norm(y + x, self.norm, position=self.norm_position, train=train, name="norm2")


class ResNet(nn.Module):
    """CIFAR-style ResNet. norms = (hidden normalizer factory, feature normalizer factory).

    Params: stem/kernel, stage{i}_block{j}/{conv1,conv2,proj}/kernel, head/{kernel,bias},
    plus normalizer variables (stem_norm, .../norm1, .../norm2, feature_norm).
    """

    num_classes: int
    norms: Sequence[NormDef]
    widths: Sequence[int] = (64, 128, 256, 512)
    blocks: Sequence[int] = (2, 2, 2, 2)
    norm_position: str = "after"
    tau: float = 1.0
    conv_impl: str = "patches"
    weight_init: str = "torch"  # models.layers.INITS; the head's bias too (torch: U(+-1/sqrt(d)))

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        hidden, feature = self.norms
        x = jnp.asarray(x, jnp.float32)
        x = Conv(self.widths[0], (3, 3), 1, self.conv_impl, weight_init=self.weight_init,
                 name="stem")(x)
        x = _act_norm(x, hidden, position=self.norm_position, train=train, name="stem_norm")
        for i, (width, count) in enumerate(zip(self.widths, self.blocks)):
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1
                x = BasicBlock(width, stride, hidden, self.norm_position, self.conv_impl,
                               self.weight_init, name=f"stage{i}_block{j}")(x, train)
        phi = avg_pool_flatten(x)   # the reference's F.avg_pool2d(out, 4) + flatten
        phi = apply_norm(feature, phi, spatial=False, train=train, name="feature_norm")
        logits = nn.Dense(self.num_classes, use_bias=True, kernel_init=kernel_init(self.weight_init),
                          bias_init=bias_init(self.weight_init, phi.shape[-1]), name="head")(phi)
        if self.tau != 1.0:
            logits = logits / self.tau
        return (logits, phi) if return_features else logits


# name -> widths. resnet18_tiny (widths 8/16/32/64) is the same graph, for fast tests.
RESNET_WIDTHS = {"resnet18": (64, 128, 256, 512), "resnet18_tiny": (8, 16, 32, 64)}
