"""A seeded synthetic dataset in Kaggle's 2018 DSB layout: the data of ``make demo`` and tests.

:func:`generate_dataset` writes::

    OUT_DIR/stage1_train/<ImageId>/images/<ImageId>.png
    OUT_DIR/stage1_train/<ImageId>/masks/<MaskId>.png    one 0/255 PNG per nucleus, no overlap
    OUT_DIR/stage1_test/<ImageId>/images/<ImageId>.png
    OUT_DIR/stage1_sample_submission.csv                  ImageId,EncodedPixels ("1 1" each)
    OUT_DIR/stage1_solution.csv                           the test labels, Kaggle's format
    OUT_DIR/types.csv                                     ImageId,type of every image
    OUT_DIR/synth.json                                    marker: what made the folder

The three image types look like the real ones (see :func:`draw_image`): ``fluorescence``
(bright nuclei on a dark background, gray or tinted), ``histology`` (purple stained nuclei
on a pink textured background) and ``brightfield`` (dark gray nuclei and lighter cytoplasm
on a light gray background, R = G = B). Nuclei are irregular ellipses of random size and
orientation, with touching clusters, nuclei cut by the image border and a few very small
ones; images get uneven illumination, blur and noise.

Everything is drawn from one ``np.random.default_rng(seed)``: the same arguments give
byte-identical files.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

from competition.csvio import atomic_write
from competition.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["KINDS", "SynthSummary", "draw_image", "draw_label", "generate_dataset", "split_counts"]

#: The image types, in the order of :data:`competition.data.types.IMAGE_TYPES`.
KINDS = ("fluorescence", "histology", "brightfield")
#: Share of each type in a split, roughly as in the real stage1_train (541/107/16 there;
#: histology and brightfield are over-represented so every type has several images).
PROPORTIONS = {"fluorescence": 0.5, "histology": 1 / 3, "brightfield": 1 / 6}

MARKER = "synth.json"
TRAIN_DIR = "stage1_train"
TEST_DIR = "stage1_test"
SAMPLE_SUBMISSION = "stage1_sample_submission.csv"
SOLUTION = "stage1_solution.csv"
TYPES_CSV = "types.csv"

#: Smallest object kept after occlusion and border truncation (pixels).
MIN_SIZE = 10
#: Image sides (inclusive) of the default size range.
SIDE_RANGE = (96, 200)
_FORMAT_VERSION = 1


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`generate_dataset` wrote.

    Attributes:
        out_dir: the dataset folder.
        train_dir, test_dir: ``out_dir/stage1_train``, ``out_dir/stage1_test``.
        sample_submission, solution, types_csv: the CSV files.
        n_train, n_test: images per split.
        n_train_nuclei, n_test_nuclei: nuclei (masks / solution rows) per split.
        train_types, test_types: type -> number of images, in :data:`KINDS` order.
        seconds: wall time of the generation.
    """

    out_dir: Path
    train_dir: Path
    test_dir: Path
    sample_submission: Path
    solution: Path
    types_csv: Path
    n_train: int
    n_test: int
    n_train_nuclei: int
    n_test_nuclei: int
    train_types: dict[str, int] = field(compare=False)
    test_types: dict[str, int] = field(compare=False)
    seconds: float = field(default=0.0, compare=False)


# ----------------------------------------------------------------------------- counts and ids


