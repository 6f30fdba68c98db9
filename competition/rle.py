"""Run-length encoding in the competition's format.

Pixels are numbered from 1, top to bottom then left to right (column-major). An encoding is
a space-separated list of ``start length`` pairs, sorted by start, with positive lengths and
no pixel twice. Everything here is vectorised: no Python loop over pixels.

>>> import numpy as np
>>> mask = np.array([[0, 1], [1, 1]], dtype=bool)
>>> encode(mask)
'2 3'
>>> decode('2 3', (2, 2)).astype(int).tolist()
[[0, 1], [1, 1]]
>>> label_to_rles(np.array([[1, 0, 2], [1, 0, 2]]))
['1 2', '5 2']
"""

from __future__ import annotations

import numpy as np

from competition.errors import RLEError

__all__ = ["encode", "decode", "parse", "label_to_rles", "rles_to_label", "RLEError"]


def encode(mask: np.ndarray) -> str:
    """Encode one binary mask.

    Args:
        mask: H×W array; non-zero pixels belong to the object.

    Returns:
        The run-length string; ``""`` for an empty mask.

    Shapes: mask (H, W) -> str.
    """
    if mask.ndim != 2:
        raise ValueError(f"encode expects a 2-D mask, got shape {mask.shape}")
    flat = np.asarray(mask, dtype=bool).ravel(order="F")
    padded = np.concatenate(([False], flat, [False]))
    edges = np.flatnonzero(padded[1:] != padded[:-1])
    starts, ends = edges[0::2], edges[1::2]
    return _join(starts + 1, ends - starts)


def _join(starts: np.ndarray, lengths: np.ndarray) -> str:
    pairs = np.empty(2 * len(starts), dtype=np.int64)
    pairs[0::2] = starts
    pairs[1::2] = lengths
    return " ".join(map(str, pairs.tolist()))


