"""The paper's datasets: CIFAR through TFDS (mock data), TinyImageNet and PACS image folders
made by the tests, and the errors for missing data and wrong layouts."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fedln_jax.config import Config
from fedln_jax.data import class_counts, load_dataset, partition
from fedln_jax.data.sources import LoadOptions
from fedln_jax.errors import FedlnError
from fedln_jax.training.train import run


@pytest.fixture(scope="module")
def tfds():
    return pytest.importorskip("tensorflow_datasets")


def tree(path):
    return sorted(os.path.relpath(os.path.join(r, n), path)
                  for r, ds, fs in os.walk(path) for n in ds + fs)


# ----------------------------------------------------------------------------- TFDS


@pytest.mark.parametrize("name, num_classes", [("cifar10", 10), ("cifar100", 100)])
def test_tfds_mock_through_partition_and_one_round(tfds, tmp_path, name, num_classes):
    with tfds.testing.mock_data(num_examples=40):
        ds = load_dataset(name, data_dir=str(tmp_path / "tfds"))
        assert ds.x_train.shape == (40, 32, 32, 3) and ds.x_train.dtype == np.uint8
        assert ds.x_test.shape == (40, 32, 32, 3) and ds.y_train.dtype == np.int32
        assert ds.num_classes == num_classes and ds.pixel_scale == pytest.approx(1 / 255)
        assert 0 <= ds.y_train.min() and ds.y_train.max() < num_classes
        # the arrays are exactly the records TFDS serves, in order
        source = tfds.data_source(name, split="train")
        np.testing.assert_array_equal(ds.x_train[3], source[3]["image"])
        assert ds.y_train[3] == source[3]["label"]
        clients = partition(ds.y_train, 4, scheme="iid", num_classes=num_classes)
        assert class_counts(ds.y_train, clients, num_classes).sum() == 40
        config = Config(dataset=name, data_dir=str(tmp_path / "tfds"), partition="iid",
                        num_clients=4, local_steps=1, batch_size=4, rounds=1, eval_every=1,
                        model="mlp", norm="fn")
        summary = run(config, str(tmp_path / "run"), quiet=True)
    assert summary["rounds_completed"] == 1 and 0.0 <= summary["final_test_accuracy"] <= 1.0
    assert json.loads((tmp_path / "run" / "config.json").read_text())["augment"] == "auto"
    assert not (tmp_path / "tfds").exists()  # mock data: nothing downloaded or written


def test_tfds_not_on_disk_offline_is_one_clear_error_and_leaves_nothing(tfds, tmp_path, monkeypatch):
    from fedln_jax.data import tfds_source
    # as on a machine without TensorFlow (never download CIFAR in a test, even where we could)
    monkeypatch.setattr(tfds_source, "tensorflow_installed", lambda: False)
    data_dir = tmp_path / "empty"
    for options, fragment in [(LoadOptions(download=False), "download=false"),
                              (LoadOptions(), "TensorFlow")]:
        with pytest.raises(FedlnError) as exc:
            load_dataset("cifar10", data_dir=str(data_dir), options=options)
        message = str(exc.value)
        assert "'cifar10'" in message and str(data_dir) in message and fragment in message
        assert "pip install" in message and "tfds build cifar10" in message
        assert "\n" not in message
        assert not data_dir.exists()


def test_failed_download_removes_its_partial_files(tmp_path, monkeypatch):
    from fedln_jax.data import tfds_source

    root = tmp_path / "tfds"
    (root / "downloads").mkdir(parents=True)
    (root / "downloads" / "keep.txt").write_text("from before")

    class Builder:
        def download_and_prepare(self, file_format):
            assert file_format == "array_record"
            (root / "downloads" / "cifar10.tar.gz.incomplete").write_text("half")
            (root / "cifar10" / "3.0.2.incomplete").mkdir(parents=True)
            raise ConnectionError("no route to host\nsecond line")

    with pytest.raises(FedlnError, match=r"downloading it failed \(ConnectionError: no route to host\)"):
        tfds_source.prepare(Builder(), "cifar10", str(root))
    assert tree(root) == ["downloads", os.path.join("downloads", "keep.txt")]


def test_cli_offline_missing_dataset_exit_2_single_line(tfds, tmp_path):
    data_dir, workdir = tmp_path / "nothing", tmp_path / "work"
    proc = subprocess.run(
        [sys.executable, "-m", "fedln_jax.cli", "run", "--workdir", str(workdir), "--quiet",
         "dataset=cifar100", f"data_dir={data_dir}", "download=false"],
        capture_output=True, text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: dataset 'cifar100'"), proc.stderr
    assert str(data_dir) in lines[0] and "pip install" in lines[0] and "Traceback" not in proc.stderr
    assert not data_dir.exists() and not workdir.exists()


def test_import_and_digits_path_never_import_tensorflow_datasets(tmp_path):
    code = ("import sys, fedln_jax\n"
            "from fedln_jax.config import Config\n"
            "fedln_jax.run(Config(dataset='digits', num_clients=2, classes_per_client=5, rounds=1,"
            " eval_every=1, local_steps=1, model='mlp'), sys.argv[1], quiet=True)\n"
            "bad = [m for m in sys.modules if m.split('.')[0] in ('tensorflow_datasets', 'tensorflow')]\n"
            "print(bad)\n")
    proc = subprocess.run([sys.executable, "-c", code, str(tmp_path / "w")], capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- folders


def write_image(path, rgb, size=(8, 8), mode="RGB"):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", size, tuple(rgb))
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path)


def make_tinyimagenet(root, wnids=("n01", "n02", "n03"), per_class=3, size=(8, 8)):
    """train/<wnid>/images/*.JPEG in a distinct flat colour per class; val/images + annotations.
    PNG saved under .JPEG names would be wrong, so train uses JPEG, val uses PNG files."""
    lines = []
    for c, wnid in enumerate(wnids):
        colour = (40 * (c + 1), 0, 255 - 40 * c)
        for i in range(per_class):
            write_image(root / "train" / wnid / "images" / f"{wnid}_{i}.JPEG", colour, size)
        write_image(root / "val" / "images" / f"val_{c}.png", colour, size)
        lines.append(f"val_{c}.png\t{wnid}\t0\t0\t4\t4")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")


def test_tinyimagenet_folder_loads_labels_sizes_and_pixels(tmp_path):
    make_tinyimagenet(tmp_path / "tiny-imagenet-200")
    ds = load_dataset("tinyimagenet", data_dir=str(tmp_path))  # parent of tiny-imagenet-200
    assert ds.num_classes == 3 and ds.image_shape == (64, 64, 3)  # resized to the default 64
    np.testing.assert_array_equal(ds.y_train, [0, 0, 0, 1, 1, 1, 2, 2, 2])
    np.testing.assert_array_equal(ds.y_test, [0, 1, 2])
    # flat colours survive JPEG up to a few levels; the class colour is recoverable
    for c in range(3):
        expected = np.array([40 * (c + 1), 0, 255 - 40 * c])
        assert np.abs(ds.x_train[3 * c].reshape(-1, 3).mean(0) - expected).max() < 4
        np.testing.assert_array_equal(ds.x_test[c, 0, 0], expected)  # PNG: exact
    small = load_dataset("tinyimagenet", data_dir=str(tmp_path / "tiny-imagenet-200"),
                         options=LoadOptions(image_size=8))
    assert small.image_shape == (8, 8, 3)


def test_tinyimagenet_grayscale_images_become_rgb(tmp_path):
    make_tinyimagenet(tmp_path, wnids=("a", "b"), per_class=1)
    write_image(tmp_path / "train" / "a" / "images" / "gray.png", (90, 90, 90), mode="L")
    ds = load_dataset("tinyimagenet", data_dir=str(tmp_path), options=LoadOptions(image_size=8))
    assert ds.x_train.shape == (3, 8, 8, 3)
    np.testing.assert_array_equal(ds.x_train[1, 0, 0], [90, 90, 90])  # a/images/gray.png sorts 2nd


@pytest.mark.parametrize("breakage, fragment", [
    (lambda r: __import__("shutil").rmtree(r / "train"), "no train/ folder"),
    (lambda r: (r / "val" / "val_annotations.txt").unlink(), "no val/val_annotations.txt"),
    (lambda r: __import__("shutil").rmtree(r / "train" / "n02" / "images"), "train/n02/images/ holds no images"),
    (lambda r: (r / "val" / "val_annotations.txt").write_text("val_0.png\tn99\n"), "class 'n99'"),
    (lambda r: (r / "val" / "images" / "val_1.png").unlink(), "val/images/val_1.png"),
])
def test_tinyimagenet_wrong_layout_says_what_was_expected(tmp_path, breakage, fragment):
    make_tinyimagenet(tmp_path)
    breakage(tmp_path)
    with pytest.raises(FedlnError) as exc:
        load_dataset("tinyimagenet", data_dir=str(tmp_path))
    assert fragment in str(exc.value) and "tiny-imagenet-200 layout" in str(exc.value)


def test_folder_dataset_without_data_dir_or_with_a_missing_one(tmp_path):
    with pytest.raises(FedlnError, match="needs data_dir"):
        load_dataset("pacs")
    with pytest.raises(FedlnError, match="is not a directory"):
        load_dataset("tinyimagenet", data_dir=str(tmp_path / "nope"))


PACS_DOMAINS = ("art_painting", "cartoon", "photo", "sketch")
PACS_CLASSES = ("dog", "horse")


def make_pacs(root, per_class=5):
    for d, domain in enumerate(PACS_DOMAINS):
        for c, cls in enumerate(PACS_CLASSES):
            for i in range(per_class):
                write_image(root / domain / cls / f"{i}.png", (50 * d, 100 * c, i), size=(12, 12))


def test_pacs_held_out_domain(tmp_path):
    make_pacs(tmp_path / "PACS")
    ds = load_dataset("pacs", data_dir=str(tmp_path), options=LoadOptions(pacs_domain="sketch"))
    assert ds.num_classes == 2 and ds.image_shape == (64, 64, 3)
    assert len(ds.y_train) == 3 * 2 * 5 and len(ds.y_test) == 2 * 5
    # the test set is exactly the sketch domain (red channel 50 * 3), train the other three
    assert set(ds.x_test[:, 0, 0, 0]) == {150}
    assert set(ds.x_train[:, 0, 0, 0]) == {0, 50, 100}
    np.testing.assert_array_equal(ds.y_test, [0] * 5 + [1] * 5)
    np.testing.assert_array_equal(ds.x_test[7, 5, 5], [150, 100, 2])  # horse/2.png


def test_pacs_pooled_stratified_split_and_bad_domain(tmp_path):
    make_pacs(tmp_path)
    ds = load_dataset("pacs", data_dir=str(tmp_path), seed=1, test_fraction=0.2,
                      options=LoadOptions(image_size=12))
    assert ds.image_shape == (12, 12, 3)
    np.testing.assert_array_equal(np.bincount(ds.y_test), [4, 4])   # 20% of 20 per class
    np.testing.assert_array_equal(np.bincount(ds.y_train), [16, 16])
    with pytest.raises(FedlnError, match="pacs_domain='clipart' is not one of .*art_painting, cartoon"):
        load_dataset("pacs", data_dir=str(tmp_path), options=LoadOptions(pacs_domain="clipart"))


def test_pacs_wrong_layouts(tmp_path):
    make_pacs(tmp_path / "a")
    (tmp_path / "a" / "photo" / "cat").mkdir()
    with pytest.raises(FedlnError, match="different class folders.*expected the PACS layout"):
        load_dataset("pacs", data_dir=str(tmp_path / "a"))
    flat = tmp_path / "flat"
    write_image(flat / "img.png", (0, 0, 0))
    with pytest.raises(FedlnError, match="no domain folders"):
        load_dataset("pacs", data_dir=str(flat))
    make_pacs(tmp_path / "b")
    (tmp_path / "b" / "cartoon" / "dog" / "0.png").write_bytes(b"not an image")
    with pytest.raises(FedlnError, match="cannot decode image .*0.png"):
        load_dataset("pacs", data_dir=str(tmp_path / "b"))


def test_folder_dataset_end_to_end_run(tmp_path):
    make_pacs(tmp_path / "pacs")
    config = Config(dataset="pacs", data_dir=str(tmp_path), pacs_domain="photo", image_size=16,
                    num_clients=2, classes_per_client=1, local_steps=1, batch_size=4, rounds=1,
                    eval_every=1, model="mlp")
    summary = run(config, str(tmp_path / "run"), quiet=True)
    assert summary["rounds_completed"] == 1


def test_config_checks_for_dataset_keys():
    with pytest.raises(FedlnError, match="image_size applies to tinyimagenet and pacs only"):
        Config(dataset="cifar10", image_size=32).validate()
    with pytest.raises(FedlnError, match="pacs_domain applies"):
        Config(dataset="digits", pacs_domain="photo").validate()
    with pytest.raises(FedlnError, match="augment='maybe'"):
        Config(augment="maybe").validate()