def split_counts(n: int, minimum: int) -> dict[str, int]:
    """Images per type for a split of ``n`` images, near :data:`PROPORTIONS`.

    Every type gets at least ``minimum`` images when ``n >= 3 * minimum``; with fewer images
    the minimum drops to ``n // 3`` (so any ``n >= 3`` has every type).

    >>> split_counts(24, 2)
    {'fluorescence': 12, 'histology': 8, 'brightfield': 4}
    >>> split_counts(6, 2)
    {'fluorescence': 2, 'histology': 2, 'brightfield': 2}
    >>> split_counts(3, 1)
    {'fluorescence': 1, 'histology': 1, 'brightfield': 1}
    """
    if n < 0:
        raise ValueError(f"number of images must be >= 0, got {n}")
    floor = min(minimum, n // len(KINDS))
    target = {kind: n * PROPORTIONS[kind] for kind in KINDS}
    counts = {kind: max(floor, int(math.floor(target[kind]))) for kind in KINDS}
    while sum(counts.values()) < n:  # largest shortfall first; ties go to the earlier type
        kind = max(KINDS, key=lambda k: target[k] - counts[k])
        counts[kind] += 1
    while sum(counts.values()) > n:  # largest excess first among types above the floor
        kind = max((k for k in KINDS if counts[k] > floor), key=lambda k: counts[k] - target[k])
        counts[kind] -= 1
    return counts


def _image_id(seed: int, split: str, index: int) -> str:
    return hashlib.sha256(f"{seed}/{split}/{index}".encode()).hexdigest()


def _mask_id(image_id: str, index: int) -> str:
    return hashlib.sha256(f"{image_id}/mask/{index}".encode()).hexdigest()


# ----------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class _Blob:
    """An irregular ellipse: centre, semi-axes, orientation, boundary harmonics."""

    cy: float
    cx: float
    a: float
    b: float
    angle: float
    wobble: np.ndarray  # (K,) relative amplitude of harmonics 2..K+1 of the boundary
    phase: np.ndarray  # (K,)

    @property
    def radius(self) -> float:
        return 0.5 * (self.a + self.b)


def _random_blob(rng: np.random.Generator, cy: float, cx: float, a: float, b: float, irregularity: float) -> _Blob:
    return _Blob(
        cy=cy,
        cx=cx,
        a=a,
        b=b,
        angle=float(rng.uniform(0.0, math.pi)),
        wobble=rng.uniform(0.0, irregularity, size=4),
        phase=rng.uniform(0.0, 2 * math.pi, size=4),
    )


def _rasterise(blob: _Blob, shape: tuple[int, int]) -> tuple[tuple[slice, slice], np.ndarray] | None:
    """The blob's pixels inside the image: (bounding-box slices, bool mask of the box) or None."""
    height, width = shape
    reach = max(blob.a, blob.b) * (1.0 + float(blob.wobble.sum())) + 1.0
    y0, y1 = max(int(math.floor(blob.cy - reach)), 0), min(int(math.ceil(blob.cy + reach)) + 1, height)
    x0, x1 = max(int(math.floor(blob.cx - reach)), 0), min(int(math.ceil(blob.cx + reach)) + 1, width)
    if y0 >= y1 or x0 >= x1:
        return None
    dy = np.arange(y0, y1, dtype=np.float64)[:, None] - blob.cy
    dx = np.arange(x0, x1, dtype=np.float64)[None, :] - blob.cx
    cos, sin = math.cos(blob.angle), math.sin(blob.angle)
    u = (dx * cos + dy * sin) / blob.a
    v = (-dx * sin + dy * cos) / blob.b
    theta = np.arctan2(v, u)
    boundary = np.ones_like(theta)
    for k, (amp, phase) in enumerate(zip(blob.wobble, blob.phase), start=2):
        boundary += amp * np.cos(k * theta + phase)
    mask = u * u + v * v <= boundary * boundary
    if not mask.any():
        return None
    return (slice(y0, y1), slice(x0, x1)), mask


@dataclass(frozen=True)
class _LabelStyle:
    """How nuclei of one image type are sized and packed."""

    radius: tuple[float, float]  # range of the image's typical nucleus radius (px)
    coverage: tuple[float, float]  # range of the fraction of the image covered by nuclei
    cluster_fraction: float  # share of placements that start a touching cluster
    small_fraction: float  # share of very small nuclei
    irregularity: float  # largest amplitude of each boundary harmonic


_STYLES = {
    "fluorescence": _LabelStyle(radius=(5.0, 11.0), coverage=(0.08, 0.22), cluster_fraction=0.3, small_fraction=0.06, irregularity=0.05),
    "histology": _LabelStyle(radius=(7.0, 12.0), coverage=(0.15, 0.30), cluster_fraction=0.45, small_fraction=0.04, irregularity=0.08),
    "brightfield": _LabelStyle(radius=(5.0, 9.0), coverage=(0.05, 0.12), cluster_fraction=0.25, small_fraction=0.06, irregularity=0.06),
}


def draw_label(shape: tuple[int, int], rng: np.random.Generator, kind: str = "fluorescence") -> tuple[np.ndarray, list[_Blob]]:
    """Draw the nuclei of one image: an instance label and the blobs that were placed.

    Nuclei are irregular ellipses (semi-axes clipped to 2-18 px); some come in touching
    clusters of 2-4 (a later nucleus is drawn only where the image is still free, so they
    share a boundary and stay separate instances); centres may lie just outside the image,
    so some nuclei are cut by the border; a few are very small. Each object is reduced to
    its largest 4-connected piece; pieces under :data:`MIN_SIZE` pixels are dropped and ids
    renumbered 1..N.

    Args:
        shape: (height, width).
        rng: the random generator (advanced).
        kind: one of :data:`KINDS` (sets sizes and density).

    Returns:
        (label, blobs) — blobs in drawing order, including ones later dropped (the
        brightfield renderer draws cytoplasm around them).

    Shapes: -> label (H, W) int32, 0 = background.
    """
    style = _STYLES[_check_kind(kind)]
    height, width = shape
    label = np.zeros(shape, dtype=np.int32)
    radius = float(rng.uniform(*style.radius))
    target_area = float(rng.uniform(*style.coverage)) * height * width
    max_tries = 40 + int(8 * target_area / (math.pi * radius * radius))
    blobs: list[_Blob] = []
    area, next_id = 0, 1
    for _ in range(max_tries):
        if area >= target_area:
            break
        n_group = int(rng.integers(2, 5)) if rng.random() < style.cluster_fraction else 1
        group: list[_Blob] = []
        for member in range(n_group):
            if rng.random() < style.small_fraction:
                a = float(rng.uniform(2.0, 3.5))
            else:
                a = float(np.clip(radius * rng.uniform(0.7, 1.35), 3.0, 18.0))
            b = max(2.0, a * float(rng.uniform(0.6, 1.0)))
            if member == 0:
                margin = 0.6 * a
                cy = float(rng.uniform(-margin, height - 1 + margin))
                cx = float(rng.uniform(-margin, width - 1 + margin))
            else:
                anchor = group[int(rng.integers(len(group)))]
                direction = float(rng.uniform(0.0, 2 * math.pi))
                distance = (anchor.radius + 0.5 * (a + b)) * float(rng.uniform(0.72, 0.9))
                cy = anchor.cy + distance * math.sin(direction)
                cx = anchor.cx + distance * math.cos(direction)
            blob = _random_blob(rng, cy, cx, a, b, style.irregularity)
            drawn = _rasterise(blob, shape)
            if drawn is None:
                continue
            box, mask = drawn
            region = label[box]
            free = mask & (region == 0)
            # A lone nucleus may only graze others; a cluster member may overlap its anchor.
            if 1.0 - free.sum() / mask.sum() > (0.1 if member == 0 else 0.35):
                if member == 0:
                    break
                continue
            region[free] = next_id
            next_id += 1
            area += int(free.sum())
            group.append(blob)
        blobs.extend(group)
    return _tidy(label), blobs


def _tidy(label: np.ndarray) -> np.ndarray:
    """Keep each object's largest 4-connected piece, drop small ones, renumber 1..N."""
    out = np.zeros_like(label)
    next_id = 1
    for index, box in enumerate(ndimage.find_objects(label), start=1):
        if box is None:
            continue
        own = label[box] == index
        pieces, n_pieces = ndimage.label(own)
        if n_pieces > 1:
            sizes = np.bincount(pieces.ravel())[1:]
            own = pieces == 1 + int(np.argmax(sizes))
        if own.sum() < MIN_SIZE:
            continue
        out[box][own] = next_id
        next_id += 1
    return out


# ----------------------------------------------------------------------------- rendering


def _smooth_noise(shape: tuple[int, int], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered white noise scaled to unit standard deviation."""
    field_ = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="reflect")
    std = float(field_.std())
    return field_ / std if std > 0 else field_


def _illumination(shape: tuple[int, int], rng: np.random.Generator, strength: float) -> np.ndarray:
    """A smooth multiplicative field around 1: a random linear gradient and a vignette."""
    height, width = shape
    y = (np.arange(height, dtype=np.float64)[:, None] + 0.5) / height - 0.5
    x = (np.arange(width, dtype=np.float64)[None, :] + 0.5) / width - 0.5
    direction = float(rng.uniform(0.0, 2 * math.pi))
    slope = float(rng.uniform(0.3, 1.0)) * strength
    vignette = float(rng.uniform(0.0, 0.8)) * strength
    return 1.0 + slope * 2.0 * (y * math.sin(direction) + x * math.cos(direction)) - vignette * 2.0 * (x * x + y * y)


def _per_object(label: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Map each object id to its value (background 0). ``values[i]`` is object i + 1's."""
    lookup = np.concatenate(([0.0], values))
    return lookup[label]


def _render_fluorescence(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    shape = label.shape
    n = int(label.max())
    foreground = label > 0
    background = float(rng.uniform(1.0, 16.0))
    peak = float(rng.uniform(90.0, 235.0))
    brightness = peak * rng.uniform(0.3, 1.0, size=n)
    intensity = _per_object(label, brightness)
    # Chromatin texture and dimmer rims: real nuclei are not flat discs.
    texture = 1.0 + 0.18 * _smooth_noise(shape, float(rng.uniform(1.0, 2.0)), rng)
    depth = ndimage.distance_transform_edt(foreground)
    rim = np.clip(0.55 + 0.15 * depth, 0.55, 1.0)
    signal = intensity * texture * rim
    signal = ndimage.gaussian_filter(signal, float(rng.uniform(0.6, 1.3)))
    gray = (background + signal) * _illumination(shape, rng, 0.15)
    gray = gray + rng.normal(0.0, float(rng.uniform(0.8, 3.0)), size=shape)
    if rng.random() < 0.3:  # tinted with one colour (stays dark where there is no nucleus)
        hue = np.array([(0.75, 0.35, 1.0), (0.3, 1.0, 0.4), (0.35, 0.6, 1.0), (1.0, 0.55, 0.3)][int(rng.integers(4))])
        saturation = float(rng.uniform(0.3, 0.6))
        colour = (1.0 - saturation) + saturation * hue
    else:
        colour = np.ones(3)
    return np.clip(np.rint(gray[..., None] * colour), 0, 255).astype(np.uint8)


# Optical densities per unit stain (Beer-Lambert, -ln(I/255) per channel): haematoxylin-like
# purple for nuclei, eosin-like pink for the tissue background.
_NUCLEUS_OD = np.array([0.62, 1.15, 0.40])
_EOSIN_OD = np.array([0.06, 0.36, 0.17])


def _render_histology(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    shape = label.shape
    n = int(label.max())
    foreground = label > 0
    # Pink textured tissue, denser around the nuclei (cytoplasm).
    eosin = float(rng.uniform(0.45, 1.0)) * (1.0 + 0.3 * _smooth_noise(shape, float(rng.uniform(2.0, 5.0)), rng))
    eosin += 0.25 * _smooth_noise(shape, 1.0, rng).clip(0, None)
    eosin += float(rng.uniform(0.4, 1.2)) * ndimage.gaussian_filter(foreground.astype(np.float64), 4.0)
    eosin = np.clip(eosin, 0.1, None)
    # Stained nuclei of varied darkness with chromatin texture and darker spots.
    stain = _per_object(label, rng.uniform(0.55, 1.25, size=n))
    chromatin = 1.0 + 0.22 * _smooth_noise(shape, 1.2, rng) + 0.25 * (_smooth_noise(shape, 0.8, rng) > 1.5)
    haematoxylin = ndimage.gaussian_filter(stain * chromatin, float(rng.uniform(0.6, 1.1)))
    hue_shift = 1.0 + rng.uniform(-0.12, 0.12, size=3)
    density = eosin[..., None] * (_EOSIN_OD * hue_shift) + haematoxylin[..., None] * (_NUCLEUS_OD * hue_shift)
    rgb = 255.0 * np.exp(-density) * _illumination(shape, rng, 0.08)[..., None]
    rgb = rgb + rng.normal(0.0, float(rng.uniform(1.5, 4.0)), size=rgb.shape)
    return np.clip(np.rint(rgb), 0, 255).astype(np.uint8)


def _render_brightfield(label: np.ndarray, blobs: Sequence[_Blob], rng: np.random.Generator) -> np.ndarray:
    shape = label.shape
    n = int(label.max())
    foreground = label > 0
    background = float(rng.uniform(185.0, 218.0))
    # Cytoplasm: larger, lighter irregular shapes around most nuclei.
    cytoplasm = np.zeros(shape, dtype=bool)
    for blob in blobs:
        if rng.random() < 0.75:
            scale = float(rng.uniform(2.0, 3.5))
            cell = _random_blob(rng, blob.cy + rng.normal(0, blob.radius), blob.cx + rng.normal(0, blob.radius),
                                blob.a * scale, blob.b * scale, 0.12)
            drawn = _rasterise(cell, shape)
            if drawn is not None:
                box, mask = drawn
                cytoplasm[box] |= mask
    shade = float(rng.uniform(15.0, 40.0)) * (1.0 + 0.3 * _smooth_noise(shape, 2.0, rng))
    gray = background - ndimage.gaussian_filter(cytoplasm * shade, 1.0)
    nucleus = _per_object(label, rng.uniform(70.0, 125.0, size=n)) * (1.0 + 0.12 * _smooth_noise(shape, 1.0, rng))
    gray = np.where(foreground, nucleus, gray)
    gray = ndimage.gaussian_filter(gray, float(rng.uniform(0.6, 1.2)))
    gray = gray * _illumination(shape, rng, 0.05) + rng.normal(0.0, float(rng.uniform(1.0, 3.0)), size=shape)
    gray = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=2)


def _check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise ValueError(f"unknown image type {kind!r}; expected one of {', '.join(KINDS)}")
    return kind


def draw_image(kind: str, shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Draw one synthetic image of a type and its instance label.

    - ``fluorescence``: background 1-16 (before noise), nuclei of varied brightness with
      texture and dimmer rims; gray, or (3 in 10) tinted with one colour;
    - ``histology``: pink textured background, purple nuclei with chromatin texture
      (a Beer-Lambert stain mix, so the channels always differ);
    - ``brightfield``: light gray background (185-218), lighter-gray cytoplasm, dark gray
      nuclei (70-125); exactly R = G = B.

    Every type gets uneven illumination, Gaussian blur and noise.

    Args:
        kind: one of :data:`KINDS`.
        shape: (height, width), any size (the defaults use 96-200 px sides).
        rng: the random generator (advanced).

    Returns:
        (image, label).

    Raises:
        ValueError: an unknown kind or a non-positive size.

    Shapes: -> image (H, W, 3) uint8, label (H, W) int32 (0 = background, 1..N).
    """
    _check_kind(kind)
    height, width = (int(s) for s in shape)
    if height < 1 or width < 1:
        raise ValueError(f"image shape must be positive, got {tuple(shape)}")
    label, blobs = draw_label((height, width), rng, kind)
    if kind == "fluorescence":
        image = _render_fluorescence(label, rng)
    elif kind == "histology":
        image = _render_histology(label, rng)
    else:
        image = _render_brightfield(label, blobs, rng)
    return image, label


# ----------------------------------------------------------------------------- writing


def _image_shape(kind: str, rng: np.random.Generator) -> tuple[int, int]:
    if kind == "histology" and rng.random() < 0.1:
        return (256, 320)  # the most common real histology size
    low, high = SIDE_RANGE
    return int(rng.integers(low, high + 1)), int(rng.integers(low, high + 1))


def _save_png(array: np.ndarray, path: Path, mode: str) -> None:
    Image.fromarray(array, mode=mode).save(path, format="PNG")


def _alpha_probability(kind: str) -> float:
    return {"fluorescence": 0.5, "histology": 0.3, "brightfield": 0.0}[kind]


def _write_split(
    staging: Path, split: str, kinds: list[str], seed: int, rng: np.random.Generator, with_masks: bool
) -> tuple[list[str], dict[str, np.ndarray]]:
    """Draw and write one split into ``staging``; returns (image ids, id -> label)."""
    ids: list[str] = []
    labels: dict[str, np.ndarray] = {}
    for index, kind in enumerate(kinds):
        image_id = _image_id(seed, split, index)
        image, label = draw_image(kind, _image_shape(kind, rng), rng)
        folder = staging / image_id
        (folder / "images").mkdir(parents=True)
        if rng.random() < _alpha_probability(kind):
            rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 255, np.uint8)], axis=2)
            _save_png(rgba, folder / "images" / f"{image_id}.png", "RGBA")
        else:
            _save_png(image, folder / "images" / f"{image_id}.png", "RGB")
        if with_masks:
            (folder / "masks").mkdir()
            for k in range(1, int(label.max()) + 1):
                mask = np.where(label == k, 255, 0).astype(np.uint8)
                _save_png(mask, folder / "masks" / f"{_mask_id(image_id, k)}.png", "L")
        ids.append(image_id)
        labels[image_id] = label
    return ids, labels


def _prepare_out_dir(out_dir: Path, overwrite: bool) -> None:
    """Refuse a non-empty folder unless overwrite; then clear a previous synthetic dataset."""
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir} exists and is not a directory")
    entries = sorted(out_dir.iterdir()) if out_dir.is_dir() else []
    if not entries:
        return
    if not overwrite:
        raise UserError(f"{out_dir} is not empty; pass --overwrite (overwrite=True) to replace a synthetic dataset there")
    ours = (out_dir / MARKER).is_file()
    splits = [out_dir / TRAIN_DIR, out_dir / TEST_DIR]
    if not ours and any(p.exists() for p in splits):
        raise UserError(
            f"{out_dir} holds {TRAIN_DIR}/{TEST_DIR} but no {MARKER}: not a synthetic dataset made by "
            "this command; refusing to delete it (choose an empty folder)"
        )
    for path in splits:
        if path.is_dir():
            shutil.rmtree(path)
    for entry in out_dir.glob(".synth-*"):  # staging folders left by an interrupted run
        if entry.is_dir():
            shutil.rmtree(entry)


def _usages(ids_by_kind: dict[str, list[str]]) -> dict[str, str]:
    """Public/Private alternating over the test images grouped by type (about half each)."""
    usage: dict[str, str] = {}
    position = 0
    for kind in KINDS:
        for image_id in ids_by_kind[kind]:
            usage[image_id] = "Public" if position % 2 == 0 else "Private"
            position += 1
    return usage


def generate_dataset(
    out_dir: str | Path,
    *,
    n_train: int = 24,
    n_test: int = 12,
    seed: int = 0,
    overwrite: bool = False,
) -> SynthSummary:
    """Write a synthetic dataset in Kaggle's layout (see the module docstring).

    Types are split by :func:`split_counts` (train: at least 2 of each type once
    ``n_train >= 6``; test: at least 1 once ``n_test >= 3``) and shuffled. ImageIds are
    ``sha256(f"{seed}/{split}/{index}")`` in hex. Image sides are 96-200 px (a tenth of the
    histology images are 256×320); fluorescence images are stored RGBA half of the time,
    histology 3 times in 10, brightfield never. The test labels go to ``stage1_solution.csv``
    with Usage alternating Public/Private within the test images grouped by type.

    Each split is written into a hidden staging folder and renamed into place; the CSVs are
    written atomically. With ``overwrite``, a previous synthetic dataset in ``out_dir``
    (recognised by its ``synth.json``) is replaced; a folder holding ``stage1_train`` or
    ``stage1_test`` without that marker is never deleted.

    Args:
        out_dir: the dataset folder (created).
        n_train: training images (with masks).
        n_test: test images (labels only in the solution file).
        seed: the seed of the one random generator.
        overwrite: replace the contents of a non-empty ``out_dir``.

    Returns:
        A :class:`SynthSummary`.

    Raises:
        UserError: ``out_dir`` is not empty and overwrite is False, or holds data this
            function did not make; a negative count.
    """
    from competition.data.types import write_types
    from competition.solution import write_solution
    from competition.submission import write_sample_submission

    if n_train < 0 or n_test < 0:
        raise UserError(f"image counts must be >= 0, got n_train={n_train}, n_test={n_test}")
    started = time.perf_counter()
    out_dir = Path(out_dir)
    _prepare_out_dir(out_dir, overwrite)
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_dir / MARKER) as handle:
        json.dump({"generator": "competition.synth", "version": _FORMAT_VERSION, "seed": seed,
                   "n_train": n_train, "n_test": n_test}, handle, indent=2)
        handle.write("\n")

    rng = np.random.default_rng(seed)
    kinds_by_split: dict[str, list[str]] = {}
    for split, n, minimum in (("train", n_train, 2), ("test", n_test, 1)):
        counts = split_counts(n, minimum)
        kinds = [kind for kind in KINDS for _ in range(counts[kind])]
        kinds_by_split[split] = [kinds[i] for i in rng.permutation(len(kinds))]

    types: dict[str, str] = {}
    results: dict[str, tuple[list[str], dict[str, np.ndarray]]] = {}
    for split, dirname, with_masks in (("train", TRAIN_DIR, True), ("test", TEST_DIR, False)):
        staging = out_dir / f".synth-{dirname}-{os.getpid()}"  # mkdir, unlike mkdtemp, honours the umask
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
        try:
            ids, labels = _write_split(staging, split, kinds_by_split[split], seed, rng, with_masks)
            os.replace(staging, out_dir / dirname)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        results[split] = (ids, labels)
        types.update(zip(ids, kinds_by_split[split]))

    test_ids, test_labels = results["test"]
    write_sample_submission(sorted(test_ids), out_dir / SAMPLE_SUBMISSION)
    by_kind = {kind: [i for i, k in zip(test_ids, kinds_by_split["test"]) if k == kind] for kind in KINDS}
    write_solution(test_labels, out_dir / SOLUTION, _usages(by_kind))
    write_types(types, out_dir / TYPES_CSV)

    summary = SynthSummary(
        out_dir=out_dir,
        train_dir=out_dir / TRAIN_DIR,
        test_dir=out_dir / TEST_DIR,
        sample_submission=out_dir / SAMPLE_SUBMISSION,
        solution=out_dir / SOLUTION,
        types_csv=out_dir / TYPES_CSV,
        n_train=n_train,
        n_test=n_test,
        n_train_nuclei=sum(int(label.max()) for label in results["train"][1].values()),
        n_test_nuclei=sum(int(label.max()) for label in test_labels.values()),
        train_types={kind: kinds_by_split["train"].count(kind) for kind in KINDS},
        test_types={kind: kinds_by_split["test"].count(kind) for kind in KINDS},
        seconds=time.perf_counter() - started,
    )
    log.info("synthetic dataset in %s: %d train / %d test images, %.1f s", out_dir, n_train, n_test, summary.seconds)
    return summary
