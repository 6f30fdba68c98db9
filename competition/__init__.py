"""Toolkit for the 2018 Data Science Bowl nucleus-segmentation competition."""

from __future__ import annotations

import subprocess
from pathlib import Path

__version__ = "0.1.0"


def git_commit() -> str | None:
    """``git rev-parse HEAD`` of the checkout this code lives in, or None (not a checkout,
    no git): recorded in model folders and submission records."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return (out.stdout.strip() or None) if out.returncode == 0 else None


def source_hash() -> str:
    """16 hex digits of the SHA-256 of this package's Python sources (paths and bytes):
    recorded in model folders, so a member trained from a copy without git still says which
    code made it."""
    import hashlib

    root = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
