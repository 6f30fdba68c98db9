"""Cross-validation folds, stratified by image type.

Folds are made once (``python -m competition folds``), written to ``build/folds.csv``
(``ImageId,type,fold``) and only read afterwards, so every model trains and validates on the
same split.
"""

from __future__ import annotations

import csv
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from competition.csvio import atomic_write
from competition.errors import DataError, UserError

__all__ = ["FOLD_COLUMNS", "CONDITION_COLUMNS", "make_folds", "make_condition_folds", "write_folds",
           "read_folds"]

FOLD_COLUMNS = ("ImageId", "type", "fold")
#: Condition-out folds (:mod:`competition.data.conditions`) also name each image's condition.
CONDITION_COLUMNS = (*FOLD_COLUMNS, "condition")


def make_folds(types: Mapping[str, str], n_folds: int = 5, seed: int = 0) -> dict[str, int]:
    """Assign each image to a fold, stratified by type.

    Ids are sorted first, so the result depends only on the (id, type) pairs, ``n_folds``
    and ``seed``, never on dict order. Within each type (types taken in sorted order) the
    ids are shuffled with ``numpy.random.default_rng(seed)`` and dealt round-robin to the
    folds, so every type's fold sizes differ by at most one. Each type starts dealing where
    the previous one stopped, so a type with fewer images than folds is spread over
    different folds and the total fold sizes also differ by at most one.

    Args:
        types: ImageId -> image type (any strings; normally :data:`~competition.data.types.IMAGE_TYPES`).
        n_folds: number of folds, at least 2.
        seed: shuffling seed.

    Returns:
        ImageId -> fold in ``0..n_folds-1``, sorted by ImageId.

    Raises:
        UserError: ``n_folds`` < 2 or more folds than images.
    """
    if n_folds < 2:
        raise UserError(f"n_folds must be at least 2, got {n_folds}")
    if len(types) < n_folds:
        raise UserError(f"cannot make {n_folds} folds from {len(types)} images")
    rng = np.random.default_rng(seed)
    folds: dict[str, int] = {}
    start = 0
    for kind in sorted(set(types.values())):
        ids = sorted(image_id for image_id, k in types.items() if k == kind)
        order = rng.permutation(len(ids))
        for rank, position in enumerate(order.tolist()):
            folds[ids[position]] = (start + rank) % n_folds
        start = (start + len(ids)) % n_folds
    return dict(sorted(folds.items()))


def make_condition_folds(images: Mapping[str, np.ndarray], types: Mapping[str, str],
                         n_folds: int = 5, max_size: int | None = None
                         ) -> tuple[dict[str, int], dict[str, str]]:
    """Condition-out folds (see :mod:`competition.data.conditions`): whole imaging conditions
    per fold, no condition bigger than half a fold.

    Args:
        images: ImageId -> H×W×3 uint8 image.
        types: ImageId -> image type.
        max_size: the largest condition; default half a fold (``n / (2 * n_folds)``).

    Returns:
        (ImageId -> fold, ImageId -> condition), sorted by ImageId.
    """
    from competition.data.conditions import condition_folds, group_conditions, image_features

    if n_folds < 2:
        raise UserError(f"n_folds must be at least 2, got {n_folds}")
    feats = [image_features(i, images[i], types[i]) for i in sorted(images)]
    if max_size is None:
        max_size = max(1, round(len(feats) / (2 * n_folds)))
    conditions = group_conditions(feats, max_size=max_size)
    return condition_folds(conditions, types, n_folds), conditions


def write_folds(
    path: str | Path,
    types: Mapping[str, str],
    folds: Mapping[str, int],
    *,
    overwrite: bool = False,
    conditions: Mapping[str, str] | None = None,
) -> Path:
    """Write ``ImageId,type,fold`` rows (plus ``condition`` when given) sorted by ImageId,
    atomically.

    Folds are written once and read by every later training run, so an existing file is
    refused unless ``overwrite=True``.

    Raises:
        UserError: the file exists and ``overwrite`` is False; ``types`` and ``folds`` have
            different ids; a negative fold.
    """
    path = Path(path)
    if set(types) != set(folds):
        only_types = sorted(set(types) - set(folds))
        only_folds = sorted(set(folds) - set(types))
        raise UserError(
            f"types and folds name different images ({len(only_types)} only in types, "
            f"{len(only_folds)} only in folds, e.g. {(only_types or only_folds)[0]})"
        )
    for image_id, fold in folds.items():
        if int(fold) < 0:
            raise UserError(f"image {image_id}: negative fold {fold}")
    with atomic_write(path, overwrite=overwrite) as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(FOLD_COLUMNS if conditions is None else CONDITION_COLUMNS)
        for image_id in sorted(folds):
            row = (image_id, types[image_id], int(folds[image_id]))
            writer.writerow(row if conditions is None else (*row, conditions[image_id]))
    return path


def read_folds(path: str | Path):
    """Read a folds file written by :func:`write_folds`.

    Returns:
        ``pandas.DataFrame`` with columns ImageId (str), type (str), fold (int64) and, for
        condition-out folds, condition (str), in file order.

    Raises:
        DataError: unreadable file, wrong columns, an empty or duplicated ImageId, an empty
            type, a fold that is not a non-negative integer (messages name the file).
    """
    import pandas as pd

    path = Path(path)
    try:
        # dtype=str: ids such as "1e488c42..." must not become numbers.
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    except FileNotFoundError:
        raise DataError(f"folds file {path} not found: run `python -m competition folds` (or `make folds`)") from None
    except (OSError, UnicodeDecodeError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"cannot read folds file {path}: {exc}") from None
    if tuple(frame.columns) not in (FOLD_COLUMNS, CONDITION_COLUMNS):
        raise DataError(f"{path}: expected columns {','.join(FOLD_COLUMNS)}, got {','.join(map(str, frame.columns))}")
    frame["ImageId"] = frame["ImageId"].str.strip()
    frame["type"] = frame["type"].str.strip()
    if (frame["ImageId"] == "").any():
        raise DataError(f"{path} line {int(np.flatnonzero(frame['ImageId'] == '')[0]) + 2}: empty ImageId")
    duplicated = frame["ImageId"].duplicated()
    if duplicated.any():
        raise DataError(f"{path}: duplicate ImageId {frame['ImageId'][duplicated].iloc[0]}")
    if (frame["type"] == "").any():
        raise DataError(f"{path} line {int(np.flatnonzero(frame['type'] == '')[0]) + 2}: empty type")
    folds = pd.to_numeric(frame["fold"].str.strip(), errors="coerce")
    valid = folds.notna() & (folds >= 0) & (folds == folds.round())
    if not valid.all():
        line = int(np.flatnonzero(~valid.to_numpy())[0])
        raise DataError(f"{path} line {line + 2}: fold {frame['fold'].iloc[line]!r} is not a non-negative integer")
    frame["fold"] = folds.astype("int64")
    return frame
