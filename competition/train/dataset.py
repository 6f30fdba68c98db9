"""Training data: images with labels, types and folds; random padded crops; the sampler.

Every crop is a pure function of ``(seed, epoch, index)``: the image, the crop position
and the augmentation are drawn from ``numpy.random.default_rng([seed, epoch, index])``.
Runs therefore reproduce with any number of DataLoader workers and resume exactly.

A crop of ``crop_size`` is cut with ``pad`` pixels of context on each side (reflection
beyond the image edges); the network sees ``crop_size + 2 * pad`` pixels and the loss mask
is 1 only on the central crop and inside the original image. Targets are computed from the
augmented label crop with :func:`competition.targets.make_targets`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from competition.errors import DataError, UserError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainImage:
    """One training image with its label, type and fold.

    Attributes:
        image_id: Kaggle id.
        image: H×W×3 uint8.
        label: H×W int32, 0 = background.
        type: image type (``fluorescence``, ``histology``, ``brightfield``).
        fold: cross-validation fold.
    """

    image_id: str
    image: np.ndarray
    label: np.ndarray
    type: str
    fold: int


# ----------------------------------------------------------------------------- loading


def resolve_split_dir(data_dir: str | Path) -> Path:
    """``DATA_DIR`` or ``DATA_DIR/stage1_train`` -> the training split directory.

    Raises:
        DataError: neither exists or holds no samples; the message says ``make data`` or
            ``DATA_DIR=``.
    """
    data_dir = Path(data_dir)
    hint = ("get the data with `make data`, or point DATA_DIR= (--data) at a folder "
            "holding stage1_train/")
    if (data_dir / "stage1_train").is_dir():
        split = data_dir / "stage1_train"
    elif data_dir.is_dir() and any(p.is_dir() and (p / "images").is_dir()
                                   for p in data_dir.iterdir()):
        split = data_dir
    elif not data_dir.exists():
        raise DataError(f"training data directory {data_dir} does not exist; {hint}")
    else:
        raise DataError(f"no training images in {data_dir} (nor in {data_dir}/stage1_train); "
                        f"{hint}")
    return split


def _cache_key(split: Path) -> str:
    h = hashlib.sha1(str(split.resolve()).encode())
    for p in sorted(split.iterdir()):
        h.update(p.name.encode())
        masks = p / "masks"
        if masks.is_dir():
            h.update(str(len(os.listdir(masks))).encode())
    return h.hexdigest()[:12]


def load_labelled(split: Path, cache_dir: Path | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Read every image and label of ``split`` (``load_split``), through an optional cache.

    The cache (``cache_dir/train-<key>.npz``, uncompressed, labels as uint16 when they fit) is
    keyed by the split path, its image ids and mask counts; reading it takes seconds instead
    of decoding thousands of mask PNGs.

    Returns:
        image_id -> (image H×W×3 uint8, label H×W int32).
    """
    from competition.csvio import atomic_write
    from competition.data.io import load_split

    cache = None
    if cache_dir is not None:
        cache = Path(cache_dir) / f"train-{_cache_key(split)}.npz"
        if cache.is_file():
            t0 = time.perf_counter()
            try:
                with np.load(cache) as z:
                    ids = [str(i) for i in z["ids"]]
                    out = {i: (z[f"i_{i}"], z[f"l_{i}"].astype(np.int32)) for i in ids}
                log.info("read %d training images from cache %s (%.1f s)", len(out), cache,
                         time.perf_counter() - t0)
                return out
            except Exception as exc:  # noqa: BLE001 - a bad cache is rebuilt
                log.warning("ignoring unreadable cache %s: %s", cache, exc)
    t0 = time.perf_counter()
    loaded, _ = load_split(split, with_labels=True)
    out = {s.image_id: (s.image, s.label.astype(np.int32, copy=False)) for s in loaded}
    log.info("read %d training images with labels from %s (%.0f s)", len(out), split,
             time.perf_counter() - t0)
    if cache is not None:
        arrays: dict[str, np.ndarray] = {"ids": np.array(sorted(out))}
        for i, (image, label) in out.items():
            arrays[f"i_{i}"] = image
            fits = label.max(initial=0) < 2**16
            arrays[f"l_{i}"] = label.astype(np.uint16) if fits else label
        with atomic_write(cache, mode="wb") as fh:
            np.savez(fh, **arrays)
        log.info("cached the decoded training set in %s", cache)
    return out


