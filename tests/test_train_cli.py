"""train-all / train-one through the CLI, by subprocess, on a small synthetic dataset."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "competition", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


def write_dataset(root: Path, n: int = 12, seed: int = 0) -> Path:
    """A Kaggle-layout stage1_train: ``synth`` when available, else disks written here."""
    try:
        import competition.synth  # noqa: F401
    except ImportError:
        pass
    else:
        out = cli("synth", root, "--n-train", n, "--n-test", 2, "--seed", seed, cwd=REPO)
        assert out.returncode == 0, out.stderr
        return root
    rng = np.random.default_rng(seed)
    kinds = ["fluorescence", "histology", "brightfield"]
    for i in range(n):
        image_id = f"img{i:03d}"
        d = root / "stage1_train" / image_id
        (d / "images").mkdir(parents=True)
        (d / "masks").mkdir()
        h, w = 64 + 8 * (i % 3), 80
        yy, xx = np.mgrid[:h, :w]
        image = np.full((h, w, 3), 20, np.uint8)
        taken = np.zeros((h, w), bool)
        for k in range(5):
            cy, cx, r = rng.integers(8, h - 8), rng.integers(8, w - 8), rng.integers(4, 8)
            mask = ((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) & ~taken
            taken |= mask
            image[mask] = 200
            Image.fromarray(mask.astype(np.uint8) * 255).save(d / "masks" / f"m{k}.png")
        if kinds[i % 3] != "fluorescence":
            image = 255 - image
        Image.fromarray(image).save(d / "images" / f"{image_id}.png")
    return root


def test_missing_data_dir_exits_2_with_a_hint(tmp_path):
    out = cli("train-all", "--recipe", "tiny", "--data", tmp_path / "nowhere", "--models",
              tmp_path / "m", cwd=tmp_path)
    assert out.returncode == 2
    assert "make data" in out.stderr and "DATA_DIR=" in out.stderr
    assert "Traceback" not in out.stderr


def test_unknown_member_exits_2_listing_members(tmp_path):
    out = cli("train-one", "--recipe", "tiny", "--member", "all/nope", "--data", tmp_path,
              cwd=tmp_path)
    assert out.returncode == 2
    assert "all/mnv2" in out.stderr


@pytest.mark.slow
def test_train_all_tiny_end_to_end_then_skips(tmp_path):
    pytest.importorskip("competition.data.folds")
    data = write_dataset(tmp_path / "data")
    models, folds = tmp_path / "models", tmp_path / "folds.csv"
    args = ("train-all", "--recipe", "tiny", "--data", data, "--models", models, "--folds",
            folds, "--cache-dir", tmp_path / "cache", "--device", "cpu")
    out = cli(*args, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert folds.is_file(), "a missing folds file is made"
    assert "folds file" in out.stderr
    for key in ("all/mnv2", "fluorescence/mnv2-ft", "histology/mnv2-ft", "brightfield/mnv2-ft"):
        folder = models / "tiny" / key
        for name in ("config.json", "best.pt", "last.pt", "log.csv", "metrics.json",
                     "curves.png", "lr.png", "done"):
            assert (folder / name).is_file(), f"{key}/{name}"
    assert "recipe tiny" in out.stdout
    again = cli(*args, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert again.stderr.count("finished earlier") == 4
    assert "read 12 training images from cache" in again.stderr or "from cache" in again.stderr


@pytest.mark.slow
def test_train_one_needs_its_parent(tmp_path):
    pytest.importorskip("competition.data.folds")
    data = write_dataset(tmp_path / "data", n=9, seed=1)
    out = cli("train-one", "--recipe", "tiny", "--member", "histology/mnv2-ft", "--data", data,
              "--models", tmp_path / "models", "--folds", tmp_path / "folds.csv",
              "--cache-dir", "", cwd=tmp_path)
    assert out.returncode == 2
    assert "init_from all/mnv2 has no best.pt" in out.stderr


@pytest.mark.slow
def test_train_one_validates_on_the_fold_asked_for(tmp_path):
    """--fold N: the recipe's members held out fold N instead of the recipe's fold 0."""
    import json

    import pandas as pd

    pytest.importorskip("competition.data.folds")
    data = write_dataset(tmp_path / "data", n=12, seed=2)
    models, folds = tmp_path / "models", tmp_path / "folds.csv"
    out = cli("train-one", "--recipe", "tiny", "--member", "all/mnv2", "--fold", 1, "--max-epochs", 1,
              "--data", data, "--models", models, "--folds", folds, "--cache-dir", "", "--device", "cpu",
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    config = json.loads((models / "tiny" / "all/mnv2" / "config.json").read_text())
    table = pd.read_csv(folds)
    assert config["fold"] == 1 and config["recipe"] == "tiny"
    assert config["n_valid"] == int((table["fold"] == 1).sum()) > 0
    assert "(fold 1)" in out.stderr
    bad = cli("train-one", "--recipe", "tiny", "--member", "all/mnv2", "--fold", -1, "--data", data,
              "--models", models, "--folds", folds, "--cache-dir", "", cwd=tmp_path)
    assert bad.returncode == 2 and "fold number" in bad.stderr
