"""Image types of the competition data, by a deterministic rule on pixel statistics.

The 2018 DSB images come in three kinds that segment very differently:

- ``fluorescence``: bright nuclei on a dark background (most of the data);
- ``histology``: stained tissue or cells under brightfield, coloured (purple/pink);
- ``brightfield``: grayscale, light background, dark nuclei.

On ``stage1_train`` (664 images) the rule gives 541 / 107 / 16 and on ``stage1_test`` (65
images) 53 / 12 / 0. The stratified folds (:mod:`competition.data.folds`) and per-type
reports build on these names.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from competition.csvio import atomic_write
from competition.errors import DataError

log = logging.getLogger(__name__)

__all__ = [
    "IMAGE_TYPES",
    "DARK_BACKGROUND_THRESHOLD",
    "COLOUR_THRESHOLD",
    "image_statistics",
    "classify_image",
    "classify_split",
    "write_types",
    "read_types",
    "save_contact_sheets",
]

IMAGE_TYPES = ("fluorescence", "histology", "brightfield")

#: Median gray level (0-255) below which the background counts as dark (fluorescence).
DARK_BACKGROUND_THRESHOLD = 100.0
#: Mean channel spread, ``max(R,G,B) - min(R,G,B)`` averaged over pixels (0-255), at or above
#: which a light-background image counts as coloured (histology).
COLOUR_THRESHOLD = 5.0

_TYPES_HEADER = ["ImageId", "type"]


def image_statistics(image: np.ndarray) -> tuple[float, float]:
    """(background level, colour) of an image, the two numbers :func:`classify_image` uses.

    The background level is the median of the per-pixel channel mean (nuclei cover well
    under half of every competition image, so the median is a background pixel). The colour
    is the mean over pixels of ``max(R, G, B) - min(R, G, B)``: 0 for a gray image.

    Shapes: image (H, W, 3) uint8 -> (float, float).
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H×W×3 image, got shape {image.shape}")
    if image.size == 0:
        raise ValueError("empty image")
    # Every other pixel in each direction: a quarter of the work, same statistics.
    pixels = image[::2, ::2].reshape(-1, 3)
    gray = pixels.astype(np.uint16).sum(axis=1)
    background = float(np.median(gray)) / 3.0
    spread = pixels.max(axis=1).astype(np.int16) - pixels.min(axis=1).astype(np.int16)
    colour = float(spread.mean())
    return background, colour


def classify_image(image: np.ndarray) -> str:
    """Classify an image as ``fluorescence``, ``histology`` or ``brightfield``.

    The rule, in order (see :func:`image_statistics` for the two statistics):

    1. background level (median gray, 0-255) below ``DARK_BACKGROUND_THRESHOLD`` = 100:
       ``fluorescence`` (dark background; a tinted fluorescence image is still this kind);
    2. otherwise, mean channel spread at or above ``COLOUR_THRESHOLD`` = 5: ``histology``
       (stained, coloured brightfield);
    3. otherwise: ``brightfield`` (gray, light background).

    Measured on the real data (sampled every other pixel): fluorescence backgrounds span
    0-52 (train and test), light backgrounds 131-231; the channel spread is exactly 0 for
    every gray image (their PNGs store R = G = B) and 11.8-114 for the coloured ones (test:
    22-62). Both thresholds sit in wide empty gaps.

    Shapes: image (H, W, 3) uint8 -> str.
    """
    background, colour = image_statistics(image)
    if background < DARK_BACKGROUND_THRESHOLD:
        return "fluorescence"
    if colour >= COLOUR_THRESHOLD:
        return "histology"
    return "brightfield"


def classify_split(split_dir: str | Path, *, skip_bad: bool = False) -> dict[str, str]:
    """Classify every image of a split folder (reads images only, not masks).

    Args:
        split_dir: a folder in Kaggle's layout (``<ImageId>/images/<ImageId>.png``).
        skip_bad: skip unreadable images (with a warning) instead of raising.

    Returns:
        ImageId -> type, sorted by ImageId.

    Raises:
        DataError: a missing or empty split folder; an unreadable image unless skip_bad.
    """
    from competition.data.io import _progress, list_samples, read_image

    samples = list_samples(split_dir, skip_bad=skip_bad)
    types: dict[str, str] = {}
    for sample in _progress(samples, desc="classify"):
        try:
            image = read_image(sample.image_path)
        except DataError as exc:
            if not skip_bad:
                raise
            log.warning("skipping %s: %s", sample.image_id, exc)
            continue
        types[sample.image_id] = classify_image(image)
    return types


def _check_type(kind: str, where: str) -> None:
    if kind not in IMAGE_TYPES:
        raise DataError(f"{where}: unknown image type {kind!r}; expected one of {', '.join(IMAGE_TYPES)}")


