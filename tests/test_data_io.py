"""Reading images, labels and splits (competition.data.io) and unpacking downloads."""

from __future__ import annotations

import logging
import os
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from competition.data.download import download, extract_archive, find_credentials
from competition.data.io import (
    LoadedSample,
    Sample,
    labels_from_csv,
    list_samples,
    load_sample,
    load_split,
    read_image,
    read_image_shape,
    read_label,
)
from competition.errors import DataError, UserError
from competition.solution import write_solution

H, W = 67, 93


def disk(shape: tuple[int, int], center: tuple[float, float], radius: float) -> np.ndarray:
    rows, cols = np.ogrid[: shape[0], : shape[1]]
    return (rows - center[0]) ** 2 + (cols - center[1]) ** 2 <= radius**2


def save_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8) * 255).save(path)


def write_sample(split: Path, image_id: str, image: np.ndarray, masks: list[np.ndarray] | None) -> Path:
    folder = split / image_id
    (folder / "images").mkdir(parents=True)
    Image.fromarray(image).save(folder / "images" / f"{image_id}.png")
    if masks is not None:
        (folder / "masks").mkdir()
        for n, mask in enumerate(masks):
            save_mask(folder / "masks" / f"m{n:03d}.png", mask)
    return folder


def rgb_noise(shape=(H, W), seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(*shape, 3), dtype=np.uint8)


# --- read_image -------------------------------------------------------------------------


def test_read_image_rgb_kept(tmp_path):
    image = rgb_noise()
    Image.fromarray(image).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8
    assert np.array_equal(out, image)


def test_read_image_rgba_drops_alpha(tmp_path):
    rgba = np.dstack([rgb_noise(), np.full((H, W), 7, np.uint8)])
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.shape == (H, W, 3)
    assert np.array_equal(out, rgba[..., :3])


def test_read_image_gray_repeated(tmp_path):
    gray = rgb_noise()[..., 0]
    Image.fromarray(gray, mode="L").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.shape == (H, W, 3)
    assert all(np.array_equal(out[..., c], gray) for c in range(3))


def test_read_image_gray_alpha(tmp_path):
    gray = rgb_noise()[..., 0]
    Image.fromarray(np.dstack([gray, np.zeros_like(gray)]), mode="LA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert np.array_equal(out[..., 1], gray)


def test_read_image_16bit_scaled_by_own_max(tmp_path):
    gray = np.zeros((H, W), np.uint16)
    gray[10:20, 10:20] = 4000  # a 12-bit camera's values
    gray[30, 40] = 2000
    Image.fromarray(gray).save(tmp_path / "a.png")
    with Image.open(tmp_path / "a.png") as im:
        assert im.mode.startswith("I")  # really a 16-bit file
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8
    assert out.shape == (H, W, 3)
    assert out[15, 15, 0] == 255
    assert out[30, 40, 0] == 128  # round(2000 * 255 / 4000)
    assert out[0, 0, 0] == 0


def test_read_image_16bit_all_zero(tmp_path):
    Image.fromarray(np.zeros((H, W), np.uint16)).save(tmp_path / "a.png")
    assert read_image(tmp_path / "a.png").max() == 0


def test_read_image_palette(tmp_path):
    indices = (np.arange(H * W).reshape(H, W) % 3).astype(np.uint8)
    im = Image.fromarray(indices, mode="P")
    im.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9))
    im.save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out[0, 0].tolist() == [255, 0, 0]
    assert out[0, 1].tolist() == [0, 255, 0]
    assert out[0, 2].tolist() == [0, 0, 255]


def test_read_image_shape_from_header(tmp_path):
    Image.fromarray(rgb_noise()).save(tmp_path / "a.png")
    assert read_image_shape(tmp_path / "a.png") == (H, W)


def test_read_image_truncated_raises_naming_file(tmp_path):
    path = tmp_path / "cut-short.png"
    Image.fromarray(rgb_noise((256, 256))).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut-short.png"):
        read_image(path)


def test_read_image_garbage_raises(tmp_path):
    path = tmp_path / "garbage.png"
    path.write_bytes(b"not a png at all" * 10)
    with pytest.raises(DataError, match="garbage.png"):
        read_image(path)
    with pytest.raises(DataError, match="garbage.png"):
        read_image_shape(path)


def test_read_image_missing_raises(tmp_path):
    with pytest.raises(DataError, match="nothere.png.*not found"):
        read_image(tmp_path / "nothere.png")


# --- read_label -------------------------------------------------------------------------


