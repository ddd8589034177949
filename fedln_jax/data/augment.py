"""On-device augmentation of a client's round of batches, inside the jitted round.

Pure jax.numpy on float images in [0, 1] (no mean/std normalization, as the paper), vmappable
over clients.  Randomness: the client's round key (itself from (seed, round, client)) is
folded with the step index, then split over the batch, so every (seed, round, client, step,
example) has its own crop and the same tuple always gets the same crop.

Modes:
  none          identity.
  crop_flip     zero-pad by H // 8 pixels on each side (4 at 32x32, 8 at 64x64), take a random
                HxW crop, flip horizontally with probability 1/2 (CIFAR; TinyImageNet).
  resized_crop  a random box of area fraction U(0.08, 1) and aspect ratio log-U(3/4, 4/3)
                (clipped to the image), resized back to HxW by bilinear interpolation, then a
                random horizontal flip (PACS).
"""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from fedln_jax.data.sources import DATASETS

RESIZED_CROP_SCALE = (0.08, 1.0)
RESIZED_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)


def resolve_augmentation(setting: str, dataset: str) -> str:
    """The mode a config's `augment` setting means for `dataset`.

    auto: the dataset's paper augmentation (its DATASETS record; none for the bundled
    digits/synthetic); true: the same, but crop_flip for datasets whose default is none;
    false: none; a mode name: that mode.
    """
    default = DATASETS[dataset].augmentation
    if setting == "auto":
        return default
    if setting == "true":
        return default if default != "none" else "crop_flip"
    if setting == "false":
        return "none"
    return setting


def crop_padding(height: int) -> int:
    return max(1, height // 8)


def random_crop_flip(key: jax.Array, x_HWC: jax.Array) -> jax.Array:
    """Pad by H // 8 with zeros, crop HxW at a random offset, flip with probability 1/2."""
    h, w, c = x_HWC.shape
    pad = crop_padding(h)
    k_y, k_x, k_flip = jax.random.split(key, 3)
    padded = jnp.pad(x_HWC, ((pad, pad), (pad, pad), (0, 0)))
    dy = jax.random.randint(k_y, (), 0, 2 * pad + 1)
    dx = jax.random.randint(k_x, (), 0, 2 * pad + 1)
    crop = jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, c))
    return jnp.where(jax.random.bernoulli(k_flip), crop[:, ::-1], crop)


def interpolation_matrix(start: jax.Array, length: jax.Array, n_out: int, n_in: int) -> jax.Array:
    """Bilinear resampling weights [n_out, n_in] of the interval [start, start + length).

    Output pixel i samples the source coordinate start + (i + 1/2) length / n_out - 1/2
    (pixel centres), clamped to [0, n_in - 1]; its weights are the triangle kernel
    max(0, 1 - |src - j|), which sum to one.
    """
    src = start + (jnp.arange(n_out) + 0.5) * length / n_out - 0.5
    src = jnp.clip(src, 0.0, n_in - 1.0)
    return jnp.maximum(0.0, 1.0 - jnp.abs(src[:, None] - jnp.arange(n_in)[None, :]))


def random_resized_crop(key: jax.Array, x_HWC: jax.Array) -> jax.Array:
    """A random box (area U(0.08,1) of the image, ratio log-U(3/4,4/3)) resized to HxW, then a
    random horizontal flip. Resizing is two small matmuls, so it stays cheap under vmap."""
    h, w, _ = x_HWC.shape
    k_area, k_ratio, k_y, k_x, k_flip = jax.random.split(key, 5)
    area = jax.random.uniform(k_area, (), minval=RESIZED_CROP_SCALE[0],
                              maxval=RESIZED_CROP_SCALE[1]) * h * w
    ratio = jnp.exp(jax.random.uniform(k_ratio, (), minval=math.log(RESIZED_CROP_RATIO[0]),
                                       maxval=math.log(RESIZED_CROP_RATIO[1])))
    box_w = jnp.minimum(jnp.sqrt(area * ratio), w)
    box_h = jnp.minimum(jnp.sqrt(area / ratio), h)
    y0 = jax.random.uniform(k_y, ()) * (h - box_h)
    x0 = jax.random.uniform(k_x, ()) * (w - box_w)
    rows_HH = interpolation_matrix(y0, box_h, h, h)
    cols_WW = interpolation_matrix(x0, box_w, w, w)
    out = jnp.einsum("ih,hwc,jw->ijc", rows_HH, x_HWC, cols_WW)
    return jnp.where(jax.random.bernoulli(k_flip), out[:, ::-1], out)


# The augmentation registry: mode -> the augmentation of one example (key, x_HWC) -> x_HWC.
_MODES = {"crop_flip": random_crop_flip, "resized_crop": random_resized_crop}
AUGMENTATIONS = ("none",) + tuple(_MODES)
AUGMENT_SETTINGS = ("auto", "true", "false") + AUGMENTATIONS


def augment_round(key: jax.Array, x_SB: jax.Array, mode: str) -> jax.Array:
    """Augment one client's round of images x_SB [S, B, H, W, C] (float, in [0, 1]).

    `key` is the client's round key; step s uses fold_in(key, s), split over the B examples.
    """
    if mode == "none":
        return x_SB
    one = _MODES[mode]
    steps, batch = x_SB.shape[:2]
    step_keys_S = jax.vmap(lambda s: jax.random.fold_in(key, s))(jnp.arange(steps))
    keys_SB = jax.vmap(lambda k: jax.random.split(k, batch))(step_keys_S)
    return jax.vmap(jax.vmap(one))(keys_SB, x_SB)
