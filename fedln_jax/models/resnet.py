"""ResNet-18, CIFAR style (docs/method.md#models), with the same swappable normalizers.

3x3 stem conv (stride 1, padding 1), no max-pool; BasicBlocks [2, 2, 2, 2] with widths
64/128/256/512 (the first block of stages 2-4 has stride 2 and a 1x1 projection shortcut);
global average pool -> the feature phi (d = 512); linear head WITH bias, as in the reference.
The convs are bias-free; the head bias is the one place where the net is not positively
scale-equivariant (so the reduced-FN/LN propositions are stated for the CNN, not for this net).

Normalizers go after the activation, as in the reference: "conv -> ReLU -> norm" inside a
block and "add -> ReLU -> norm" at its end (norm_position="before" swaps each to
"norm -> ReLU"). The projection shortcut is "1x1 conv -> norm" (no activation there). All of
these are *hidden* positions and share one primitive; the pooled feature phi is the *feature*
position. So `norm_layers` for a ResNet has exactly two entries, "<hidden>,<feature>":

  none -> none,none    bn -> bn,none    gn -> gn<G>,none    ln -> ln,none    fn -> none,l2s

Convolutions use `fedln_jax.models.layers.Conv` (patches + matmul on CPU, strided slices for
the stride-2 convs), so a vmapped federated round stays on the matmul path.
"""

from __future__ import annotations

from typing import Sequence

import jax.numpy as jnp
from flax import linen as nn

from fedln_jax.models.layers import Conv
from fedln_jax.models.normalizers import NormDef, apply_norm


def _act_norm(x, norm, *, position, train, name):
    if position == "before":
        return nn.relu(apply_norm(norm, x, spatial=True, train=train, name=name))
    return apply_norm(norm, nn.relu(x), spatial=True, train=train, name=name)


class BasicBlock(nn.Module):
    """conv3x3(stride) -> ReLU -> norm -> conv3x3 -> (+ shortcut) -> ReLU -> norm."""

    features: int
    stride: int
    norm: NormDef
    norm_position: str = "after"
    conv_impl: str = "patches"

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = Conv(self.features, (3, 3), 1, self.conv_impl, strides=self.stride, name="conv1")(x)
        y = _act_norm(y, self.norm, position=self.norm_position, train=train, name="norm1")
        y = Conv(self.features, (3, 3), 1, self.conv_impl, name="conv2")(y)
        if self.stride != 1 or x.shape[-1] != self.features:
            x = Conv(self.features, (1, 1), 0, self.conv_impl, strides=self.stride, name="proj")(x)
            x = apply_norm(self.norm, x, spatial=True, train=train, name="proj_norm")
        return _act_norm(y + x, self.norm, position=self.norm_position, train=train, name="norm2")


class ResNet(nn.Module):
    """CIFAR-style ResNet. norms = (hidden normalizer factory, feature normalizer factory).

    Params: stem/kernel, stage{i}_block{j}/{conv1,conv2,proj}/kernel, head/{kernel,bias},
    plus normalizer variables (stem_norm, .../norm1, .../norm2, .../proj_norm, feature_norm).
    """

    num_classes: int
    norms: Sequence[NormDef]
    widths: Sequence[int] = (64, 128, 256, 512)
    blocks: Sequence[int] = (2, 2, 2, 2)
    norm_position: str = "after"
    tau: float = 1.0
    conv_impl: str = "patches"

    @nn.compact
    def __call__(self, x, train: bool = False, return_features: bool = False):
        hidden, feature = self.norms
        x = jnp.asarray(x, jnp.float32)
        x = Conv(self.widths[0], (3, 3), 1, self.conv_impl, name="stem")(x)
        x = _act_norm(x, hidden, position=self.norm_position, train=train, name="stem_norm")
        for i, (width, count) in enumerate(zip(self.widths, self.blocks)):
            for j in range(count):
                stride = 2 if i > 0 and j == 0 else 1
                x = BasicBlock(width, stride, hidden, self.norm_position, self.conv_impl,
                               name=f"stage{i}_block{j}")(x, train)
        phi = jnp.mean(x, axis=(-3, -2))  # global average pool
        phi = apply_norm(feature, phi, spatial=False, train=train, name="feature_norm")
        logits = nn.Dense(self.num_classes, use_bias=True, name="head")(phi)
        if self.tau != 1.0:
            logits = logits / self.tau
        return (logits, phi) if return_features else logits


# name -> widths. resnet18_tiny (widths 8/16/32/64) is the same graph, for fast tests.
RESNET_WIDTHS = {"resnet18": (64, 128, 256, 512), "resnet18_tiny": (8, 16, 32, 64)}
