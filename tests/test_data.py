import time

import numpy as np
import pytest

from fedln_jax.data import (Dataset, class_counts, client_test_weights, dataset_names, load_dataset,
                            partition)
from fedln_jax.errors import FedlnError


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", seed=0)


@pytest.fixture(scope="module")
def synth():
    return load_dataset("synthetic", seed=0)


def _check_basic(ds: Dataset, n_total: int, max_value: int):
    assert ds.x_train.dtype == np.uint8 and ds.x_test.dtype == np.uint8
    assert ds.y_train.dtype == np.int32 and ds.y_test.dtype == np.int32
    assert ds.image_shape == (8, 8, 1)
    assert ds.x_train.shape[1:] == ds.x_test.shape[1:] == (8, 8, 1)
    assert len(ds.x_train) == len(ds.y_train) and len(ds.x_test) == len(ds.y_test)
    assert len(ds.y_train) + len(ds.y_test) == n_total
    assert ds.num_classes == 10
    assert int(ds.x_train.max()) <= max_value and int(ds.x_test.max()) <= max_value
    scaled = ds.x_train.astype(np.float32) * ds.pixel_scale
    assert scaled.min() >= 0.0 and scaled.max() <= 1.0


# ----------------------------------------------------------------------------- sources


def test_digits_shapes_and_split(digits):
    _check_basic(digits, 1797, 16)
    assert digits.pixel_scale == pytest.approx(1 / 16)
    assert int(digits.x_train.max()) == 16
    # stratified: each class contributes ~20% to test
    tr = np.bincount(digits.y_train, minlength=10)
    te = np.bincount(digits.y_test, minlength=10)
    np.testing.assert_array_equal(te, np.rint(0.2 * (tr + te)).astype(int))
    assert 350 <= len(digits.y_test) <= 370
    # train order is shuffled (not grouped by class)
    assert np.any(np.diff(digits.y_train) < 0)


def test_digits_deterministic_by_seed(digits):
    again = load_dataset("digits", seed=0)
    np.testing.assert_array_equal(again.x_train, digits.x_train)
    np.testing.assert_array_equal(again.y_train, digits.y_train)
    np.testing.assert_array_equal(again.y_test, digits.y_test)
    other = load_dataset("digits", seed=1)
    assert not np.array_equal(other.x_test, digits.x_test)
    assert not np.array_equal(other.y_train, digits.y_train)


def test_digits_test_fraction():
    ds = load_dataset("digits", test_fraction=0.5)
    assert abs(len(ds.y_test) - 1797 / 2) < 10


def test_synthetic_shapes_and_determinism(synth):
    _check_basic(synth, 500, 255)
    assert synth.pixel_scale == pytest.approx(1 / 255)
    np.testing.assert_array_equal(np.bincount(synth.y_train), [40] * 10)
    np.testing.assert_array_equal(np.bincount(synth.y_test), [10] * 10)
    again = load_dataset("synthetic", seed=0)
    np.testing.assert_array_equal(again.x_train, synth.x_train)
    np.testing.assert_array_equal(again.y_train, synth.y_train)
    other = load_dataset("synthetic", seed=1)
    assert not np.array_equal(other.x_train, synth.x_train)


def test_synthetic_is_learnable(synth):
    # nearest class mean on the train set classifies the test set well
    x_tr = synth.x_train.reshape(len(synth.x_train), -1).astype(np.float32)
    x_te = synth.x_test.reshape(len(synth.x_test), -1).astype(np.float32)
    means = np.stack([x_tr[synth.y_train == c].mean(0) for c in range(10)])
    pred = np.argmin(((x_te[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == synth.y_test).mean() > 0.9


def test_unknown_and_paper_datasets():
    with pytest.raises(FedlnError, match="known datasets: .*digits.*synthetic"):
        load_dataset("mnist")
    for name in ("cifar10", "cifar100", "tinyimagenet", "pacs"):
        assert name in dataset_names()  # loaders tested in test_paper_datasets.py
    for bad in (0.0, 1.0, -0.1, "x"):   # a library call: the user's value is checked in Config
        with pytest.raises(ValueError):
            load_dataset("digits", test_fraction=bad)


# ----------------------------------------------------------------------------- n_class


def _assert_contiguous_chunks(labels, parts, num_classes):
    for c in range(num_classes):
        order = np.flatnonzero(labels == c)
        pos = {int(i): p for p, i in enumerate(order)}
        for p in parts:
            mine = sorted(pos[int(i)] for i in p if labels[i] == c)
            if mine:
                assert mine == list(range(mine[0], mine[-1] + 1))


def test_n_class_one_class_ten_clients(synth):
    y = synth.y_train
    parts = partition(y, 10, scheme="n_class", num_classes=10)
    assert all(p.dtype == np.int64 for p in parts)
    allidx = np.concatenate(parts)
    np.testing.assert_array_equal(np.sort(allidx), np.arange(len(y)))
    for k, p in enumerate(parts):
        assert set(y[p].tolist()) == {k}
        assert len(p) == 40


def test_n_class_twenty_clients_split_each_class_in_two(synth):
    y = synth.y_train
    parts = partition(y, 20, scheme="n_class", num_classes=10, classes_per_client=1)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(y)))
    for k, p in enumerate(parts):
        assert set(y[p].tolist()) == {k % 10}
        assert len(p) == 20
    # client k gets the first half of class k, client k+10 the second half
    for c in range(10):
        order = np.flatnonzero(y == c)
        np.testing.assert_array_equal(parts[c], order[:20])
        np.testing.assert_array_equal(parts[c + 10], order[20:])
    _assert_contiguous_chunks(y, parts, 10)


def test_n_class_two_classes(digits):
    y = digits.y_train
    parts = partition(y, 10, scheme="n_class", num_classes=10, classes_per_client=2)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(y)))
    for k, p in enumerate(parts):
        assert set(y[p].tolist()) == {(2 * k) % 10, (2 * k + 1) % 10}
    counts = class_counts(y, parts, 10)
    # each class is held by two clients, split near-equally
    for c in range(10):
        held = counts[:, c][counts[:, c] > 0]
        assert len(held) == 2 and abs(int(held[0]) - int(held[1])) <= 1
    _assert_contiguous_chunks(y, parts, 10)


