"""Reading the competition's images and instance labels (Kaggle's folder layout).

A split folder (``stage1_train``, ``stage1_test``, ...) holds one folder per image::

    <split_dir>/<ImageId>/images/<ImageId>.png
    <split_dir>/<ImageId>/masks/*.png          (training splits only; one PNG per nucleus)

Everything here returns plain numpy arrays: ``image`` is H×W×3 uint8, ``label`` is H×W int32
with 0 = background and 1..N = nuclei. Unreadable or inconsistent files raise
:class:`~competition.errors.DataError` naming the file and the problem.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from competition.errors import DataError
from competition.solution import read_solution

log = logging.getLogger(__name__)

__all__ = [
    "Sample",
    "LoadedSample",
    "read_image",
    "read_image_shape",
    "read_label",
    "list_samples",
    "load_sample",
    "load_split",
    "labels_from_csv",
]

_DATA_HINT = (
    "run `make data` to download it (needs Kaggle credentials), "
    "or set DATA_DIR= to an extracted copy (e.g. DATA_DIR=../shared/dsb2018)"
)

# Read errors PIL and numpy raise on missing, truncated or corrupt files.
_READ_ERRORS = (OSError, UnidentifiedImageError, ValueError, SyntaxError, EOFError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Sample:
    """One image of a split on disk.

    Attributes:
        image_id: Kaggle's ImageId (the folder name).
        image_path: ``<split_dir>/<ImageId>/images/<ImageId>.png``.
        masks_dir: ``<split_dir>/<ImageId>/masks``, or None when the folder has no masks/ dir
            (test splits).
    """

    image_id: str
    image_path: Path
    masks_dir: Path | None


@dataclass(frozen=True)
class LoadedSample:
    """An image and its label in memory.

    Shapes: image (H, W, 3) uint8; label (H, W) int32 or None (no masks on disk, or
    ``with_labels=False``).
    """

    image_id: str
    image: np.ndarray
    label: np.ndarray | None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "file not found"
    if isinstance(exc, IsADirectoryError):
        return "is a directory"
    if isinstance(exc, UnidentifiedImageError):
        return "not an image file PIL can identify"
    text = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
    return text


def _to_uint8_gray(pixels: np.ndarray) -> np.ndarray:
    """Scale a >8-bit (or float) single-channel array to uint8 by the image's own maximum."""
    values = np.asarray(pixels, dtype=np.float64)
    values = np.where(np.isfinite(values), values, 0.0)
    values = np.clip(values, 0.0, None)
    top = values.max() if values.size else 0.0
    if top <= 0:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round(values * (255.0 / top)).astype(np.uint8)


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    """Decode an opened PIL image to H×W×3 uint8 (forces the lazy pixel load)."""
    mode = im.mode
    if mode == "RGB":
        array = np.asarray(im)
    elif mode == "RGBA":
        array = np.asarray(im)[..., :3]
    elif mode == "L":
        gray = np.asarray(im)
        array = np.repeat(gray[..., None], 3, axis=2)
    elif mode == "LA":
        gray = np.asarray(im)[..., 0]
        array = np.repeat(gray[..., None], 3, axis=2)
    elif mode.startswith("I") or mode == "F":
        # I;16, I;16B, I;16L, I (32-bit int), F (32-bit float).
        gray = _to_uint8_gray(np.asarray(im))
        array = np.repeat(gray[..., None], 3, axis=2)
    elif mode in ("P", "PA"):
        array = np.asarray(im.convert("RGBA"))[..., :3]
    else:  # "1", "CMYK", "YCbCr", "LAB", "HSV", ...
        array = np.asarray(im.convert("RGB"))
    return np.ascontiguousarray(array, dtype=np.uint8)


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as H×W×3 uint8 RGB.

    Conversions: RGBA and LA drop alpha; grayscale (L) is repeated into three channels;
    palette (P, PA) images are expanded through their palette; 16-bit and 32-bit grayscale
    (I;16, I, F) are scaled to 8 bits **by the image's own maximum** (``round(v * 255 /
    max)``; 0 stays 0, an all-zero image stays 0, negative values clip to 0), so a 12-bit
    camera image uses the full 8-bit range and a dark background stays dark. (16-bit *colour*
    PNGs are reduced by PIL itself to their high byte, i.e. by the dtype's range.)

    Args:
        path: an image file PIL can read (PNG in the competition).

    Returns:
        The image, contiguous uint8.

    Raises:
        DataError: missing, truncated or corrupt file (the message names it).

    Shapes: -> image (H, W, 3) uint8.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()  # PIL decodes lazily: force it here so truncation raises inside the try
            return _pil_to_rgb(im)
    except _READ_ERRORS as exc:
        raise DataError(f"cannot read image {path}: {_describe(exc)}") from None


def read_image_shape(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image from its header, without decoding pixels.

    Raises:
        DataError: missing or unidentifiable file (a truncated pixel stream is not detected).
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            width, height = im.size
    except _READ_ERRORS as exc:
        raise DataError(f"cannot read image {path}: {_describe(exc)}") from None
    return int(height), int(width)


def _read_mask(path: Path) -> np.ndarray:
    """One mask PNG as an H×W bool array (non-zero in any channel = object)."""
    try:
        with Image.open(path) as im:
            im.load()
            if im.mode in ("P", "PA"):
                im = im.convert("L")
            array = np.asarray(im)
    except _READ_ERRORS as exc:
        raise DataError(f"cannot read mask {path}: {_describe(exc)}") from None
    if array.ndim == 3:
        if array.shape[2] in (2, 4):  # drop alpha
            array = array[..., :-1]
        return array.any(axis=2)
    return array != 0


def read_label(masks_dir: str | Path, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Combine one-mask-per-nucleus PNGs into an instance label image.

    Mask files (``*.png``) are taken in sorted filename order and numbered 1..N in that
    order. Empty masks are dropped (one warning per image). Where masks overlap, the earlier
    file keeps the pixel; one warning per image gives the number of overlapping pixels and
    masks. A mask left with no pixel of its own is dropped too, so ids stay 1..N.

    Args:
        masks_dir: folder of mask PNGs.
        shape: expected (height, width), normally the image's; when None, the first mask's.

    Returns:
        The label image.

    Raises:
        DataError: unreadable folder or mask, a mask whose size differs from ``shape`` (or
            from the first mask), or no masks and no ``shape``.

    Shapes: -> label (H, W) int32, 0 = background.
    """
    masks_dir = Path(masks_dir)
    try:
        files = sorted(p for p in masks_dir.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))
    except OSError as exc:
        raise DataError(f"cannot list masks in {masks_dir}: {_describe(exc)}") from None
    if shape is not None:
        shape = (int(shape[0]), int(shape[1]))
    label: np.ndarray | None = None
    reference = "the image"
    if shape is not None:
        label = np.zeros(shape, dtype=np.int32)
    elif files:
        reference = f"the first mask {files[0].name}"
    overlap: np.ndarray | None = None  # bool, pixels claimed by more than one mask
    overlapping_masks: set[int] = set()  # positions in `files`
    owner_of_id: list[int] = [-1]  # label id -> position in `files`
    empty: list[str] = []
    swallowed: list[str] = []
    next_id = 1
    for position, path in enumerate(files):
        mask = _read_mask(path)
        if label is None:
            shape = (int(mask.shape[0]), int(mask.shape[1]))
            label = np.zeros(shape, dtype=np.int32)
        if mask.shape != label.shape:
            raise DataError(
                f"mask {path} has size {mask.shape[0]}x{mask.shape[1]} (HxW), "
                f"expected {label.shape[0]}x{label.shape[1]} like {reference}"
            )
        flat_label = label.reshape(-1)
        index = np.flatnonzero(mask)
        if index.size == 0:
            empty.append(path.name)
            continue
        owners = flat_label[index]
        taken = owners != 0
        if taken.any():
            if overlap is None:
                overlap = np.zeros(label.size, dtype=bool)
            overlap[index[taken]] = True
            overlapping_masks.add(position)
            overlapping_masks.update(owner_of_id[i] for i in np.unique(owners[taken]).tolist())
            index = index[~taken]
            if index.size == 0:
                swallowed.append(path.name)
                continue
        flat_label[index] = next_id
        owner_of_id.append(position)
        next_id += 1
    if label is None:
        raise DataError(f"no mask PNGs in {masks_dir} and no image shape to make an empty label")
    if empty:
        log.warning(
            "%s: dropped %d empty mask(s): %s", masks_dir, len(empty), ", ".join(empty[:5]) + (" ..." if len(empty) > 5 else "")
        )
    if overlap is not None:
        log.warning(
            "%s: %d pixel(s) claimed by more than one mask, in %d overlapping masks; "
            "the earlier file (sorted by name) keeps each pixel%s",
            masks_dir,
            int(overlap.sum()),
            len(overlapping_masks),
            f"; {len(swallowed)} mask(s) left with no pixel were dropped" if swallowed else "",
        )
    return label


def _scan(split_dir: Path) -> tuple[list[Sample], list[tuple[str, str]]]:
    """All sample folders of a split: (good samples, [(image_id, reason)] for bad folders)."""
    if not split_dir.is_dir():
        what = "does not exist" if not split_dir.exists() else "is not a directory"
        raise DataError(f"data folder {split_dir} {what}: {_DATA_HINT}")
    samples: list[Sample] = []
    bad: list[tuple[str, str]] = []
    try:
        entries = sorted(split_dir.iterdir(), key=lambda p: p.name)
    except OSError as exc:
        raise DataError(f"cannot list {split_dir}: {_describe(exc)}") from None
    for folder in entries:
        if folder.name.startswith((".", "__")) or not folder.is_dir():
            continue  # .DS_Store, __MACOSX, stray files
        image_id = folder.name
        image_path = folder / "images" / f"{image_id}.png"
        if not image_path.is_file():
            bad.append((image_id, f"missing image file {image_path}"))
            continue
        masks_dir = folder / "masks"
        samples.append(Sample(image_id, image_path, masks_dir if masks_dir.is_dir() else None))
    if not samples and not bad:
        raise DataError(f"no images in {split_dir} (expected <ImageId>/images/<ImageId>.png): {_DATA_HINT}")
    return samples, bad


def list_samples(split_dir: str | Path, *, skip_bad: bool = False) -> list[Sample]:
    """The samples of a split folder in Kaggle's layout, sorted by image_id.

    Folders whose names start with ``.`` or ``__`` (``__MACOSX``) and stray files are ignored.

    Args:
        split_dir: e.g. ``DATA_DIR/stage1_train``.
        skip_bad: skip (with a warning) a sample folder that lacks its image file instead of
            raising.

    Raises:
        DataError: a missing folder or one with no images (the message says to run
            ``make data`` or set ``DATA_DIR``); a sample folder without its image file.
    """
    split_dir = Path(split_dir)
    samples, bad = _scan(split_dir)
    if bad and not skip_bad:
        raise DataError(f"sample {bad[0][0]}: {bad[0][1]}")
    for image_id, reason in bad:
        log.warning("skipping sample %s: %s", image_id, reason)
    if not samples:
        raise DataError(f"no readable images in {split_dir}: {_DATA_HINT}")
    return samples


def load_sample(sample: Sample) -> tuple[np.ndarray, np.ndarray | None]:
    """Read one sample's image and, when it has a masks/ folder, its label.

    Shapes: -> image (H, W, 3) uint8, label (H, W) int32 or None.

    Raises:
        DataError: unreadable image or mask, a mask of another size than the image.
    """
    image = read_image(sample.image_path)
    if sample.masks_dir is None:
        return image, None
    label = read_label(sample.masks_dir, shape=image.shape[:2])
    return image, label


def _progress(items: list, desc: str) -> Iterable:
    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover - tqdm is a dependency
        return items
    return tqdm(items, desc=desc, unit="img", disable=not sys.stderr.isatty(), leave=False)


def load_split(
    split_dir: str | Path,
    *,
    with_labels: bool = True,
    skip_bad: bool = False,
    ids: Iterable[str] | None = None,
) -> tuple[list[LoadedSample], list[tuple[str, str]]]:
    """Read every image (and label) of a split into memory, sorted by image_id.

    Args:
        split_dir: e.g. ``DATA_DIR/stage1_train``.
        with_labels: read masks into labels (samples without masks/ get ``label=None``).
        skip_bad: skip samples whose image or masks cannot be read instead of raising.
        ids: read only these image ids (all must exist in the split).

    Returns:
        (loaded samples, [(image_id, reason)] of skipped samples; empty unless skip_bad).

    Raises:
        DataError: the first bad sample when ``skip_bad`` is False; unknown ``ids``; a split
            with no images.

    Shapes: each image (H, W, 3) uint8, label (H, W) int32.
    """
    split_dir = Path(split_dir)
    samples, bad = _scan(split_dir)
    if ids is not None:
        wanted = set(ids)
        known = {s.image_id for s in samples} | {image_id for image_id, _ in bad}
        unknown = sorted(wanted - known)
        if unknown:
            raise DataError(
                f"{len(unknown)} image id(s) not found in {split_dir}: {', '.join(unknown[:5])}"
                + (" ..." if len(unknown) > 5 else "")
            )
        samples = [s for s in samples if s.image_id in wanted]
        bad = [(image_id, reason) for image_id, reason in bad if image_id in wanted]
    if bad and not skip_bad:
        raise DataError(f"sample {bad[0][0]}: {bad[0][1]}")
    skipped = list(bad)
    loaded: list[LoadedSample] = []
    for sample in _progress(samples, desc=split_dir.name):
        try:
            if with_labels:
                image, label = load_sample(sample)
            else:
                image, label = read_image(sample.image_path), None
        except DataError as exc:
            if not skip_bad:
                raise
            skipped.append((sample.image_id, str(exc)))
            continue
        loaded.append(LoadedSample(sample.image_id, image, label))
    for image_id, reason in skipped:
        log.warning("skipped sample %s: %s", image_id, reason)
    return loaded, sorted(skipped)


def labels_from_csv(path: str | Path) -> dict[str, np.ndarray]:
    """Labels from a Kaggle run-length CSV (``stage1_train_labels.csv`` or a solution file).

    Both formats have ``ImageId,EncodedPixels,Height,Width``; each row is one nucleus,
    numbered 1..N in file order within its image.

    Raises:
        DataError: unreadable file, missing columns, an invalid or overlapping encoding.

    Shapes: -> ImageId -> label (H, W) int32.
    """
    return {image_id: entry.label() for image_id, entry in read_solution(path).items()}