def resolve_types_and_folds(
    ids_images: dict[str, np.ndarray],
    split: Path,
    *,
    folds_path: Path,
    types_path: Path | None = None,
) -> tuple[dict[str, str], dict[str, int]]:
    """Image types and folds for every image id.

    Types: ``types_path`` (``read_types``) when given, else the folds file's ``type``
    column, else :func:`competition.data.types.classify_image` per image. Folds: read from
    ``folds_path``; when that file is missing it is made (condition-out folds,
    :func:`competition.data.folds.make_condition_folds`) and logged; when it lists other
    images than the split (made for another dataset), it is moved aside to
    ``<stem>.<hash of its ids>.csv`` and new folds are made.

    Raises:
        UserError: the types file does not cover every image.
    """
    from competition.data import folds as folds_mod
    from competition.data import types as types_mod

    ids = sorted(ids_images)
    types: dict[str, str] | None = None
    if types_path is not None:
        types = {str(k): str(v) for k, v in types_mod.read_types(types_path).items()}
        missing = [i for i in ids if i not in types]
        if missing:
            raise UserError(f"types file {types_path} lacks {len(missing)} of the {len(ids)} "
                            f"training images (e.g. {missing[0]})")
    folds_path = Path(folds_path)
    df = folds_mod.read_folds(folds_path) if folds_path.is_file() else None
    if df is not None:
        listed = set(df["ImageId"])
        if set(ids) != listed:
            # made for another dataset (DATA_DIR switched): keep it under a name of its own
            digest = hashlib.sha1("\n".join(sorted(listed)).encode()).hexdigest()[:10]
            kept = folds_path.with_name(f"{folds_path.stem}.{digest}{folds_path.suffix}")
            os.replace(folds_path, kept)
            log.warning("folds file %s lists %d images, %d of them not in %s (made for another dataset): "
                        "moved to %s, making new folds", folds_path, len(listed), len(listed - set(ids)),
                        split, kept)
            df = None
    if df is None:
        if types is None:
            types = {i: types_mod.classify_image(ids_images[i]) for i in ids}
        folds, conditions = folds_mod.make_condition_folds(ids_images, types)
        folds_mod.write_folds(folds_path, types, folds, conditions=conditions)
        log.info("folds file %s was missing: made %d condition-out folds over %d images (%d conditions) and "
                 "wrote it", folds_path, len(set(folds.values())), len(folds), len(set(conditions.values())))
        df = folds_mod.read_folds(folds_path)
    fold_of = {str(r.ImageId): int(r.fold) for r in df.itertuples()}
    if types is None:
        types = {str(r.ImageId): str(r.type) for r in df.itertuples()}
    return {i: types[i] for i in ids}, {i: fold_of[i] for i in ids}


def load_training_images(
    data_dir: str | Path,
    *,
    folds_path: str | Path = "build/folds.csv",
    types_path: str | Path | None = None,
    cache_dir: str | Path | None = "build/cache",
) -> list[TrainImage]:
    """Everything training needs, for every image of the training split.

    Args:
        data_dir: ``DATA_DIR`` or the ``stage1_train`` directory itself.
        folds_path: the folds CSV (made if missing).
        types_path: a types CSV; default: the folds file's types or the classifier's.
        cache_dir: where the decoded dataset is cached; None disables the cache.

    Returns:
        TrainImages sorted by image id.
    """
    split = resolve_split_dir(data_dir)
    data = load_labelled(split, Path(cache_dir) if cache_dir is not None else None)
    if not data:
        raise DataError(f"no training images in {split}; get the data with `make data` or set "
                        "DATA_DIR=")
    types, folds = resolve_types_and_folds(
        {i: im for i, (im, _) in data.items()}, split, folds_path=Path(folds_path),
        types_path=Path(types_path) if types_path else None)
    images = [TrainImage(i, data[i][0], data[i][1], types[i], folds[i]) for i in sorted(data)]
    counts = Counter(im.type for im in images)
    log.info("training images by type: %s", ", ".join(f"{t} {n}" for t, n in sorted(counts.items())))
    return images


