"""Submission files: ``ImageId,EncodedPixels``, one row per predicted nucleus.

An image with no predicted nucleus gets one row with empty ``EncodedPixels`` (so every test
image is present). Submissions are written atomically and never overwrite an earlier file.
:func:`validate_submission` checks what Kaggle checked and reports every problem with its
ImageId, instead of stopping at the first.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from competition.csvio import atomic_write
from competition.errors import RLEError, UserError
from competition.rle import label_to_rles, parse, rles_to_label

log = logging.getLogger(__name__)

SUBMISSION_COLUMNS = ("ImageId", "EncodedPixels")


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a submission; ``image_id`` is ``""`` for file-level problems."""

    image_id: str
    message: str

    def __str__(self) -> str:
        return f"{self.image_id}: {self.message}" if self.image_id else self.message


@dataclass(frozen=True)
class Submission:
    """A parsed submission: ImageId -> run-length strings of its objects (file order)."""

    path: Path
    rles: dict[str, list[str]]

    def label(self, image_id: str, shape: tuple[int, int]) -> np.ndarray:
        """H×W int32 label image of one image's predicted objects (ids 1..N in row order)."""
        return rles_to_label(self.rles.get(image_id, []), shape)


def write_submission(
    path: str | Path,
    labels: Mapping[str, np.ndarray],
    image_ids: Sequence[str] | None = None,
) -> Path:
    """Write predicted label images as a submission, atomically, never overwriting.

    Args:
        path: the new CSV; an existing file is an error.
        labels: ImageId -> H×W int label image (0 = background). A label image cannot
            overlap itself, so the file has no pixel in two objects.
        image_ids: every ImageId the submission must hold, in output order (e.g. the sample
            submission's). An id with no label gets an empty row and a warning. Default: the
            keys of ``labels``.

    Shapes: labels values (H, W) int.
    """
    ids = list(labels) if image_ids is None else list(image_ids)
    unknown = set(labels) - set(ids)
    if unknown:
        raise UserError(f"{len(unknown)} predicted images are not in the requested ids, e.g. {sorted(unknown)[0]}")
    missing = [i for i in ids if i not in labels]
    if missing:
        log.warning("%d images have no prediction and get an empty row, e.g. %s", len(missing), missing[0])
    path = Path(path)
    with atomic_write(path, overwrite=False) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(SUBMISSION_COLUMNS)
        for image_id in ids:
            rles = label_to_rles(labels[image_id]) if image_id in labels else []
            for rle in rles or [""]:
                writer.writerow((image_id, rle))
    return path


def write_sample_submission(ids: Iterable[str], path: str | Path) -> Path:
    """A sample submission in Kaggle's form: ``ImageId,EncodedPixels`` with ``1 1`` per id,
    in the given order; written atomically."""
    path = Path(path)
    with atomic_write(path) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(("ImageId", "EncodedPixels"))
        for image_id in ids:
            writer.writerow((image_id, "1 1"))
    return path


def read_sample_ids(path: str | Path) -> list[str]:
    """The ImageIds of a sample submission (or any CSV with an ImageId column), file order."""
    path = Path(path)
    try:
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if "ImageId" not in (reader.fieldnames or ()):
                raise UserError(f"{path}: no ImageId column")
            return list(dict.fromkeys(row["ImageId"] for row in reader))
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None


def validate_submission(
    path: str | Path,
    *,
    required_ids: Iterable[str] | None = None,
    shapes: Mapping[str, tuple[int, int]] | None = None,
) -> tuple[Submission, list[Problem]]:
    """Check a submission the way Kaggle did, collecting every problem.

    Checks: the header is exactly ``ImageId,EncodedPixels``; every row has two fields and an
    ImageId; every encoding parses (integers, even count, positive starts and lengths,
    sorted, no run overlapping another of the same object); runs end inside the image when
    its shape is known; no pixel belongs to two objects of one image; every required ImageId
    is present and no other ImageId is.

    Args:
        path: the submission CSV.
        required_ids: the ImageIds that must be present (and the only ones allowed).
        shapes: ImageId -> (height, width), for the bounds check.

    Returns:
        ``(submission, problems)``; an empty list means valid.
    """
    path = Path(path)
    shapes = shapes or {}
    problems: list[Problem] = []
    rles: dict[str, list[str]] = {}
    intervals: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
    try:
        data = path.read_bytes()
    except OSError as exc:
        return Submission(path, {}), [Problem("", f"cannot read {path}: {exc.strerror}")]
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        return Submission(path, {}), [Problem("", f"{path} is not a text CSV: byte 0x{data[exc.start]:02x} at line "
                                                  f"{line} is not UTF-8 (a binary or compressed file?)")]
    if "\x00" in text:
        line = text[: text.index("\x00")].count("\n") + 1
        return Submission(path, {}), [Problem("", f"{path} is not a text CSV: a NUL byte at line {line} (a binary file?)")]
    import io

    with io.StringIO(text, newline="") as handle:
        reader = csv.reader(handle)
        header = next(reader, None)
        if header is None:
            return Submission(path, {}), [Problem("", f"{path} is empty")]
        if tuple(h.strip().lstrip("\ufeff") for h in header) != SUBMISSION_COLUMNS:
            problems.append(Problem("", f"header is {','.join(header)!r}, expected 'ImageId,EncodedPixels'"))
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != 2:
                problems.append(Problem(row[0] if row else "", f"line {line}: {len(row)} fields, expected 2"))
                continue
            image_id, rle = row[0].strip(), row[1].strip()
            if not image_id:
                problems.append(Problem("", f"line {line}: empty ImageId"))
                continue
            rles.setdefault(image_id, [])
            shape = shapes.get(image_id)
            try:
                starts, lengths = parse(rle, None if shape is None else shape[0] * shape[1])
            except RLEError as exc:
                problems.append(Problem(image_id, f"line {line}: {exc}"))
                continue
            if len(starts):
                rles[image_id].append(rle)
                intervals.setdefault(image_id, []).append((starts, starts + lengths))
    for image_id, runs in intervals.items():
        n_shared = _shared_pixels(runs)
        if n_shared:
            problems.append(Problem(image_id, f"{n_shared} pixels belong to more than one object"))
    if required_ids is not None:
        required = list(dict.fromkeys(required_ids))
        wanted = set(required)
        problems.extend(Problem(i, "missing from the submission") for i in required if i not in rles)
        problems.extend(Problem(i, "not an image of this test set") for i in rles if i not in wanted)
    return Submission(path, rles), problems


def _shared_pixels(runs: list[tuple[np.ndarray, np.ndarray]]) -> int:
    """Pixels covered by more than one object, from run intervals [start, end)."""
    if len(runs) < 2:
        return 0
    starts = np.concatenate([s for s, _ in runs])
    ends = np.concatenate([e for _, e in runs])
    # Sweep: +1 at each start, -1 at each end; pixels where the depth exceeds 1 are shared.
    points = np.concatenate([starts, ends])
    delta = np.concatenate([np.ones_like(starts), -np.ones_like(ends)])
    order = np.lexsort((delta, points))  # at equal positions, ends (-1) before starts
    points, depth = points[order], np.cumsum(delta[order])
    widths = np.diff(points)
    return int(widths[depth[:-1] > 1].sum())
