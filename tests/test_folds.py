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
    command += ["--n-folds", "2", "--out", str(out), "--by", "random"]
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


def _condition_split(root: Path) -> dict[str, tuple[str, tuple[int, int], int]]:
    """Three imaging conditions: dim 64×64, bright 64×64 and 48×80 fluorescence (4 each)."""
    drawn = {}
    rng = np.random.default_rng(0)
    for i in range(12):
        kind = ("dim", "bright", "wide")[i // 4]
        shape = (48, 80) if kind == "wide" else (64, 64)
        level = 40 if kind == "dim" else 200
        image = np.clip(rng.normal(level, 3, (*shape, 3)), 0, 255).astype(np.uint8)
        image[: shape[0] // 2] //= 4  # dark background half
        image_id = f"{kind}{i}"
        (root / image_id / "images").mkdir(parents=True)
        Image.fromarray(image).save(root / image_id / "images" / f"{image_id}.png")
        drawn[image_id] = (kind, shape, level)
    return drawn


def test_condition_folds_keep_each_condition_whole(tmp_path):
    split = tmp_path / "stage1_train"
    drawn = _condition_split(split)
    out = tmp_path / "folds.csv"
    command = [sys.executable, "-m", "competition", "folds", str(split), "--n-folds", "3", "--out", str(out),
               "--max-condition", "4"]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    frame = read_folds(out)
    assert "condition" in frame.columns
    by_kind = {}
    for row in frame.itertuples():
        by_kind.setdefault(drawn[row.ImageId][0], set()).add((row.fold, row.condition))
    for kind, pairs in by_kind.items():
        assert len(pairs) == 1, (kind, pairs)  # one condition, in one fold
    assert len({next(iter(p))[0] for p in by_kind.values()}) >= 2  # not all in one fold


def test_group_conditions_splits_big_groups_and_is_deterministic():
    from competition.data.conditions import ImageFeatures, condition_folds, group_conditions

    rng = np.random.default_rng(1)
    feats = [ImageFeatures(f"i{k}", "fluorescence", 256, 256, tuple(rng.normal(0.2, 0.01, 7)))
             for k in range(20)]
    feats += [ImageFeatures(f"h{k}", "histology", 256, 320, tuple(rng.normal(0.7, 0.01, 7)))
              for k in range(5)]
    conditions = group_conditions(feats, max_size=8)
    sizes = {}
    for c in conditions.values():
        sizes[c] = sizes.get(c, 0) + 1
    assert max(sizes.values()) <= 8
    assert all(c.startswith("histology-256x320") for i, c in conditions.items() if i.startswith("h"))
    assert len({conditions[f"h{k}"] for k in range(5)}) == 1
    assert group_conditions(list(reversed(feats)), max_size=8) == conditions
    types = {f.image_id: f.type for f in feats}
    folds = condition_folds(conditions, types, n_folds=3)
    for c in set(conditions.values()):
        assert len({folds[i] for i, cc in conditions.items() if cc == c}) == 1


def test_a_folds_file_of_another_dataset_is_kept_aside_and_remade(tmp_path):
    from competition.train.dataset import resolve_types_and_folds

    rng = np.random.default_rng(0)
    images = {f"new{i}": rng.integers(0, 60, (32, 32, 3), dtype=np.uint8) for i in range(6)}
    path = tmp_path / "folds.csv"
    old = "ImageId,type,fold\n" + "".join(f"old{i},fluorescence,{i % 2}\n" for i in range(4))
    path.write_text(old)
    types, folds = resolve_types_and_folds(images, tmp_path / "split", folds_path=path)
    assert sorted(folds) == sorted(images)
    assert sorted(read_folds(path)["ImageId"]) == sorted(images)
    kept = [f for f in tmp_path.glob("folds.*.csv")]
    assert len(kept) == 1 and kept[0].read_text() == old
    again = resolve_types_and_folds(images, tmp_path / "split", folds_path=path)
    assert again == (types, folds)  # a matching file is read, not remade
    assert len(list(tmp_path.glob("folds.*.csv"))) == 1


def test_image_features_equal_the_per_pixel_formula():
    # the features are computed per channel for speed; they must keep the bits of the
    # reductions over each pixel's three values that wrote the committed folds file
    from competition.data.conditions import image_features

    rng = np.random.default_rng(3)
    for h, w in ((5, 9), (256, 320), (700, 1001)):
        image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        step = max(1, int(np.sqrt(h * w / 65536)))
        sub = image[::step, ::step].reshape(-1, 3).astype(np.float32) / 255.0
        grey = sub.mean(axis=1)
        expected = (*sub.mean(axis=0).tolist(), float(np.median(grey)), float(np.percentile(grey, 99)),
                    float(grey.std()), float((sub.max(axis=1) - sub.min(axis=1)).mean()))
        got = image_features("x", image, "histology")
        assert got.stats == expected
        assert (got.height, got.width, got.type) == (h, w, "histology")