def test_n_class_uncovered_classes_unused(synth):
    y = synth.y_train
    parts = partition(y, 3, scheme="n_class", num_classes=10, classes_per_client=2)
    used = np.concatenate(parts)
    assert len(np.unique(used)) == len(used)
    assert set(y[used].tolist()) == set(range(6))
    np.testing.assert_array_equal(np.sort(used), np.flatnonzero(y < 6))


def test_n_class_errors():
    y = np.repeat(np.arange(3), 2)  # 2 examples per class
    with pytest.raises(FedlnError, match="classes_per_client"):
        partition(y, 2, scheme="n_class", num_classes=3, classes_per_client=4)
    with pytest.raises(FedlnError, match="class 0 has 2 examples"):
        partition(y, 9, scheme="n_class", num_classes=3)  # 3 holders per class


# ----------------------------------------------------------------------------- iid


def test_iid_sizes_and_cover(digits):
    y = digits.y_train
    parts = partition(y, 7, scheme="iid", num_classes=10, seed=3)
    sizes = [len(p) for p in parts]
    assert max(sizes) - min(sizes) <= 1 and sum(sizes) == len(y)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(y)))
    again = partition(y, 7, scheme="iid", num_classes=10, seed=3)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    other = partition(y, 7, scheme="iid", num_classes=10, seed=4)
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))


# ----------------------------------------------------------------------------- dirichlet


def test_dirichlet_deterministic_and_complete(digits):
    y = digits.y_train
    kw = dict(scheme="dirichlet", num_classes=10, dirichlet_beta=0.1, seed=5)
    parts = partition(y, 10, **kw)
    again = partition(y, 10, **kw)
    assert all(np.array_equal(a, b) for a, b in zip(parts, again))
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(y)))
    assert sum(len(p) for p in parts) == len(y)
    other = partition(y, 10, **{**kw, "seed": 6})
    assert not all(np.array_equal(a, b) for a, b in zip(parts, other))
    # beta 0.1 is skewed: most clients are dominated by few classes
    w = client_test_weights(class_counts(y, parts, 10))
    assert np.median(w.max(axis=1)) > 0.4


def test_dirichlet_min_examples_honored(synth):
    y = synth.y_train
    parts = partition(y, 10, scheme="dirichlet", num_classes=10, dirichlet_beta=0.5,
                      seed=0, min_examples=20)
    assert min(len(p) for p in parts) >= 20
    assert sum(len(p) for p in parts) == len(y)


def test_dirichlet_impossible_raises_quickly(synth):
    y = synth.y_train
    t0 = time.perf_counter()
    with pytest.raises(FedlnError, match="200 clients.*beta=0.01.*min_examples=5"):
        partition(y, 200, scheme="dirichlet", num_classes=10, dirichlet_beta=0.01,
                  min_examples=5)
    # feasible in total count but (practically) never drawn: exhausts the redraws
    with pytest.raises(FedlnError, match="after 100 redraws.*larger beta or fewer clients"):
        partition(y, 50, scheme="dirichlet", num_classes=10, dirichlet_beta=0.01,
                  min_examples=5)
    assert time.perf_counter() - t0 < 5


# ----------------------------------------------------------------------------- weights


