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


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for tests of tiny stand-in networks: plenty for them, and it keeps them
    fast on cores shared with other work (a team of 2 OpenMP threads waits at every layer for
    a descheduled one)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
