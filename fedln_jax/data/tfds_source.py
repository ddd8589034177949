"""CIFAR-10/100 through tensorflow_datasets, without TensorFlow at read time.

Reading uses `tfds.data_source` (random access over array_record files, records decoded to
numpy with Pillow), which works without TensorFlow.  *Preparing* a dataset (download, then
encoding the records) goes through TFDS's builders, which need TensorFlow: on a machine
without it, install it once (`pip install 'fedln_jax[tfds]' tensorflow`), run once to fill
`data_dir`, and every later run reads the prepared files TF-free.

This module is imported only when a TFDS dataset is asked for, so `import fedln_jax` and
the bundled datasets never import tensorflow_datasets.
"""
from __future__ import annotations

import contextlib
import importlib.util
import logging
import os
import shutil

import numpy as np

from fedln_jax.data.dataset import Dataset
from fedln_jax.errors import FedlnError, first_line

FILE_FORMAT = "array_record"   # the random-access format data_source reads


def default_data_dir() -> str:
    """TFDS's own default: $TFDS_DATA_DIR, else ~/tensorflow_datasets."""
    return os.environ.get("TFDS_DATA_DIR") or os.path.join(os.path.expanduser("~"), "tensorflow_datasets")


def how_to_get(name: str, root: str) -> str:
    return (f"to download it once, run with network access and TensorFlow installed "
            f"(pip install 'fedln_jax[tfds]' tensorflow), or prepare it elsewhere with "
            f"`tfds build {name} --file_format={FILE_FORMAT} --data_dir {root}` and copy "
            f"{os.path.join(root, name)} here")


def _import_tfds(name: str):
    try:
        import tensorflow_datasets as tfds
    except ImportError:
        raise FedlnError(f"dataset {name!r} needs tensorflow-datasets: "
                         f"pip install 'fedln_jax[tfds]'") from None
    return tfds


@contextlib.contextmanager
def _quiet_tfds():
    """TFDS logs warnings (e.g. about missing dataset_info.json) through absl to stderr; the
    CLI promises a single `error:` line there, so keep them down while we probe."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def tensorflow_installed() -> bool:
    """Whether TensorFlow could be imported (checked without importing it)."""
    return importlib.util.find_spec("tensorflow") is not None


def _paths_under(path: str) -> set[str]:
    found = set()
    if os.path.isdir(path):
        for root, dirs, files in os.walk(path):
            found.update(os.path.join(root, n) for n in dirs + files)
    return found


def _remove_new(root: str, root_existed: bool, before: set[str]) -> None:
    """Delete everything under `root` that was not there before (partial downloads)."""
    if not root_existed:
        shutil.rmtree(root, ignore_errors=True)
        return
    for path in sorted(_paths_under(root) - before, key=len):
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        elif os.path.lexists(path):
            os.remove(path)


def prepare(builder, name: str, root: str) -> None:
    """Download and encode `name` into `root`; on any failure leave `root` as it was."""
    root_existed = os.path.isdir(root)
    before = _paths_under(root)
    try:
        builder.download_and_prepare(file_format=FILE_FORMAT)
    except BaseException as exc:
        _remove_new(root, root_existed, before)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise FedlnError(f"dataset {name!r} is not in {root} and downloading it failed "
                         f"({first_line(exc)}); {how_to_get(name, root)}") from None


def _open_source(tfds, name: str, split: str, root: str):
    return tfds.data_source(name, split=split, data_dir=root, download=False)


def load_tfds(name: str, num_classes: int, data_dir: str = "", *, download: bool = True):
    """The official train and test splits of TFDS dataset `name` as a uint8 `Dataset`.

    Looks in `data_dir` (TFDS's default when empty).  A dataset not there is downloaded
    when `download` is true and TensorFlow is installed; otherwise FedlnError names the
    dataset, the directory and how to get the data, and nothing is left on disk.
    """
    tfds = _import_tfds(name)
    root = os.path.abspath(os.path.expanduser(data_dir)) if data_dir else default_data_dir()
    with _quiet_tfds():
        return _load(tfds, name, num_classes, root, download)


def _load(tfds, name: str, num_classes: int, root: str, download: bool):
    root_existed, before = os.path.isdir(root), _paths_under(root)
    try:
        sources = {s: _open_source(tfds, name, s, root) for s in ("train", "test")}
    except Exception as exc:  # not prepared, or prepared in a format data_source cannot read
        builder = tfds.builder(name, data_dir=root)
        if builder.is_prepared():
            raise FedlnError(f"dataset {name!r} in {root} cannot be read ({first_line(exc)}); "
                             f"it must be prepared in the {FILE_FORMAT} format: "
                             f"{how_to_get(name, root)}") from None
        if not download:
            _remove_new(root, root_existed, before)
            raise FedlnError(f"dataset {name!r} is not in {root} and download=false; "
                             f"{how_to_get(name, root)}") from None
        if not tensorflow_installed():
            _remove_new(root, root_existed, before)
            raise FedlnError(f"dataset {name!r} is not in {root}, and preparing it needs "
                             f"TensorFlow, which is not installed; {how_to_get(name, root)}") from None
        prepare(builder, name, root)
        sources = {s: _open_source(tfds, name, s, root) for s in ("train", "test")}
    x_train, y_train = _to_arrays(sources["train"])
    x_test, y_test = _to_arrays(sources["test"])
    return Dataset(name=name, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test,
                   num_classes=num_classes, pixel_scale=1.0 / 255.0)


def _to_arrays(source) -> tuple[np.ndarray, np.ndarray]:
    """Read every record once into host memory: uint8 [N, H, W, C] and int32 [N]."""
    n = len(source)
    first = source[0]
    x = np.empty((n,) + np.asarray(first["image"]).shape, np.uint8)
    y = np.empty((n,), np.int32)
    for i in range(n):
        record = first if i == 0 else source[i]
        x[i] = record["image"]
        y[i] = record["label"]
    return x, y