def test_class_counts_and_weights_toy():
    labels = np.array([0, 0, 1, 2, 2, 2, 1, 0])
    clients = [np.array([0, 1, 2]), np.array([3, 4]), np.array([5, 6, 7])]
    counts = class_counts(labels, clients, 3)
    assert counts.dtype == np.int64
    np.testing.assert_array_equal(counts, [[2, 1, 0], [0, 0, 2], [1, 1, 1]])
    w = client_test_weights(counts)
    assert w.dtype == np.float32
    np.testing.assert_allclose(w, [[2 / 3, 1 / 3, 0], [0, 0, 1], [1 / 3, 1 / 3, 1 / 3]], rtol=1e-6)
    recall = np.array([0.9, 0.6, 0.3], np.float32)
    np.testing.assert_allclose(w @ recall, [0.8, 0.3, 0.6], rtol=1e-6)


def test_weights_one_class_all_covered_is_plain_accuracy(synth):
    y = synth.y_train
    w = client_test_weights(class_counts(y, partition(y, 10, scheme="n_class", num_classes=10), 10))
    np.testing.assert_array_equal(w, np.eye(10, dtype=np.float32))


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "args, kwargs",
    [
        ((10,), dict(scheme="nope", num_classes=3)),
        ((0,), dict(scheme="iid", num_classes=3)),
        ((2.5,), dict(scheme="iid", num_classes=3)),
        ((2,), dict(scheme="dirichlet", num_classes=3, min_examples=-1)),
        ((2,), dict(scheme="n_class", num_classes=3, classes_per_client=0)),
        ((2,), dict(scheme="iid", num_classes=2)),  # label 2 out of range
        ((100,), dict(scheme="iid", num_classes=3)),  # more clients than examples
    ],
)
def test_partition_bad_inputs(args, kwargs):
    labels = np.array([0, 1, 2, 0, 1, 2])
    with pytest.raises(FedlnError):
        partition(labels, *args, **kwargs)


@pytest.mark.parametrize("beta", [0.0, -1.0])
def test_partition_bad_beta_is_a_programmer_error(beta):
    """dirichlet_beta is user input checked once, in Config.validate; below it a bad value is a
    programmer error."""
    with pytest.raises(ValueError):
        partition(np.array([0, 1, 2, 0, 1, 2]), 2, scheme="dirichlet", num_classes=3,
                  dirichlet_beta=beta)


def test_bad_labels_and_counts():
    with pytest.raises(FedlnError):
        partition(np.zeros((2, 2), int), 1, scheme="iid", num_classes=2)
    with pytest.raises(FedlnError):
        partition(np.array([0.5, 1.0]), 1, scheme="iid", num_classes=2)
    with pytest.raises(FedlnError):
        class_counts(np.array([0, 1]), [np.array([5])], 2)
    with pytest.raises(FedlnError, match="client 1 has no training examples"):
        client_test_weights(np.array([[1, 0], [0, 0]]))
    with pytest.raises(FedlnError):
        client_test_weights(np.array([1, 2]))


def test_dataset_records_match_the_bundled_data(digits, synth):
    from fedln_jax.data.augment import AUGMENTATIONS
    from fedln_jax.data.sources import DATASETS
    from fedln_jax.models import MODEL_NAMES

    for ds in (digits, synth):
        info = DATASETS[ds.name]
        assert (info.num_classes, info.image_shape) == (ds.num_classes, ds.image_shape)
        assert not info.official_test_split   # held out: about test_fraction=0.2 of each class
        assert abs(len(ds.y_test) / (len(ds.y_train) + len(ds.y_test)) - 0.2) < 0.01
    for info in DATASETS.values():
        assert info.default_model in MODEL_NAMES and info.augmentation in AUGMENTATIONS


def test_a_dataset_registered_in_one_entry_loads_validates_and_is_checked(monkeypatch):
    import dataclasses

    from fedln_jax.config import Config
    from fedln_jax.data.sources import DATASETS, DatasetInfo

    def load_tiny(data_dir, seed, test_fraction, options):
        x, y = np.zeros((6, 4, 4, 1), np.uint8), np.arange(6, dtype=np.int32) % 3
        return Dataset("tiny", x, y, x, y, num_classes=3, pixel_scale=1.0 / 255.0)

    info = DatasetInfo(load_tiny, "mlp", "none", False, 3, (4, 4, 1))
    monkeypatch.setitem(DATASETS, "tiny", info)
    assert load_dataset("tiny").num_classes == 3
    config = Config(dataset="tiny").validate()
    assert (config.resolved_model, config.resolved_augment) == ("mlp", "none")
    monkeypatch.setitem(DATASETS, "tiny", dataclasses.replace(info, num_classes=4))
    with pytest.raises(FedlnError, match="3 classes, expected 4"):
        load_dataset("tiny")
    monkeypatch.setitem(DATASETS, "tiny", dataclasses.replace(info, image_shape=(8, 8, 1)))
    with pytest.raises(FedlnError, match=r"images \(4, 4, 1\), expected \(8, 8, 1\)"):
        load_dataset("tiny")
