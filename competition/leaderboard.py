"""The local leaderboard: one CSV row per scoring run, kept forever.

``submissions/leaderboard.csv`` holds time, submission file and hash, solution name, the
score overall, with its bootstrap interval, and per image type and Usage. Rows are appended by
rewriting the file atomically, so a crash never leaves half a row.
"""

from __future__ import annotations

import csv
import hashlib
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path

from competition.csvio import atomic_write
from competition.errors import DataError

DEFAULT_PATH = Path("submissions/leaderboard.csv")
COLUMNS = (
    "time",
    "submission",
    "sha256",
    "solution",
    "n_images",
    "score",
    "ci_low",
    "ci_high",
    "fluorescence",
    "histology",
    "brightfield",
    "public",
    "private",
)


def file_hash(path: str | Path) -> str:
    """First 16 hex digits of the file's SHA-256."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def read_rows(path: str | Path = DEFAULT_PATH) -> list[dict[str, str]]:
    """All rows of the history, oldest first; [] when the file does not exist."""
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise DataError(f"{path}: unexpected columns {reader.fieldnames}, expected {list(COLUMNS)}")
        return list(reader)


def append_row(
    submission: str | Path,
    solution: str | Path,
    *,
    n_images: int,
    score: float,
    interval: tuple[float, float],
    groups: Mapping[str, float],
    path: str | Path = DEFAULT_PATH,
) -> dict[str, str]:
    """Append one scoring run to the history (atomic rewrite). Returns the row written.

    Args:
        groups: extra scores by column name (image types, ``public``, ``private``); other
            names are ignored, missing ones are left empty.
    """
    rows = read_rows(path)
    row = {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "submission": str(submission),
        "sha256": file_hash(submission),
        "solution": Path(solution).name,
        "n_images": str(n_images),
        "score": f"{score:.4f}",
        "ci_low": f"{interval[0]:.4f}",
        "ci_high": f"{interval[1]:.4f}",
    }
    for column in COLUMNS[8:]:
        row[column] = f"{groups[column]:.4f}" if column in groups else ""
    with atomic_write(path) as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows + [row])
    return row


def format_rows(rows: list[dict[str, str]], *, by: str = "score") -> str:
    """The history as an aligned text table, best first (by ``by``, then newest)."""
    if not rows:
        return "no scored submissions yet"
    ordered = sorted(rows, key=lambda r: (_number(r.get(by, "")), r["time"]), reverse=True)
    shown = ("score", "ci_low", "ci_high", "fluorescence", "histology", "brightfield", "n_images", "solution", "time", "submission")
    table = [shown] + [tuple(r[c] for c in shown) for r in ordered]
    widths = [max(len(row[i]) for row in table) for i in range(len(shown))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("-inf")