def test_read_label_numbers_masks_in_sorted_order(tmp_path):
    a, b = disk((H, W), (20, 20), 8), disk((H, W), (40, 70), 10)
    save_mask(tmp_path / "masks" / "zz.png", a)  # sorted last
    save_mask(tmp_path / "masks" / "aa.png", b)  # sorted first
    label = read_label(tmp_path / "masks", shape=(H, W))
    assert label.dtype == np.int32
    assert label.shape == (H, W)
    assert np.array_equal(label == 1, b)
    assert np.array_equal(label == 2, a)
    assert np.array_equal(label == 0, ~(a | b))


def test_read_label_overlap_earlier_wins_and_warns_once(tmp_path, caplog):
    a, b = disk((H, W), (30, 30), 10), disk((H, W), (30, 42), 10)
    c = disk((H, W), (30, 80), 5)
    for name, mask in (("a.png", a), ("b.png", b), ("c.png", c)):
        save_mask(tmp_path / "masks" / name, mask)
    with caplog.at_level(logging.WARNING, logger="competition.data.io"):
        label = read_label(tmp_path / "masks", shape=(H, W))
    assert np.array_equal(label == 1, a)
    assert np.array_equal(label == 2, b & ~a)
    assert np.array_equal(label == 3, c)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert f"{int((a & b).sum())} pixel" in warnings[0].getMessage()
    assert "2 overlapping masks" in warnings[0].getMessage()
    again = read_label(tmp_path / "masks", shape=(H, W))
    assert np.array_equal(again, label)


def test_read_label_drops_empty_and_swallowed_masks(tmp_path, caplog):
    a = disk((H, W), (30, 30), 10)
    save_mask(tmp_path / "masks" / "a.png", a)
    save_mask(tmp_path / "masks" / "b.png", np.zeros((H, W), bool))
    save_mask(tmp_path / "masks" / "c.png", disk((H, W), (30, 30), 4))  # inside a
    save_mask(tmp_path / "masks" / "d.png", disk((H, W), (50, 80), 5))
    with caplog.at_level(logging.WARNING, logger="competition.data.io"):
        label = read_label(tmp_path / "masks", shape=(H, W))
    assert sorted(np.unique(label).tolist()) == [0, 1, 2]
    assert np.array_equal(label == 2, disk((H, W), (50, 80), 5))
    text = " ".join(r.getMessage() for r in caplog.records)
    assert "empty" in text and "b.png" in text
    assert "no pixel" in text


def test_read_label_size_mismatch_names_mask(tmp_path):
    save_mask(tmp_path / "masks" / "good.png", disk((H, W), (20, 20), 5))
    save_mask(tmp_path / "masks" / "wrong.png", disk((H + 1, W), (20, 20), 5))
    with pytest.raises(DataError, match="wrong.png"):
        read_label(tmp_path / "masks", shape=(H, W))
    with pytest.raises(DataError, match="wrong.png"):
        read_label(tmp_path / "masks")  # against the first mask
    with pytest.raises(DataError, match="good.png"):
        read_label(tmp_path / "masks", shape=(H + 1, W))


def test_read_label_no_masks_needs_shape(tmp_path):
    (tmp_path / "masks").mkdir()
    assert read_label(tmp_path / "masks", shape=(5, 7)).shape == (5, 7)
    with pytest.raises(DataError, match="no mask"):
        read_label(tmp_path / "masks")


