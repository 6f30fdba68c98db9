"""Image-type rule, types CSV, contact sheets and the ``types`` command."""

from __future__ import annotations

import collections
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from competition.data.types import (
    COLOUR_THRESHOLD,
    DARK_BACKGROUND_THRESHOLD,
    IMAGE_TYPES,
    classify_image,
    classify_split,
    image_statistics,
    read_types,
    save_contact_sheets,
    write_types,
)
from competition.errors import DataError

REPO = Path(__file__).resolve().parents[1]
H, W = 67, 93


def blobs(shape=(H, W), n_blobs=6, radius=7, seed=0) -> np.ndarray:
    """A bool mask of a few disks at random places."""
    rng = np.random.default_rng(seed)
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    mask = np.zeros(shape, bool)
    for _ in range(n_blobs):
        r, c = rng.integers(radius, shape[0] - radius), rng.integers(radius, shape[1] - radius)
        mask |= (rows - r) ** 2 + (cols - c) ** 2 <= radius**2
    return mask


def draw(kind: str, shape=(H, W), seed=0) -> np.ndarray:
    """An image of one kind: background and nuclei colours plus a little noise."""
    colours = {
        "fluorescence": ((12, 12, 12), (200, 200, 200)),  # dark background, bright nuclei
        "histology": ((235, 200, 225), (110, 50, 150)),  # pink background, purple nuclei
        "brightfield": ((215, 215, 215), (90, 90, 90)),  # light gray background, dark nuclei
    }
    background, nucleus = colours[kind]
    image = np.empty((*shape, 3), np.float64)
    image[:] = background
    image[blobs(shape, seed=seed)] = nucleus
    noise = np.random.default_rng(seed + 1).normal(0, 4, size=shape)[..., None]  # same on R, G, B
    return np.clip(image + noise, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", IMAGE_TYPES)
def test_classify_drawn_images(kind):
    for seed in range(3):
        assert classify_image(draw(kind, seed=seed)) == kind


def test_tinted_fluorescence_stays_fluorescence():
    image = draw("fluorescence")
    image[..., 0] //= 4  # a coloured (cyan) dark-background image
    assert classify_image(image) == "fluorescence"


def test_statistics_of_gray_and_coloured():
    background, colour = image_statistics(draw("brightfield"))
    assert colour == 0.0
    assert background > DARK_BACKGROUND_THRESHOLD
    background, colour = image_statistics(draw("histology"))
    assert colour >= COLOUR_THRESHOLD
    background, _ = image_statistics(draw("fluorescence"))
    assert background < DARK_BACKGROUND_THRESHOLD


def test_classify_rejects_wrong_shape():
    with pytest.raises(ValueError, match="H×W×3"):
        classify_image(np.zeros((H, W), np.uint8))


def write_split(root: Path, kinds: dict[str, str]) -> Path:
    for image_id, kind in kinds.items():
        folder = root / image_id / "images"
        folder.mkdir(parents=True)
        Image.fromarray(draw(kind, seed=len(image_id))).save(folder / f"{image_id}.png")
    return root


KINDS = {"f1": "fluorescence", "f2": "fluorescence", "h1": "histology", "b1": "brightfield", "h2": "histology"}


def test_classify_split_and_skip_bad(tmp_path):
    split = write_split(tmp_path / "train", KINDS)
    assert classify_split(split) == dict(sorted(KINDS.items()))
    (split / "h2" / "images" / "h2.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="h2.png"):
        classify_split(split)
    assert "h2" not in classify_split(split, skip_bad=True)


def test_types_csv_round_trip(tmp_path):
    path = write_types({"b": "histology", "a": "fluorescence"}, tmp_path / "types.csv")
    assert path.read_text() == "ImageId,type\na,fluorescence\nb,histology\n"
    assert read_types(path) == {"a": "fluorescence", "b": "histology"}


def test_read_types_takes_a_folds_file(tmp_path):
    """A folds file starts with ImageId,type: `competition score --types build/folds.csv`."""
    path = tmp_path / "folds.csv"
    path.write_text("ImageId,type,fold,condition\na,fluorescence,0,fluorescence-256x256-0\nb,histology,3,histology-256x320-1\n")
    assert read_types(path) == {"a": "fluorescence", "b": "histology"}


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("id,kind\na,fluorescence\n", "header"),
        ("ImageId,type\na,fluorescent\n", "unknown image type"),
        ("ImageId,type\na,histology\na,histology\n", "duplicate"),
        ("ImageId,type\n,histology\n", "empty ImageId"),
        ("ImageId,type\na,histology,extra\n", "2 fields"),
        ("ImageId,type,fold\na,histology\n", "3 fields"),
        ("type,ImageId\nhistology,a\n", "header"),
        ("", "header"),
    ],
)
def test_read_types_rejects_bad_files(tmp_path, text, problem):
    path = tmp_path / "bad-types.csv"
    path.write_text(text)
    with pytest.raises(DataError, match=problem) as info:
        read_types(path)
    assert "bad-types.csv" in str(info.value)


def test_write_types_rejects_unknown_type(tmp_path):
    with pytest.raises(DataError, match="zebra"):
        write_types({"a": "zebra"}, tmp_path / "t.csv")
    assert not (tmp_path / "t.csv").exists()


def test_contact_sheets(tmp_path):
    split = write_split(tmp_path / "train", KINDS)
    sheets = save_contact_sheets(split, KINDS, tmp_path / "sheets", max_per_sheet=1, thumb=32)
    assert [p.name for p in sheets] == ["contact-fluorescence.png", "contact-histology.png", "contact-brightfield.png"]
    with Image.open(sheets[1]) as im:
        sheet = np.asarray(im.convert("RGB"))
    assert sheet.shape[1] == 32 + 2  # max_per_sheet=1: one thumbnail per sheet
    assert classify_image(np.ascontiguousarray(sheet[:32, :32])) == "histology"
    wide = save_contact_sheets(split, KINDS, tmp_path / "wide", thumb=32)
    with Image.open(wide[0]) as im:
        assert im.size[0] == 2 * (32 + 2)  # two fluorescence images side by side


def test_types_command(tmp_path):
    split = write_split(tmp_path / "stage1_train", KINDS)
    out = tmp_path / "out" / "types.csv"
    result = subprocess.run(
        [sys.executable, "-m", "competition", "types", str(split), "--out", str(out), "--sheets", str(tmp_path / "sheets")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert read_types(out) == KINDS
    lines = result.stdout.splitlines()
    assert "fluorescence 2" in lines
    assert "histology 2" in lines
    assert "brightfield 1" in lines
    assert (tmp_path / "sheets" / "contact-brightfield.png").is_file()
    assert sorted(p.name for p in split.iterdir()) == sorted(KINDS)  # nothing written beside the inputs


def test_types_command_missing_dir(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "competition", "types", str(tmp_path / "nope"), "--out", str(tmp_path / "t.csv")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "make data" in result.stderr


@pytest.mark.realdata
def test_real_type_counts(real_data):
    """The rule's counts on the real data (the data README says about 541 / 107 / 16)."""
    train = collections.Counter(classify_split(real_data / "stage1_train").values())
    assert train == {"fluorescence": 541, "histology": 107, "brightfield": 16}
    test = collections.Counter(classify_split(real_data / "stage1_test").values())
    assert test == {"fluorescence": 53, "histology": 12}
