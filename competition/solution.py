"""Solution files in Kaggle's format: ``ImageId,EncodedPixels,Height,Width,Usage``.

One row per true nucleus. An image with no nucleus has one row with empty EncodedPixels.
``Usage`` is ``Public``, ``Private`` or ``Ignored`` (not scored).
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from competition.csvio import atomic_write
from competition.errors import DataError, RLEError
from competition.rle import label_to_rles, rles_to_label

SOLUTION_COLUMNS = ("ImageId", "EncodedPixels", "Height", "Width", "Usage")
USAGES = ("Public", "Private", "Ignored")


@dataclass(frozen=True)
class SolutionImage:
    """The true objects of one image as stored in a solution file."""

    image_id: str
    shape: tuple[int, int]
    rles: tuple[str, ...]
    usage: str

    def label(self) -> np.ndarray:
        """H×W int32 label image; raises :class:`DataError` on an invalid encoding."""
        try:
            return rles_to_label(list(self.rles), self.shape)
        except RLEError as exc:
            raise DataError(f"solution image {self.image_id}: {exc}") from None


def read_solution(path: str | Path) -> dict[str, SolutionImage]:
    """Read a solution file (Kaggle format, or a labels CSV with Height/Width).

    ``Usage`` defaults to ``Public`` when the column is absent (as in
    ``stage1_train_labels.csv``).

    Returns:
        ImageId -> :class:`SolutionImage`, in file order.

    Raises:
        DataError: missing columns, non-integer sizes, an image whose rows disagree on size.
    """
    path = Path(path)
    try:
        handle = path.open(newline="")
    except OSError as exc:
        raise DataError(f"cannot read solution {path}: {exc.strerror}") from None
    images: dict[str, dict] = {}
    with handle:
        reader = csv.DictReader(handle)
        missing = {"ImageId", "EncodedPixels", "Height", "Width"} - set(reader.fieldnames or ())
        if missing:
            raise DataError(f"{path}: not a solution file, missing columns {sorted(missing)}")
        for line, row in enumerate(reader, start=2):
            try:
                shape = (int(row["Height"]), int(row["Width"]))
            except (TypeError, ValueError):
                raise DataError(f"{path} line {line}: bad Height/Width {row['Height']!r}/{row['Width']!r}") from None
            usage = (row.get("Usage") or "Public").strip()
            if usage not in USAGES:
                raise DataError(f"{path} line {line}: Usage {usage!r} is not one of {USAGES}")
            entry = images.setdefault(row["ImageId"], {"shape": shape, "rles": [], "usage": usage})
            if entry["shape"] != shape or entry["usage"] != usage:
                raise DataError(f"{path} line {line}: image {row['ImageId']} has rows with different Height/Width/Usage")
            rle = (row["EncodedPixels"] or "").strip()
            if rle:
                entry["rles"].append(rle)
    return {
        image_id: SolutionImage(image_id, e["shape"], tuple(e["rles"]), e["usage"])
        for image_id, e in images.items()
    }


def count_objects(label: np.ndarray) -> int:
    """The number of objects (distinct non-zero ids) in a label image."""
    return int(np.count_nonzero(np.bincount(np.asarray(label).ravel())[1:]))


def write_solution(
    labels: Mapping[str, np.ndarray],
    path: str | Path,
    usage: str | Mapping[str, str] = "Public",
    *,
    overwrite: bool = True,
) -> Path:
    """Write labelled images as a solution file, atomically.

    Args:
        labels: ImageId -> H×W int label image (0 = background).
        path: where to write.
        usage: one Usage for all images, or ImageId -> Usage.
        overwrite: refuse an existing file when False.
    """
    path = Path(path)
    with atomic_write(path, overwrite=overwrite) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(SOLUTION_COLUMNS)
        for image_id, label in labels.items():
            use = usage if isinstance(usage, str) else usage[image_id]
            height, width = label.shape
            for rle in label_to_rles(label) or [""]:
                writer.writerow((image_id, rle, height, width, use))
    return path
