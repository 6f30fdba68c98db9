"""Shared fixtures: the real data (skipped when absent) and a small synthetic dataset."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
REAL_DATA = Path(os.environ.get("REAL_DATA_DIR", REPO.parent / "shared" / "dsb2018"))


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real competition data (``../shared/dsb2018``); skips the test when absent."""
    if not (REAL_DATA / "stage1_train").is_dir():
        pytest.skip(f"real data not found at {REAL_DATA}")
    return REAL_DATA
