"""Analytic FLOP counts from the architecture table (for the benchmark and chunk-width defaults)."""
from __future__ import annotations

from fedln_jax.errors import FedlnError
from fedln_jax.models.cnn import ARCHS, MLP, ConvNet, resolve_arch


def _conv_out(size: int, k: int, padding: str) -> int:
    return size if padding == "SAME" else size - k + 1


def forward_macs(name: str, input_shape: tuple[int, int, int], num_classes: int,
                 conv_features="", dense_features="") -> int:
    """Multiply-accumulates of one example's forward pass through the convs and dense layers
    (with the widths of the conv_features / dense_features config keys, "" = the model's)."""
    if name not in ARCHS:
        raise FedlnError(f"unknown model {name!r}; expected one of {', '.join(ARCHS)}")
    arch = resolve_arch(name, conv_features, dense_features)
    h, w, c = input_shape
    macs = 0
    if arch["cls"] is ConvNet:
        k, padding = arch["kw"]["kernel_size"], arch["kw"]["padding"]
        for features in arch["kw"]["conv_features"]:
            h, w = _conv_out(h, k, padding), _conv_out(w, k, padding)
            macs += h * w * features * k * k * c
            h, w, c = h // 2, w // 2, features          # 2x2 max-pool
        widths = arch["kw"]["dense_features"]
    elif arch["cls"] is MLP:
        widths = arch["kw"]["hidden"]
    else:
        raise FedlnError(f"no FLOP count for model {name!r}")
    d = h * w * c
    for features in tuple(widths) + (num_classes,):
        macs += d * features
        d = features
    return macs


def train_flops_per_example(name: str, input_shape: tuple[int, int, int], num_classes: int,
                            conv_features="", dense_features="") -> int:
    """Forward + backward FLOPs of one training example: 3 x forward MACs x 2."""
    return 6 * forward_macs(name, input_shape, num_classes, conv_features, dense_features)
