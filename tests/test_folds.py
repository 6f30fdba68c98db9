"""Stratified folds, the folds file and the ``folds`` command."""

from __future__ import annotations

import collections
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from competition.data.folds import make_folds, read_folds, write_folds
from competition.data.types import write_types
from competition.errors import DataError, UserError

REPO = Path(__file__).resolve().parents[1]


def fake_types(n_fluorescence=54, n_histology=11, n_brightfield=3) -> dict[str, str]:
    ids = [f"{i:04x}{'e5' if i % 7 == 0 else 'ab'}" for i in range(n_fluorescence + n_histology + n_brightfield)]
    kinds = ["fluorescence"] * n_fluorescence + ["histology"] * n_histology + ["brightfield"] * n_brightfield
    return dict(zip(ids, kinds))


def counts(types, folds) -> collections.Counter:
    return collections.Counter((folds[i], k) for i, k in types.items())


def test_folds_cover_every_image():
    types = fake_types()
    folds = make_folds(types, n_folds=5, seed=0)
    assert sorted(folds) == sorted(types)
    assert set(folds.values()) == set(range(5))


def test_folds_stratified_and_balanced():
    types = fake_types()
    folds = make_folds(types, n_folds=5, seed=0)
    table = counts(types, folds)
    for kind, total in collections.Counter(types.values()).items():
        sizes = [table[(fold, kind)] for fold in range(5)]
        assert max(sizes) - min(sizes) <= 1, (kind, sizes)
        assert sum(sizes) == total
    # every type with at least n_folds images appears in every fold
    assert all(table[(fold, "histology")] >= 2 for fold in range(5))
    fold_sizes = collections.Counter(folds.values())
    assert max(fold_sizes.values()) - min(fold_sizes.values()) <= 1


def test_small_type_spread_over_folds():
    types = fake_types(n_fluorescence=10, n_histology=2, n_brightfield=3)
    folds = make_folds(types, n_folds=5, seed=3)
    brightfield_folds = [folds[i] for i, k in types.items() if k == "brightfield"]
    assert len(set(brightfield_folds)) == 3


def test_folds_deterministic_and_independent_of_order():
    types = fake_types()
    items = list(types.items())
    random.Random(1).shuffle(items)
    assert make_folds(types, seed=0) == make_folds(dict(items), seed=0)


def test_seed_changes_folds():
    types = fake_types()
    assert make_folds(types, seed=0) != make_folds(types, seed=1)


def test_bad_fold_counts():
    with pytest.raises(UserError, match="at least 2"):
        make_folds(fake_types(), n_folds=1)
    with pytest.raises(UserError, match="3 images"):
        make_folds(fake_types(2, 1, 0), n_folds=5)


def test_write_read_round_trip(tmp_path):
    types = fake_types()
    folds = make_folds(types)
    path = write_folds(tmp_path / "folds.csv", types, folds)
    frame = read_folds(path)
    assert list(frame.columns) == ["ImageId", "type", "fold"]
    assert frame["ImageId"].tolist() == sorted(types)
    assert dict(zip(frame["ImageId"], frame["fold"])) == folds
    assert dict(zip(frame["ImageId"], frame["type"])) == types
    assert frame["fold"].dtype == np.int64
    assert "0000e5" in set(frame["ImageId"])  # an id that looks like a number stays a string


def test_write_refuses_overwrite(tmp_path):
    types = fake_types()
    path = write_folds(tmp_path / "folds.csv", types, make_folds(types, seed=0))
    before = path.read_text()
    with pytest.raises(UserError, match="already exists"):
        write_folds(path, types, make_folds(types, seed=1))
    assert path.read_text() == before
    write_folds(path, types, make_folds(types, seed=1), overwrite=True)
    assert path.read_text() != before


def test_write_rejects_mismatched_ids(tmp_path):
    types = fake_types()
    folds = make_folds(types)
    folds.pop(next(iter(folds)))
    with pytest.raises(UserError, match="different images"):
        write_folds(tmp_path / "folds.csv", types, folds)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("ImageId,type\na,histology\n", "expected columns"),
        ("ImageId,type,fold\na,histology,x\n", "not a non-negative integer"),
        ("ImageId,type,fold\na,histology,-1\n", "not a non-negative integer"),
        ("ImageId,type,fold\na,histology,1.5\n", "not a non-negative integer"),
        ("ImageId,type,fold\na,histology,0\na,histology,1\n", "duplicate"),
        ("ImageId,type,fold\n,histology,0\n", "empty ImageId"),
        ("ImageId,type,fold\na,,0\n", "empty type"),
        ("", "cannot read"),
    ],
)
def test_read_folds_rejects_bad_files(tmp_path, text, problem):
    path = tmp_path / "bad-folds.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=problem) as info:
        read_folds(path)
    assert "bad-folds.csv" in str(info.value)


def test_read_folds_missing(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_folds(tmp_path / "nope.csv")


def test_folds_command(tmp_path):
    split = tmp_path / "stage1_train"
    types = {f"img{i}": "fluorescence" if i < 4 else "histology" for i in range(6)}
    for image_id in types:
        (split / image_id / "images").mkdir(parents=True)
        Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(split / image_id / "images" / f"{image_id}.png")
    types_csv = write_types(types, tmp_path / "types.csv")
    out = tmp_path / "build" / "folds.csv"
    command = [sys.executable, "-m", "competition", "folds", str(split), "--types", str(types_csv)]
    command += ["--n-folds", "2", "--out", str(out)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    frame = read_folds(out)
    assert sorted(frame["ImageId"]) == sorted(types)
    assert frame.groupby(["fold", "type"]).size().to_dict() == {
        (0, "fluorescence"): 2,
        (0, "histology"): 1,
        (1, "fluorescence"): 2,
        (1, "histology"): 1,
    }
    assert "fluorescence" in result.stdout.splitlines()[0]
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2
    assert "--overwrite" in again.stderr
