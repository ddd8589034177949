"""Dataset sources: every dataset is returned as uint8 images plus int32 labels.

`load_dataset(name, ...)` dispatches through `_LOADERS`, a dict from dataset name to a
loader function `loader(data_dir, seed, test_fraction, options) -> Dataset`.  Bundled
datasets (`digits`, `synthetic`) need no download; `cifar10` and `cifar100` come through
tensorflow_datasets (`fedln_jax.data.tfds_source`, which imports it only when asked for);
`tinyimagenet` and `pacs` are image folders decoded with Pillow (`fedln_jax.data.folders`).
Loaders ignore `test_fraction` when the dataset has an official test split.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from fedln_jax.data.dataset import Dataset, check_test_fraction, from_split
from fedln_jax.data.folders import load_pacs, load_tinyimagenet
from fedln_jax.data.tfds_source import load_tfds
from fedln_jax.errors import FedlnError


@dataclasses.dataclass(frozen=True)
class LoadOptions:
    """Per-dataset options (config keys); loaders ignore the ones that do not concern them.

    download: fetch a TFDS dataset that is not in data_dir yet (needs network and TensorFlow).
    image_size: side in pixels of folder datasets (0 = their default, 64).
    pacs_domain: PACS domain held out as the test set ("" = stratified split of all domains).
    """

    download: bool = True
    image_size: int = 0
    pacs_domain: str = ""


Loader = Callable[[str, int, float, LoadOptions], Dataset]


# ---------------------------------------------------------------------------------------
# Loaders


def _load_digits(data_dir: str, seed: int, test_fraction: float, options: LoadOptions) -> Dataset:
    """sklearn's bundled 8x8 digits (1797 images, values 0..16). `data_dir` is unused."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.rint(np.asarray(bunch.images)).astype(np.uint8)[..., None]  # [N, 8, 8, 1]
    labels = np.asarray(bunch.target).astype(np.int32)
    return from_split("digits", images, labels, 10, 1.0 / 16.0, seed, test_fraction)


SYNTHETIC_CLASSES = 10
SYNTHETIC_PER_CLASS = 50  # with test_fraction 0.2: 40 train + 10 test per class


def _load_synthetic(data_dir: str, seed: int, test_fraction: float, options: LoadOptions) -> Dataset:
    """Tiny learnable dataset for tests, fully determined by `seed`.

    Each of the 10 classes has a random binary 8x8 prototype (about half the pixels on);
    an example is its prototype scaled to intensity 180 on a background of 40, plus
    Gaussian noise (std 30), clipped to 0..255.  `data_dir` is unused.
    """
    rng = np.random.default_rng(seed)
    c, per = SYNTHETIC_CLASSES, SYNTHETIC_PER_CLASS
    prototypes = rng.random((c, 8, 8)) < 0.5
    labels = np.repeat(np.arange(c, dtype=np.int32), per)
    base = np.where(prototypes[labels], 180.0, 40.0)
    noisy = base + rng.normal(0.0, 30.0, size=base.shape)
    images = np.clip(np.rint(noisy), 0, 255).astype(np.uint8)[..., None]
    return from_split("synthetic", images, labels, c, 1.0 / 255.0, seed, test_fraction)


def _load_cifar10(data_dir: str, seed: int, test_fraction: float, options: LoadOptions) -> Dataset:
    return load_tfds("cifar10", 10, data_dir, download=options.download)


def _load_cifar100(data_dir: str, seed: int, test_fraction: float, options: LoadOptions) -> Dataset:
    return load_tfds("cifar100", 100, data_dir, download=options.download)


def _load_tinyimagenet(data_dir: str, seed: int, test_fraction: float, options: LoadOptions) -> Dataset:
    return load_tinyimagenet(data_dir, image_size=options.image_size)


def _load_pacs(data_dir: str, seed: int, test_fraction: float, options: LoadOptions) -> Dataset:
    return load_pacs(data_dir, image_size=options.image_size, test_domain=options.pacs_domain,
                     seed=seed, test_fraction=test_fraction)


# name -> loader(data_dir, seed, test_fraction, options) -> Dataset.
_LOADERS: dict[str, Loader] = {
    "digits": _load_digits,
    "synthetic": _load_synthetic,
    "cifar10": _load_cifar10,
    "cifar100": _load_cifar100,
    "tinyimagenet": _load_tinyimagenet,
    "pacs": _load_pacs,
}


def dataset_names() -> tuple[str, ...]:
    """All dataset names `load_dataset` knows."""
    return tuple(_LOADERS)


def _validate(ds: Dataset) -> Dataset:
    """Check a loader's output against the Dataset contract (catches loader bugs early)."""
    for split in ("train", "test"):
        x, y = getattr(ds, f"x_{split}"), getattr(ds, f"y_{split}")
        if x.dtype != np.uint8 or x.ndim != 4:
            raise FedlnError(f"dataset {ds.name!r}: x_{split} must be uint8 [N,H,W,C], got {x.dtype} {x.shape}")
        if y.dtype != np.int32 or y.shape != (x.shape[0],):
            raise FedlnError(f"dataset {ds.name!r}: y_{split} must be int32 [{x.shape[0]}], got {y.dtype} {y.shape}")
        if y.size and (y.min() < 0 or y.max() >= ds.num_classes):
            raise FedlnError(f"dataset {ds.name!r}: y_{split} has labels outside [0, {ds.num_classes})")
    if ds.x_train.shape[1:] != ds.x_test.shape[1:]:
        raise FedlnError(f"dataset {ds.name!r}: train and test image shapes differ")
    return ds


def load_dataset(name: str, *, data_dir: str = "", seed: int = 0, test_fraction: float = 0.2,
                 options: LoadOptions | None = None) -> Dataset:
    """Load dataset `name`.

    `seed` fixes the train/test split and the train order for datasets without an official
    test split (`digits`, `synthetic`, `pacs` without a held-out domain); there,
    `test_fraction` of each class goes to test.  `options` carries the per-dataset keys.
    """
    key = str(name).strip().lower()
    loader = _LOADERS.get(key)
    if loader is None:
        raise FedlnError(f"unknown dataset {name!r}; known datasets: {', '.join(_LOADERS)}")
    check_test_fraction(test_fraction)
    options = LoadOptions() if options is None else options
    return _validate(loader(data_dir, int(seed), float(test_fraction), options))
