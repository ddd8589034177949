"""Image-folder datasets: TinyImageNet (tiny-imagenet-200 layout) and PACS (domain/class/image).

Images are decoded with Pillow to RGB uint8, resized (bilinear) to `image_size` squares when
they are not already that size, and held in host memory once.  Default size 64: TinyImageNet's
native resolution, and for PACS (227x227 originals) a size that keeps ~10k images at ~120 MB of
uint8 and lets the paper's CNN run as is (its VALID convolutions accept any input size).
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from fedln_jax.data.dataset import Dataset, from_split
from fedln_jax.errors import FedlnError

DEFAULT_IMAGE_SIZE = 64
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp")
TINY_LAYOUT = ("the tiny-imagenet-200 layout: train/<wnid>/images/*.JPEG, val/images/*.JPEG "
               "and val/val_annotations.txt (unzip http://cs231n.stanford.edu/tiny-imagenet-200.zip "
               "and set data_dir to the tiny-imagenet-200 folder or its parent)")
PACS_LAYOUT = ("the PACS layout: <domain>/<class>/<image> for each domain (art_painting, cartoon, "
               "photo, sketch), classes the same in every domain; set data_dir to the folder "
               "holding the domain folders or its parent (PACS/, pacs/ or kfold/ is looked into)")


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _subdirs(path: str) -> list[str]:
    return sorted(d for d in os.listdir(path) if os.path.isdir(os.path.join(path, d))
                  and not d.startswith("."))


def _images_in(path: str) -> list[str]:
    return sorted(os.path.join(path, f) for f in os.listdir(path) if _is_image(f))


def _decode(path: str, size: int) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.BILINEAR)
            return np.asarray(image, np.uint8)
    except (OSError, UnidentifiedImageError) as exc:
        raise FedlnError(f"cannot decode image {path}: {exc}") from None


def decode_images(paths: list[str], size: int) -> np.ndarray:
    """uint8 [N, size, size, 3]; Pillow releases the GIL while decoding, so threads help."""
    out = np.empty((len(paths), size, size, 3), np.uint8)
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for i, image in enumerate(pool.map(lambda p: _decode(p, size), paths, chunksize=64)):
            out[i] = image
    return out


def _image_size(image_size: int) -> int:
    if image_size < 0:
        raise FedlnError(f"image_size must be >= 0, got {image_size}")
    return image_size or DEFAULT_IMAGE_SIZE


def _find_root(data_dir: str, name: str, children: tuple[str, ...], layout: str) -> str:
    if not data_dir:
        raise FedlnError(f"dataset {name!r} needs data_dir=<folder>; expected {layout}")
    base = os.path.abspath(os.path.expanduser(data_dir))
    if not os.path.isdir(base):
        raise FedlnError(f"dataset {name!r}: data_dir {base} is not a directory; expected {layout}")
    for child in children:
        if os.path.isdir(os.path.join(base, child)):
            return os.path.join(base, child)
    return base


# ----------------------------------------------------------------------------- TinyImageNet


def tinyimagenet_files(root: str) -> tuple[list[str], list[str], list[str], list[str], list[str]]:
    """(class wnids, train paths, train wnids, val paths, val wnids) from the layout, or FedlnError."""
    def wrong(what: str) -> FedlnError:
        return FedlnError(f"dataset 'tinyimagenet' in {root}: {what}; expected {TINY_LAYOUT}")

    train_dir, val_dir = os.path.join(root, "train"), os.path.join(root, "val")
    if not os.path.isdir(train_dir):
        raise wrong("no train/ folder")
    wnids = _subdirs(train_dir)
    if not wnids:
        raise wrong("train/ has no class folders")
    train_paths, train_wnids = [], []
    for wnid in wnids:
        images_dir = os.path.join(train_dir, wnid, "images")
        paths = _images_in(images_dir) if os.path.isdir(images_dir) else []
        if not paths:
            raise wrong(f"train/{wnid}/images/ holds no images")
        train_paths += paths
        train_wnids += [wnid] * len(paths)
    annotations = os.path.join(val_dir, "val_annotations.txt")
    if not os.path.isfile(annotations):
        raise wrong("no val/val_annotations.txt")
    val_paths, val_wnids = [], []
    known = set(wnids)
    with open(annotations) as f:
        for line_no, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) < 2:
                raise wrong(f"val_annotations.txt line {line_no} is not '<file> <wnid> ...'")
            file_name, wnid = fields[0], fields[1]
            if wnid not in known:
                raise wrong(f"val_annotations.txt line {line_no} names class {wnid!r} absent from train/")
            path = os.path.join(val_dir, "images", file_name)
            if not os.path.isfile(path):
                raise wrong(f"val/images/{file_name} (val_annotations.txt line {line_no}) is missing")
            val_paths.append(path)
            val_wnids.append(wnid)
    if not val_paths:
        raise wrong("val_annotations.txt lists no images")
    return wnids, train_paths, train_wnids, val_paths, val_wnids


def load_tinyimagenet(data_dir: str, *, image_size: int = 0):
    """TinyImageNet: 200 classes (train folders in sorted wnid order), the official val split
    as the test set; train ordered by class then file name."""
    size = _image_size(image_size)
    root = _find_root(data_dir, "tinyimagenet", ("tiny-imagenet-200",), TINY_LAYOUT)
    wnids, train_paths, train_wnids, val_paths, val_wnids = tinyimagenet_files(root)
    label_of = {w: i for i, w in enumerate(wnids)}
    return Dataset(name="tinyimagenet",
                   x_train=decode_images(train_paths, size),
                   y_train=np.array([label_of[w] for w in train_wnids], np.int32),
                   x_test=decode_images(val_paths, size),
                   y_test=np.array([label_of[w] for w in val_wnids], np.int32),
                   num_classes=len(wnids), pixel_scale=1.0 / 255.0)


# ----------------------------------------------------------------------------- PACS


def pacs_files(root: str) -> tuple[list[str], list[str], dict[str, tuple[list[str], list[int]]]]:
    """(domains, classes, domain -> (paths, labels)) from the layout, or FedlnError."""
    def wrong(what: str) -> FedlnError:
        return FedlnError(f"dataset 'pacs' in {root}: {what}; expected {PACS_LAYOUT}")

    domains = _subdirs(root)
    if not domains:
        raise wrong("no domain folders")
    class_sets = {d: _subdirs(os.path.join(root, d)) for d in domains}
    for d, classes in class_sets.items():
        if not classes:
            raise wrong(f"domain folder {d}/ has no class folders")
    classes = class_sets[domains[0]]
    for d in domains[1:]:
        if class_sets[d] != classes:
            raise wrong(f"domains {domains[0]}/ and {d}/ have different class folders "
                        f"({', '.join(classes)} vs {', '.join(class_sets[d])})")
    files = {}
    for d in domains:
        paths, labels = [], []
        for label, c in enumerate(classes):
            found = _images_in(os.path.join(root, d, c))
            if not found:
                raise wrong(f"{d}/{c}/ holds no images")
            paths += found
            labels += [label] * len(found)
        files[d] = (paths, labels)
    return domains, classes, files


def load_pacs(data_dir: str, *, image_size: int = 0, test_domain: str = "", seed: int = 0,
              test_fraction: float = 0.2):
    """PACS: with `test_domain` set, train on the other domains and test on that one;
    with it empty, a stratified (by class) split of all domains' images, fixed by `seed`."""
    size = _image_size(image_size)
    root = _find_root(data_dir, "pacs", ("PACS", "pacs", "kfold", os.path.join("PACS", "kfold")),
                      PACS_LAYOUT)
    domains, classes, files = pacs_files(root)
    if test_domain and test_domain not in domains:
        raise FedlnError(f"pacs_domain={test_domain!r} is not one of the domains in {root}: "
                         f"{', '.join(domains)}")
    if not test_domain:
        paths = [p for d in domains for p in files[d][0]]
        labels = np.array([y for d in domains for y in files[d][1]], np.int32)
        return from_split("pacs", decode_images(paths, size), labels, len(classes), 1.0 / 255.0,
                          seed, test_fraction)
    train_domains = [d for d in domains if d != test_domain]
    if not train_domains:
        raise FedlnError(f"pacs_domain={test_domain!r} leaves no domain to train on in {root}")
    train_paths = [p for d in train_domains for p in files[d][0]]
    train_labels = [y for d in train_domains for y in files[d][1]]
    return Dataset(name="pacs",
                   x_train=decode_images(train_paths, size),
                   y_train=np.array(train_labels, np.int32),
                   x_test=decode_images(files[test_domain][0], size),
                   y_test=np.array(files[test_domain][1], np.int32),
                   num_classes=len(classes), pixel_scale=1.0 / 255.0)
