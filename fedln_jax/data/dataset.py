"""The in-memory dataset every source returns, and the stratified train/test split that
sources without an official test split share (data/sources.py, data/folders.py)."""

from __future__ import annotations

import dataclasses

import numpy as np



@dataclasses.dataclass(frozen=True)
class Dataset:
    """An image classification dataset held in memory.

    Images are uint8 `[N, H, W, C]`; labels are int32 `[N]` in `[0, num_classes)`.
    Pixels in [0, 1] are obtained as `x.astype(np.float32) * pixel_scale`.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    num_classes: int
    pixel_scale: float

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(d) for d in self.x_train.shape[1:])


def check_test_fraction(test_fraction: float) -> float:
    # A programmer-error guard: the user's test_fraction is checked once, in Config.validate.
    if isinstance(test_fraction, bool) or not isinstance(test_fraction, (int, float)) \
            or not 0 < test_fraction < 1:
        raise ValueError(f"test_fraction must be a number in (0, 1), got {test_fraction!r}")
    return float(test_fraction)


def stratified_split(labels: np.ndarray, *, seed: int, test_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (train, test), stratified by class and fixed by `seed`.

    For each class (in increasing label order) its indices are permuted with a numpy
    Generator seeded by `seed`, and `round(test_fraction * n_c)` of them go to test, clamped
    so that a class with at least 2 examples keeps at least one example on each side.
    The train indices are then shuffled (same Generator); the test indices are sorted.
    """
    tf = check_test_fraction(test_fraction)
    labels = np.asarray(labels)
    rng = np.random.default_rng(seed)
    train_parts, test_parts = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n = idx.size
        n_test = int(round(tf * n))
        if n >= 2:
            n_test = min(max(n_test, 1), n - 1)
        else:
            n_test = 0
        test_parts.append(idx[:n_test])
        train_parts.append(idx[n_test:])
    train = rng.permutation(np.concatenate(train_parts)).astype(np.int64)
    test = np.sort(np.concatenate(test_parts)).astype(np.int64)
    return train, test


def from_split(name: str, x: np.ndarray, y: np.ndarray, num_classes: int, pixel_scale: float,
                seed: int, test_fraction: float) -> Dataset:
    train, test = stratified_split(y, seed=seed, test_fraction=test_fraction)
    return Dataset(
        name=name,
        x_train=np.ascontiguousarray(x[train]),
        y_train=y[train].astype(np.int32),
        x_test=np.ascontiguousarray(x[test]),
        y_test=y[test].astype(np.int32),
        num_classes=num_classes,
        pixel_scale=pixel_scale,
    )