def test_read_label_corrupt_mask_names_it(tmp_path):
    save_mask(tmp_path / "masks" / "a.png", disk((H, W), (20, 20), 5))
    (tmp_path / "masks" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nxx")
    with pytest.raises(DataError, match="broken.png"):
        read_label(tmp_path / "masks", shape=(H, W))


# --- splits -----------------------------------------------------------------------------


@pytest.fixture()
def split(tmp_path) -> Path:
    """Three training samples: b has two masks, a one, c none in its masks/ dir; t no masks/."""
    split = tmp_path / "stage1_train"
    write_sample(split, "b", rgb_noise(seed=1), [disk((H, W), (20, 20), 6), disk((H, W), (40, 60), 9)])
    write_sample(split, "a", rgb_noise(seed=2), [disk((H, W), (30, 30), 6)])
    write_sample(split, "c", rgb_noise((32, 40), seed=3), [])
    write_sample(split, "t", rgb_noise(seed=4), None)
    (split / ".DS_Store").write_bytes(b"")
    return split


def test_list_samples_sorted_with_masks_dir(split):
    samples = list_samples(split)
    assert [s.image_id for s in samples] == ["a", "b", "c", "t"]
    assert samples[0] == Sample("a", split / "a" / "images" / "a.png", split / "a" / "masks")
    assert samples[3].masks_dir is None


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_list_samples_missing_or_empty_dir_says_what_to_do(tmp_path, make):
    folder = tmp_path / "stage1_train"
    if make == "empty":
        folder.mkdir()
    with pytest.raises(DataError) as info:
        list_samples(folder)
    assert "make data" in str(info.value)
    assert "DATA_DIR" in str(info.value)


def test_list_samples_folder_without_image(split):
    (split / "noimage" / "images").mkdir(parents=True)
    with pytest.raises(DataError, match="noimage"):
        list_samples(split)
    assert [s.image_id for s in list_samples(split, skip_bad=True)] == ["a", "b", "c", "t"]


def test_load_sample(split):
    image, label = load_sample(list_samples(split)[1])
    assert image.shape == (H, W, 3)
    assert label.max() == 2
    assert load_sample(list_samples(split)[3])[1] is None


def test_load_split_reads_all(split):
    loaded, skipped = load_split(split)
    assert skipped == []
    assert [s.image_id for s in loaded] == ["a", "b", "c", "t"]
    assert isinstance(loaded[0], LoadedSample)
    assert np.array_equal(loaded[1].image, rgb_noise(seed=1))
    assert loaded[1].label.max() == 2
    assert loaded[2].label.shape == (32, 40)
    assert loaded[2].label.max() == 0
    assert loaded[3].label is None


def test_load_split_ids_and_without_labels(split):
    loaded, _ = load_split(split, with_labels=False, ids=["b", "t"])
    assert [s.image_id for s in loaded] == ["b", "t"]
    assert all(s.label is None for s in loaded)
    with pytest.raises(DataError, match="zzz"):
        load_split(split, ids=["a", "zzz"])


def test_load_split_skip_bad_keeps_going(split):
    (split / "a" / "images" / "a.png").write_bytes(b"corrupt")
    save_mask(split / "b" / "masks" / "zz-wrong-size.png", disk((H + 2, W), (5, 5), 3))
    with pytest.raises(DataError, match="a.png"):
        load_split(split)
    loaded, skipped = load_split(split, skip_bad=True)
    assert [s.image_id for s in loaded] == ["c", "t"]
    assert [image_id for image_id, _ in skipped] == ["a", "b"]
    assert "zz-wrong-size.png" in skipped[1][1]


def test_labels_from_csv_round_trip(tmp_path):
    label = np.zeros((H, W), np.int32)
    label[disk((H, W), (20, 20), 6)] = 1
    label[disk((H, W), (40, 60), 9)] = 2
    write_solution({"x": label, "empty": np.zeros((10, 12), np.int32)}, tmp_path / "sol.csv")
    labels = labels_from_csv(tmp_path / "sol.csv")
    assert sorted(labels) == ["empty", "x"]
    assert np.array_equal(labels["x"], label)
    assert labels["empty"].shape == (10, 12)
    assert labels["empty"].max() == 0


# --- download ---------------------------------------------------------------------------


@pytest.fixture()
def no_credentials(tmp_path, monkeypatch):
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "kaggle-config"))
    return tmp_path / "kaggle-config"


def test_download_without_credentials_fails_fast(tmp_path, no_credentials, monkeypatch):
    def no_subprocess(*args, **kwargs):
        raise AssertionError("must not run the kaggle CLI without credentials")

    monkeypatch.setattr("subprocess.run", no_subprocess)
    with pytest.raises(UserError) as info:
        download(tmp_path / "data")
    message = str(info.value)
    assert "kaggle.json" in message
    assert "KAGGLE_USERNAME" in message
    assert "rules" in message
    assert "DATA_DIR" in message


def test_find_credentials_sources(no_credentials, monkeypatch):
    assert find_credentials() is None
    no_credentials.mkdir()
    (no_credentials / "kaggle.json").write_text("{}")
    assert find_credentials().endswith("kaggle.json")
    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    assert find_credentials() == "KAGGLE_USERNAME/KAGGLE_KEY"
    monkeypatch.setenv("KAGGLE_API_TOKEN", "t")
    assert find_credentials() == "KAGGLE_API_TOKEN"


def test_download_does_nothing_when_data_present(tmp_path, no_credentials):
    (tmp_path / "data" / "stage1_train").mkdir(parents=True)
    (tmp_path / "data" / "stage1_test").mkdir()
    assert download(tmp_path / "data") == tmp_path / "data"