def parse(rle: str, n_pixels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Parse and validate a run-length string.

    Args:
        rle: ``"start length start length ..."``; empty or blank means no pixel.
        n_pixels: number of pixels in the image (H*W); when given, runs must end inside it.

    Returns:
        ``(starts, lengths)``, int64 arrays, starts 1-indexed.

    Raises:
        RLEError: non-integer token, odd count, non-positive start or length, unsorted or
            overlapping runs, or a run past the last pixel. The message says which pair.
    """
    text = "" if rle is None else str(rle).strip()
    if not text or text.lower() == "nan":
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    tokens = text.split()
    try:
        values = np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        bad = next((t for t in tokens if not _is_int(t)), tokens[0])
        raise RLEError(f"not an integer: {bad!r}") from None
    if len(values) % 2:
        raise RLEError(f"odd number of values ({len(values)}): runs come in 'start length' pairs")
    starts, lengths = values[0::2], values[1::2]
    ends = starts + lengths  # one past the last pixel of each run, 1-indexed
    # One check covers the common, valid case; the details are worked out only on failure.
    # With positive lengths, a start at or before the previous start is also inside it.
    if values.min() < 1 or (len(starts) > 1 and (starts[1:] < ends[:-1]).any()):
        _explain_invalid(starts, lengths, ends)
    if n_pixels is not None and ends[-1] - 1 > n_pixels:
        raise RLEError(f"run {starts[-1]} {lengths[-1]} ends at pixel {ends[-1] - 1}, past the image's {n_pixels} pixels")
    return starts, lengths


def _explain_invalid(starts: np.ndarray, lengths: np.ndarray, ends: np.ndarray) -> None:
    """Raise the RLEError that names the first bad pair."""
    _check_positive(starts, "start")
    _check_positive(lengths, "length")
    order = np.flatnonzero(starts[1:] <= starts[:-1])
    if len(order):
        i = int(order[0]) + 1
        raise RLEError(f"runs not sorted: start {starts[i]} (pair {i + 1}) after {starts[i - 1]}")
    i = int(np.flatnonzero(starts[1:] < ends[:-1])[0]) + 1
    raise RLEError(
        f"overlapping runs: pair {i + 1} starts at {starts[i]} "
        f"inside the previous run {starts[i - 1]}..{ends[i - 1] - 1}"
    )


def _is_int(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


def _check_positive(values: np.ndarray, what: str) -> None:
    bad = np.flatnonzero(values < 1)
    if len(bad):
        i = int(bad[0])
        raise RLEError(f"non-positive {what} {values[i]} in pair {i + 1}")


def decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode one run-length string into a boolean mask.

    Args:
        rle: the run-length string (validated as in :func:`parse`).
        shape: ``(height, width)`` of the image.

    Returns:
        H×W bool mask.

    Shapes: str -> (H, W) bool.
    """
    height, width = shape
    starts, lengths = parse(rle, height * width)
    flat = np.zeros(height * width, dtype=bool)
    flat[_run_pixels(starts, lengths)] = True
    return flat.reshape((height, width), order="F")


def label_to_rles(label: np.ndarray) -> list[str]:
    """Encode every object of a label image in one pass over the pixels.

    Args:
        label: H×W integer label image, 0 = background; ids need not be consecutive.

    Returns:
        One run-length string per object, in increasing label order (empty objects are
        left out).

    Shapes: (H, W) int -> list of str.
    """
    if label.ndim != 2:
        raise ValueError(f"label_to_rles expects a 2-D label image, got shape {label.shape}")
    flat = np.asarray(label).ravel(order="F")
    padded = np.concatenate(([0], flat, [0]))
    change = np.flatnonzero(padded[1:] != padded[:-1])  # run boundaries, 0-indexed
    run_start = change[:-1]
    run_value = flat[run_start]
    run_length = change[1:] - run_start
    keep = run_value != 0
    run_start, run_value, run_length = run_start[keep], run_value[keep], run_length[keep]
    order = np.argsort(run_value, kind="stable")  # stable keeps each object's runs sorted
    run_start, run_value, run_length = run_start[order], run_value[order], run_length[order]
    bounds = np.flatnonzero(np.diff(run_value)) + 1
    return [
        _join(s + 1, n)
        for s, n in zip(np.split(run_start, bounds), np.split(run_length, bounds))
        if len(s)
    ]


def rles_to_label(rles: list[str], shape: tuple[int, int], *, allow_overlap: bool = False) -> np.ndarray:
    """Decode a list of run-length strings into one label image (object i gets id i + 1).

    Args:
        rles: one run-length string per object; empty strings add no object.
        shape: ``(height, width)``.
        allow_overlap: when False, a pixel claimed by two objects raises; when True the
            earlier object keeps it.

    Returns:
        H×W int32 label image.

    Raises:
        RLEError: an invalid string (the message gives its index) or an overlap.
    """
    height, width = shape
    n_pixels = height * width
    parsed = []
    for i, rle in enumerate(rles):
        try:
            parsed.append(parse(rle, n_pixels))
        except RLEError as exc:
            raise RLEError(f"object {i + 1}: {exc}") from None
    flat = np.zeros(n_pixels, dtype=np.int32)
    if parsed:
        # All objects at once: every covered pixel and its owner, one scatter.
        lengths = np.concatenate([n for _, n in parsed])
        pixels = _run_pixels(np.concatenate([s for s, _ in parsed]), lengths)
        runs_per_object = [len(s) for s, _ in parsed]
        owners = np.repeat(np.repeat(np.arange(1, len(parsed) + 1, dtype=np.int32), runs_per_object), lengths)
        flat[pixels] = owners
        if np.count_nonzero(flat) != len(pixels):  # some pixel was written twice
            flat = _label_with_overlap(parsed, n_pixels, allow_overlap)
    return flat.reshape((height, width), order="F")


def _label_with_overlap(parsed: list[tuple[np.ndarray, np.ndarray]], n_pixels: int, allow_overlap: bool) -> np.ndarray:
    """Object by object: name the first overlap, or let the earlier object keep the pixel."""
    flat = np.zeros(n_pixels, dtype=np.int32)
    for i, (starts, lengths) in enumerate(parsed):
        pixels = _run_pixels(starts, lengths)
        taken = flat[pixels] != 0
        if taken.any():
            if not allow_overlap:
                other = int(flat[pixels][taken][0])
                raise RLEError(f"object {i + 1} overlaps object {other} on {int(taken.sum())} pixels")
            pixels = pixels[~taken]
        flat[pixels] = i + 1
    return flat


def _run_pixels(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """0-indexed flat positions covered by the runs, without a Python loop."""
    total = int(lengths.sum())
    offsets = np.repeat(starts - 1 - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
    return np.arange(total, dtype=np.int64) + offsets
