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


def cpu_model() -> str | None:
    """The CPU as ``/proc/cpuinfo`` names it (model name, family/model/stepping, L2 size and
    whether it has AMX), or None where that file is missing: recorded in model folders,
    because bf16 training is bit-reproducible on one CPU model but not across models
    (oneDNN picks its kernels, and their summation order, by the CPU)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            break  # the first processor is enough
        key, _, value = line.partition(":")
        fields[key.strip()] = value.strip()
    if "model name" not in fields:
        return None
    amx = "amx_bf16" in fields.get("flags", "").split()
    return (f"{fields['model name']} (family {fields.get('cpu family', '?')} model {fields.get('model', '?')} "
            f"stepping {fields.get('stepping', '?')}, cache {fields.get('cache size', '?')}, "
            f"{'AMX' if amx else 'no AMX'})")