def test_download_cli_failure_is_user_error(tmp_path, no_credentials, monkeypatch):
    """A failing kaggle CLI (here a fake one that prints a 403) gives its stderr and advice."""
    monkeypatch.setenv("KAGGLE_USERNAME", "u")
    monkeypatch.setenv("KAGGLE_KEY", "k")
    fake = tmp_path / "bin" / "kaggle"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho '403 - Forbidden - You must accept this competition' >&2\nexit 1\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setattr("competition.data.download._check_network", lambda: None)
    with pytest.raises(UserError) as info:
        download(tmp_path / "data")
    assert "403" in str(info.value)
    assert "accept the competition rules" in str(info.value)


def _zip_bytes(members: dict[str, bytes]) -> bytes:
    import io

    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def test_extract_archive_nested(tmp_path):
    png = (tmp_path / "p.png")
    Image.fromarray(rgb_noise()).save(png)
    train = _zip_bytes({"abc/images/abc.png": png.read_bytes(), "abc/masks/m1.png": png.read_bytes()})
    test = _zip_bytes({"stage1_test/def/images/def.png": png.read_bytes()})  # top folder inside
    solution = _zip_bytes({"stage1_solution.csv": b"ImageId,EncodedPixels,Height,Width,Usage\n"})
    outer = tmp_path / "data-science-bowl-2018.zip"
    outer.write_bytes(
        _zip_bytes(
            {
                "stage1_train.zip": train,
                "stage1_test.zip": test,
                "stage1_solution.csv.zip": solution,
                "stage1_sample_submission.csv": b"ImageId,EncodedPixels\n",
                "__MACOSX/._junk": b"",
            }
        )
    )
    data = tmp_path / "data"
    written = extract_archive(outer, data)
    assert (data / "stage1_train" / "abc" / "images" / "abc.png").read_bytes() == png.read_bytes()
    assert (data / "stage1_train" / "abc" / "masks" / "m1.png").is_file()
    assert (data / "stage1_test" / "def" / "images" / "def.png").is_file()
    assert (data / "stage1_solution.csv").read_text().startswith("ImageId")
    assert (data / "stage1_sample_submission.csv").is_file()
    assert not (data / "__MACOSX").exists()
    assert sorted(p.name for p in data.iterdir()) == [
        "stage1_sample_submission.csv",
        "stage1_solution.csv",
        "stage1_test",
        "stage1_train",
    ]
    assert [p.name for p in written] == sorted(p.name for p in data.iterdir())
    assert list_samples(data / "stage1_train")[0].image_id == "abc"


@pytest.mark.parametrize("name", ["../evil.txt", "/abs/evil.txt", "a/../../evil.txt"])
def test_extract_archive_rejects_path_traversal(tmp_path, name):
    outer = tmp_path / "outer.zip"
    outer.write_bytes(_zip_bytes({name: b"x"}))
    with pytest.raises(DataError, match="unsafe path"):
        extract_archive(outer, tmp_path / "data")
    assert not (tmp_path / "evil.txt").exists()


def test_extract_archive_rejects_traversal_in_nested_zip(tmp_path):
    outer = tmp_path / "outer.zip"
    outer.write_bytes(_zip_bytes({"stage1_train.zip": _zip_bytes({"../../evil.txt": b"x"})}))
    with pytest.raises(DataError, match="unsafe path"):
        extract_archive(outer, tmp_path / "data")
    assert not (tmp_path / "evil.txt").exists()
    assert not (tmp_path / "data" / "stage1_train").exists()


def test_extract_archive_corrupt_zip(tmp_path):
    path = tmp_path / "bad.zip"
    path.write_bytes(b"PK not really")
    with pytest.raises(DataError, match="bad.zip"):
        extract_archive(path, tmp_path / "data")


# --- real data --------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_samples_and_labels(real_data):
    split = real_data / "stage1_train"
    samples = list_samples(split)
    assert len(samples) == 664
    assert all(s.masks_dir is not None for s in samples)
    image_id = "00071198d059ba7f5914a526d124d28e6d010c92466da21d4a04cd5413362552"
    n_masks = len(list((split / image_id / "masks").glob("*.png")))
    assert n_masks == 27
    start = time.perf_counter()
    loaded, skipped = load_split(split, ids=[s.image_id for s in samples[:8]])
    assert time.perf_counter() - start < 30
    assert skipped == []
    assert [s.image_id for s in loaded][0] == image_id
    first = loaded[0]
    assert first.image.dtype == np.uint8 and first.image.shape == (256, 256, 3)
    assert first.label.shape == first.image.shape[:2]
    assert first.label.max() == n_masks
    assert len(np.unique(first.label)) == n_masks + 1
    test_samples = list_samples(real_data / "stage1_test")
    assert len(test_samples) == 65
    assert all(s.masks_dir is None for s in test_samples)