def write_types(types: Mapping[str, str], path: str | Path) -> Path:
    """Write ``ImageId,type`` rows sorted by ImageId, atomically.

    Raises:
        DataError: a type name not in :data:`IMAGE_TYPES`.
    """
    path = Path(path)
    for image_id, kind in types.items():
        _check_type(kind, f"image {image_id}")
    with atomic_write(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(_TYPES_HEADER)
        for image_id in sorted(types):
            writer.writerow((image_id, types[image_id]))
    return path


def read_types(path: str | Path) -> dict[str, str]:
    """Read an ``ImageId,type`` CSV written by :func:`write_types`, or any CSV whose first two
    columns are ``ImageId,type`` (a folds file, ``ImageId,type,fold,condition``: its other
    columns are ignored).

    Returns:
        ImageId -> type, in file order.

    Raises:
        DataError: unreadable file, wrong header, a row with the wrong number of fields,
            an empty or duplicated ImageId, an unknown type name (messages name the file).
    """
    path = Path(path)
    try:
        handle = path.open(newline="")
    except OSError as exc:
        raise DataError(f"cannot read types file {path}: {exc.strerror or exc}") from None
    types: dict[str, str] = {}
    with handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None or [h.strip() for h in header[:2]] != _TYPES_HEADER:
            raise DataError(f"{path}: not a types file, expected a header starting {','.join(_TYPES_HEADER)}, "
                            f"got {header}")
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise DataError(f"{path} line {line}: expected {len(header)} fields ({','.join(header)}), got {len(row)}")
            image_id, kind = row[0].strip(), row[1].strip()
            if not image_id:
                raise DataError(f"{path} line {line}: empty ImageId")
            if image_id in types:
                raise DataError(f"{path} line {line}: duplicate ImageId {image_id}")
            _check_type(kind, f"{path} line {line}")
            types[image_id] = kind
    return types


def _thumbnail(image: np.ndarray, thumb: int):
    from PIL import Image

    tile = Image.new("RGB", (thumb, thumb), (40, 40, 40))
    picture = Image.fromarray(image)
    picture.thumbnail((thumb, thumb), Image.Resampling.BILINEAR)
    tile.paste(picture, ((thumb - picture.width) // 2, (thumb - picture.height) // 2))
    return tile


def save_contact_sheets(
    split_dir: str | Path,
    types: Mapping[str, str],
    out_dir: str | Path,
    *,
    max_per_sheet: int = 64,
    thumb: int = 96,
) -> list[Path]:
    """Save one contact sheet (a grid of thumbnails) per image type, for checking by eye.

    Sheets are ``<out_dir>/contact-<type>.png`` (types with no image get none). A type with
    more than ``max_per_sheet`` images shows an evenly spaced selection of them, in ImageId
    order. Each thumbnail is letterboxed into ``thumb``×``thumb`` pixels and captioned with
    the first 8 characters of its ImageId. Written atomically.

    Args:
        split_dir: the split folder the ids of ``types`` come from.
        types: ImageId -> type.
        out_dir: output folder (created).
        max_per_sheet: most thumbnails per sheet.
        thumb: thumbnail size in pixels.

    Returns:
        The sheets written, in :data:`IMAGE_TYPES` order.

    Raises:
        DataError: an id whose image is missing or unreadable.
    """
    from PIL import Image, ImageDraw

    from competition.data.io import read_image

    if max_per_sheet < 1 or thumb < 16:
        raise ValueError("max_per_sheet must be >= 1 and thumb >= 16")
    split_dir = Path(split_dir)
    out_dir = Path(out_dir)
    written: list[Path] = []
    caption_height = 12
    for kind in IMAGE_TYPES:
        ids = sorted(i for i, k in types.items() if k == kind)
        if not ids:
            continue
        if len(ids) > max_per_sheet:
            picks = np.linspace(0, len(ids) - 1, max_per_sheet).round().astype(int)
            log.info("contact sheet %s: showing %d of %d images", kind, max_per_sheet, len(ids))
            ids = [ids[i] for i in picks]
        n_cols = math.ceil(math.sqrt(len(ids)))
        n_rows = math.ceil(len(ids) / n_cols)
        cell_h = thumb + caption_height
        sheet = Image.new("RGB", (n_cols * (thumb + 2), n_rows * (cell_h + 2)), (255, 255, 255))
        draw = ImageDraw.Draw(sheet)
        for n, image_id in enumerate(ids):
            image = read_image(split_dir / image_id / "images" / f"{image_id}.png")
            x = (n % n_cols) * (thumb + 2)
            y = (n // n_cols) * (cell_h + 2)
            sheet.paste(_thumbnail(image, thumb), (x, y))
            draw.text((x + 1, y + thumb), image_id[:8], fill=(0, 0, 0))
        path = out_dir / f"contact-{kind}.png"
        with atomic_write(path, mode="wb") as handle:
            sheet.save(handle, format="PNG")
        written.append(path)
    return written