# ----------------------------------------------------------------------------- crops


def reflect_index(idx: np.ndarray, n: int) -> np.ndarray:
    """Map indices (possibly outside ``0..n-1``) into range by reflection (``reflect_101``)."""
    if n == 1:
        return np.zeros_like(idx)
    period = 2 * n - 2
    idx = np.abs(idx) % period
    return np.where(idx >= n, period - idx, idx)


def cut_window(image: np.ndarray, label: np.ndarray, top: int, left: int, size: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut a ``size``×``size`` window at (top, left), reflecting past the image edges.

    Returns:
        (image window, label window, inside: uint8 1 where the pixel lies in the image).

    Shapes: image H×W×3, label H×W -> size×size×3, size×size, size×size.
    """
    h, w = label.shape
    rows = np.arange(top, top + size)
    cols = np.arange(left, left + size)
    inside = ((rows >= 0) & (rows < h))[:, None] & ((cols >= 0) & (cols < w))[None, :]
    ry, rx = reflect_index(rows, h), reflect_index(cols, w)
    return image[np.ix_(ry, rx)], label[np.ix_(ry, rx)], inside.astype(np.uint8)


def sample_weights(images: Sequence[TrainImage], sampling: str) -> np.ndarray:
    """Probability of drawing each image: ``uniform``, ``balanced`` (equal per type) or
    ``sqrt`` (a type's share proportional to the square root of its image count: the rare
    types oversampled, without a few images taking a third of the crops)."""
    counts = Counter(im.type for im in images)
    if sampling == "uniform":
        w = np.ones(len(images))
    elif sampling == "balanced":
        w = np.array([1.0 / counts[im.type] for im in images])
    elif sampling == "sqrt":
        w = np.array([1.0 / np.sqrt(counts[im.type]) for im in images])
    else:
        raise ValueError(f"unknown sampling {sampling!r}; valid: uniform, balanced, sqrt")
    return w / w.sum()


class CropDataset(torch.utils.data.Dataset):
    """Random augmented crops, indexed globally by ``epoch * samples_per_epoch + i``.

    Args:
        images: the training images.
        member: the :class:`~competition.train.recipe.Member` (crop, pad, augment, seed,
            sampling, widths).
        channels: target channel names.
        invert: the member's resolved invert decision (dark-on-light images are inverted).
        samples_per_epoch: crops per epoch.

    Items: ``(x, targets, mask)``: 3×S×S float32 normalised input, C×S×S float32 targets,
    1×S×S float32 loss mask, with ``S = crop_size + 2 * pad``.
    """

    def __init__(self, images: Sequence[TrainImage], member, channels: Sequence[str],
                 invert: bool, samples_per_epoch: int) -> None:
        from competition.predict.preprocess import is_dark_on_light

        self.images = list(images)
        self.member = member
        self.channels = tuple(channels)
        self.samples_per_epoch = int(samples_per_epoch)
        self.weights = sample_weights(self.images, member.sampling)
        self.inverts = bool(invert)
        self.invert = [invert and is_dark_on_light(im.image) for im in self.images]
        #: a member's input_norm: every whole image stretched once here (the invert decision
        #: above stays the raw image's, as in prediction); "gray" greys crops after augmenting.
        self.input_norm = member.input_norm
        if self.input_norm != "imagenet":
            from competition.predict.preprocess import stretch

            self.images = [replace(im, image=stretch(im.image)) for im in self.images]
        #: per-image resize factor to the member's nucleus diameter (1 when it is 0).
        self.base_scale = [1.0] * len(self.images)
        target = member.nucleus_diameter
        if target > 0:
            from competition.scale import label_scale

            self.base_scale = [label_scale(im.label, target) for im in self.images]
        self._pipelines: dict[str | None, object] = {}

    def __len__(self) -> int:
        return self.samples_per_epoch * self.member.epochs

    def _pipeline(self, image_type: str):
        from competition.train.augment import build_pipeline

        key = image_type if image_type in ("histology", "fluorescence") else None
        if key not in self._pipelines:
            self._pipelines[key] = build_pipeline(self.member.augment, key)
        return self._pipelines[key]

    def rng(self, index: int) -> np.random.Generator:
        """The generator of global sample ``index``: seeded by (seed, epoch, i)."""
        epoch, i = divmod(int(index), self.samples_per_epoch)
        return np.random.default_rng([self.member.seed, epoch, i])

    def crop(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, bool, str]:
        """The augmented window of sample ``index`` before normalisation.

        Returns:
            (image S×S×3 uint8, label S×S int32, loss mask S×S uint8, invert, type).
        """
        from competition.train.augment import augment

        rng = self.rng(index)
        k = int(rng.choice(len(self.images), p=self.weights))
        im = self.images[k]
        h, w = im.label.shape
        c, pad = self.member.crop_size, self.member.pad
        scaled = self.member.nucleus_diameter > 0
        if scaled:
            from competition.scale import jitter_scale, scaled_window

            s = self.base_scale[k] * jitter_scale(rng, self.member.scale_jitter)
            h, w = max(1, round(h * s)), max(1, round(w * s))
        top = int(rng.integers(0, h - c + 1)) if h >= c else -int(rng.integers(0, c - h + 1))
        left = int(rng.integers(0, w - c + 1)) if w >= c else -int(rng.integers(0, c - w + 1))
        size = c + 2 * pad
        if scaled:
            image, label, inside = scaled_window(im.image, im.label, s, top - pad, left - pad,
                                                 size)
        else:
            image, label, inside = cut_window(im.image, im.label, top - pad, left - pad, size)
        if self.member.copy_paste > 0 and rng.random() < self.member.copy_paste:
            from competition.train.augment import paste_nuclei

            image, label = paste_nuclei(image, label, inside, rng)
        before = image
        image, (label, inside) = augment(self._pipeline(im.type), image, [label, inside], rng)
        invert = self.invert[k]
        if self.inverts and image is not before:
            from competition.predict.preprocess import is_dark_on_light

            # a transform that turned the polarity (stain recolouring) turns the inversion too
            invert ^= is_dark_on_light(before) != is_dark_on_light(image)
        mask = np.zeros((size, size), np.uint8)
        mask[pad:pad + c, pad:pad + c] = 1
        mask &= inside
        return image, label, mask, bool(invert), im.type

    def __getitem__(self, index: int):
        from competition.targets import make_targets
        from competition.predict.preprocess import normalise, to_gray

        image, label, mask, invert, _ = self.crop(index)
        targets = make_targets(label, self.channels, boundary_width=self.member.boundary_width,
                               gap_width=self.member.gap_width)
        if self.input_norm == "gray":
            image = to_gray(image)
        x = normalise(image, invert)
        return (torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(targets)),
                torch.from_numpy(mask[None].astype(np.float32)))


class EpochSampler(torch.utils.data.Sampler):
    """Global indices of one epoch, sharded over DDP ranks (rank r takes every world-th).

    The count per epoch is rounded down to a multiple of ``world * batch_size`` so every
    rank runs the same number of full batches.
    """

    def __init__(self, samples_per_epoch: int, epoch: int, batch_size: int, rank: int = 0,
                 world: int = 1) -> None:
        self.samples_per_epoch = samples_per_epoch
        self.epoch = epoch
        self.rank, self.world = rank, world
        self.n_used = max(samples_per_epoch // (world * batch_size), 1) * world * batch_size

    def __iter__(self) -> Iterator[int]:
        base = self.epoch * self.samples_per_epoch
        for i in range(self.rank, self.n_used, self.world):
            yield base + (i % self.samples_per_epoch)

    def __len__(self) -> int:
        return self.n_used // self.world


def steps_per_epoch(samples_per_epoch: int, batch_size: int, world: int = 1) -> int:
    """Optimiser steps per epoch (same on every rank)."""
    return max(samples_per_epoch // (world * batch_size), 1)


def worker_init(worker_id: int) -> None:
    """DataLoader workers: one torch thread each (the samples seed themselves)."""
    torch.set_num_threads(1)
