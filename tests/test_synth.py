"""Tests of competition.synth: the seeded synthetic dataset in Kaggle's layout."""

from __future__ import annotations

import csv
import hashlib
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import competition.synth as synth
from competition.errors import UserError
from competition.rle import label_to_rles
from competition.solution import read_solution

REPO = Path(__file__).resolve().parents[1]
HEX64 = re.compile(r"[0-9a-f]{64}")
TOP_LEVEL = {"stage1_train", "stage1_test", "stage1_sample_submission.csv", "stage1_solution.csv", "types.csv", "synth.json"}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The default dataset, with every (kind, image, label) draw_image returned, in order."""
    drawn = []
    real_draw = synth.draw_image

    def recording_draw(kind, shape, rng):
        image, label = real_draw(kind, shape, rng)
        drawn.append((kind, image, label))
        return image, label

    out = tmp_path_factory.mktemp("synth") / "data"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(synth, "draw_image", recording_draw)
        summary = synth.generate_dataset(out)
    train_ids = sorted(p.name for p in (out / "stage1_train").iterdir())
    test_ids = sorted(p.name for p in (out / "stage1_test").iterdir())
    # Images are drawn train first, then test, each in index order (ids are sha256 of the index).
    order = [synth._image_id(0, "train", i) for i in range(summary.n_train)]
    order += [synth._image_id(0, "test", i) for i in range(summary.n_test)]
    by_id = dict(zip(order, drawn))
    with open(out / "types.csv", newline="") as handle:
        types = {row["ImageId"]: row["type"] for row in csv.DictReader(handle)}
    return {"out": out, "summary": summary, "train": train_ids, "test": test_ids, "drawn": by_id, "types": types}


def read_png(path: Path) -> tuple[str, np.ndarray]:
    with Image.open(path) as im:
        return im.mode, np.asarray(im)


def masks_of(folder: Path) -> list[np.ndarray]:
    return [read_png(p)[1] for p in sorted((folder / "masks").iterdir())]


def tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- layout


def test_top_level_holds_exactly_the_kaggle_files_and_no_staging_left(world):
    assert {p.name for p in world["out"].iterdir()} == TOP_LEVEL


def test_default_counts_split_the_types_in_real_proportions(world):
    summary = world["summary"]
    assert (len(world["train"]), len(world["test"])) == (24, 12)
    assert summary.train_types == {"fluorescence": 12, "histology": 8, "brightfield": 4}
    assert summary.test_types == {"fluorescence": 6, "histology": 4, "brightfield": 2}


def test_image_ids_are_64_lowercase_hex_and_unique_across_splits(world):
    ids = world["train"] + world["test"]
    assert all(HEX64.fullmatch(i) for i in ids)
    assert len(set(ids)) == len(ids)


def test_train_folders_hold_the_image_and_one_binary_mask_per_drawn_nucleus(world):
    n_masks = 0
    for image_id in world["train"]:
        folder = world["out"] / "stage1_train" / image_id
        assert sorted(p.name for p in folder.iterdir()) == ["images", "masks"]
        assert [p.name for p in (folder / "images").iterdir()] == [f"{image_id}.png"]
        mode, image = read_png(folder / "images" / f"{image_id}.png")
        assert all(HEX64.fullmatch(p.stem) and p.suffix == ".png" for p in (folder / "masks").iterdir())
        masks = masks_of(folder)
        assert masks, image_id
        for mask in masks:
            assert mask.dtype == np.uint8 and mask.shape == image.shape[:2]
            assert set(np.unique(mask).tolist()) == {0, 255}  # binary and non-empty
        coverage = np.sum([m > 0 for m in masks], axis=0)
        assert coverage.max() == 1  # no pixel in two masks
        label = world["drawn"][image_id][2]
        on_disk = sorted(label_to_rles((m > 0).astype(np.int32)) [0] for m in masks)
        assert on_disk == sorted(label_to_rles(label))  # exactly the drawn nuclei
        n_masks += len(masks)
    assert n_masks == world["summary"].n_train_nuclei


def test_train_masks_read_back_through_the_project_loader(world):
    from competition.data.io import load_split

    loaded, skipped = load_split(world["out"] / "stage1_train", ids=world["train"][:3])
    assert skipped == []
    for sample in loaded:
        assert sample.label.max() == world["drawn"][sample.image_id][2].max()


def test_test_folders_hold_only_the_image(world):
    for image_id in world["test"]:
        folder = world["out"] / "stage1_test" / image_id
        assert [p.name for p in folder.iterdir()] == ["images"]
        assert [p.name for p in (folder / "images").iterdir()] == [f"{image_id}.png"]


def test_images_are_written_as_drawn_with_alpha_255_when_rgba(world):
    for split in ("train", "test"):
        for image_id in world[split]:
            mode, pixels = read_png(world["out"] / f"stage1_{split}" / image_id / "images" / f"{image_id}.png")
            assert mode in ("RGB", "RGBA")
            if mode == "RGBA":
                assert (pixels[..., 3] == 255).all()
            np.testing.assert_array_equal(pixels[..., :3], world["drawn"][image_id][1])


def test_fluorescence_is_stored_both_rgba_and_rgb_and_brightfield_rgb(world):
    modes = {"fluorescence": set(), "brightfield": set()}
    for split in ("train", "test"):
        for image_id in world[split]:
            kind = world["types"][image_id]
            if kind in modes:
                with Image.open(world["out"] / f"stage1_{split}" / image_id / "images" / f"{image_id}.png") as im:
                    modes[kind].add(im.mode)
    assert modes["fluorescence"] == {"RGB", "RGBA"}
    assert modes["brightfield"] == {"RGB"}


def test_sample_submission_lists_every_test_id_with_1_1(world):
    with open(world["out"] / "stage1_sample_submission.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["ImageId", "EncodedPixels"]
    assert sorted(r[0] for r in rows[1:]) == world["test"]
    assert {r[1] for r in rows[1:]} == {"1 1"}


def test_solution_reads_back_and_holds_the_drawn_test_labels(world):
    solution = read_solution(world["out"] / "stage1_solution.csv")
    assert sorted(solution) == world["test"]
    n_objects = 0
    for image_id, entry in solution.items():
        drawn = world["drawn"][image_id][2]
        label = entry.label()
        assert entry.shape == drawn.shape
        assert len(entry.rles) == int(drawn.max()) == len(np.unique(label)) - 1
        np.testing.assert_array_equal(label, drawn)
        n_objects += len(entry.rles)
    assert n_objects == world["summary"].n_test_nuclei


def test_solution_usage_is_about_half_public_half_private(world):
    usages = [e.usage for e in read_solution(world["out"] / "stage1_solution.csv").values()]
    assert usages.count("Public") == usages.count("Private") == 6


def test_types_csv_covers_every_image_and_every_type_in_both_splits(world):
    types = world["types"]
    assert sorted(types) == sorted(world["train"] + world["test"])
    for split in ("train", "test"):
        assert {types[i] for i in world[split]} == set(synth.KINDS)
    for image_id, (kind, _, _) in world["drawn"].items():
        assert types[image_id] == kind


# ----------------------------------------------------------------------------- content


def test_sizes_vary_and_include_non_multiples_of_32_and_non_square(world):
    shapes = [label.shape for _, _, label in world["drawn"].values()]
    assert len(set(shapes)) > len(shapes) // 2
    assert any(h % 32 or w % 32 for h, w in shapes)
    assert any(h != w for h, w in shapes)


def test_labels_are_consecutive_and_every_object_connected(world):
    from scipy import ndimage

    for _, _, label in world["drawn"].values():
        assert label.dtype == np.int32
        assert np.array_equal(np.unique(label), np.arange(label.max() + 1))
        for index, box in enumerate(ndimage.find_objects(label), start=1):
            assert ndimage.label(label[box] == index)[1] == 1


def _touching_pairs(label: np.ndarray) -> int:
    pairs = set()
    for a, b in ((label[1:, :], label[:-1, :]), (label[:, 1:], label[:, :-1])):
        both = (a > 0) & (b > 0) & (a != b)
        pairs.update(zip(np.minimum(a[both], b[both]).tolist(), np.maximum(a[both], b[both]).tolist()))
    return len(pairs)


def test_touching_nuclei_exist_in_most_images_and_clusters_are_common(world):
    labels = [label for _, _, label in world["drawn"].values()]
    pairs = [_touching_pairs(label) for label in labels]
    assert sum(n > 0 for n in pairs) >= len(labels) // 2
    # Clusters of 2-4: without them only about 1 nucleus in 20 touches another by chance.
    assert sum(pairs) >= 0.2 * sum(int(label.max()) for label in labels)


def test_some_nuclei_are_cut_by_the_border_and_some_are_very_small(world):
    labels = [label for _, _, label in world["drawn"].values()]
    on_border = sum(len(np.setdiff1d(np.unique(np.concatenate([l[0], l[-1], l[:, 0], l[:, -1]])), [0])) for l in labels)
    areas = np.concatenate([np.bincount(l.ravel())[1:] for l in labels])
    assert on_border >= len(labels)
    assert (areas < 40).sum() >= 5
    assert areas.min() >= synth.MIN_SIZE
    assert areas.max() > 300  # and large ones


def test_each_kind_looks_like_its_real_counterpart(world):
    for kind, image, label in world["drawn"].values():
        background = image[label == 0].astype(np.int16)
        nuclei = image[label > 0].astype(np.int16)
        spread = background.max(axis=1) - background.min(axis=1)
        if kind == "fluorescence":
            assert np.median(background) <= 30
            assert nuclei.mean() > background.mean() + 15
        elif kind == "histology":
            assert np.median(background.mean(axis=1)) > 150  # light
            assert spread.mean() > 20  # clearly coloured
            assert (nuclei[:, 1] < nuclei[:, 2]).mean() > 0.9  # purple: green absorbed most
            assert nuclei.mean() < background.mean() - 30
        else:
            assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()
            assert 170 <= np.median(background) <= 225
            assert nuclei.mean() < background.mean() - 50


def test_the_project_classifier_agrees_with_types_csv(world):
    types_module = pytest.importorskip("competition.data.types")
    from competition.data.io import read_image

    for split in ("train", "test"):
        for image_id in world[split]:
            image = read_image(world["out"] / f"stage1_{split}" / image_id / "images" / f"{image_id}.png")
            assert types_module.classify_image(image) == world["types"][image_id], image_id


@pytest.mark.parametrize("kind", synth.KINDS)
def test_the_project_classifier_agrees_on_many_draws_and_odd_shapes(kind):
    types_module = pytest.importorskip("competition.data.types")
    rng = np.random.default_rng(123)
    for shape in [(64, 64), (67, 93), (32, 200), (150, 111)] * 3:
        image, label = synth.draw_image(kind, shape, rng)
        assert image.shape == shape + (3,) and image.dtype == np.uint8
        assert label.shape == shape and label.dtype == np.int32
        assert types_module.classify_image(image) == kind


def test_draw_image_rejects_an_unknown_kind_listing_the_valid_ones():
    with pytest.raises(ValueError, match="fluorescence, histology, brightfield"):
        synth.draw_image("phase-contrast", (64, 64), np.random.default_rng(0))


def test_draw_image_handles_tiny_images():
    image, label = synth.draw_image("histology", (5, 7), np.random.default_rng(0))
    assert image.shape == (5, 7, 3) and label.shape == (5, 7)


@pytest.mark.parametrize("minimum", [1, 2])
def test_split_counts_sum_to_n_and_keep_every_type_once_there_is_room(minimum):
    for n in range(40):
        counts = synth.split_counts(n, minimum)
        assert sum(counts.values()) == n
        if n >= 3 * minimum:
            assert min(counts.values()) >= minimum
        if n >= 3:
            assert min(counts.values()) >= 1
        assert counts["fluorescence"] >= counts["histology"] >= counts["brightfield"]


# ----------------------------------------------------------------------------- determinism and safety


def test_same_seed_gives_identical_bytes_and_another_seed_differs(tmp_path):
    digests = []
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        synth.generate_dataset(tmp_path / name, n_train=6, n_test=3, seed=seed)
        digests.append(tree_digest(tmp_path / name))
    assert digests[0] == digests[1]
    assert digests[0] != digests[2]
    assert {p.name for p in (tmp_path / "a" / "stage1_train").iterdir()}.isdisjoint(
        p.name for p in (tmp_path / "c" / "stage1_train").iterdir()
    )


def test_refuses_a_non_empty_folder(tmp_path):
    out = tmp_path / "d"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        synth.generate_dataset(out, n_train=3, n_test=3)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


def test_overwrite_replaces_an_earlier_synthetic_dataset_completely(tmp_path):
    out = tmp_path / "d"
    synth.generate_dataset(out, n_train=3, n_test=3, seed=1)
    summary = synth.generate_dataset(out, n_train=4, n_test=3, seed=2, overwrite=True)
    assert {p.name for p in out.iterdir()} == TOP_LEVEL
    assert sorted(p.name for p in summary.train_dir.iterdir()) == sorted(synth._image_id(2, "train", i) for i in range(4))
    fresh = tmp_path / "fresh"
    synth.generate_dataset(fresh, n_train=4, n_test=3, seed=2)
    assert tree_digest(out) == tree_digest(fresh)


def test_overwrite_never_deletes_data_it_did_not_make(tmp_path):
    out = tmp_path / "real"
    keep = out / "stage1_train" / "abc" / "images" / "abc.png"
    keep.parent.mkdir(parents=True)
    keep.write_bytes(b"not ours")
    with pytest.raises(UserError, match="refusing to delete"):
        synth.generate_dataset(out, n_train=3, n_test=3, overwrite=True)
    assert keep.read_bytes() == b"not ours"


def test_negative_counts_are_a_user_error(tmp_path):
    with pytest.raises(UserError, match="n_train=-1"):
        synth.generate_dataset(tmp_path / "d", n_train=-1)


def test_cli_writes_the_layout_and_refuses_to_write_twice(tmp_path):
    out = tmp_path / "d"
    command = [sys.executable, "-m", "competition", "synth", str(out), "--n-train", "6", "--n-test", "3"]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("train: 6 images (2 fluorescence, 2 histology, 2 brightfield)")
    assert lines[1].startswith("test: 3 images (1 fluorescence, 1 histology, 1 brightfield)")
    assert {p.name for p in out.iterdir()} == TOP_LEVEL
    assert len(list((out / "stage1_train").iterdir())) == 6
    assert all(any((f / "masks").iterdir()) for f in (out / "stage1_train").iterdir())
    assert len(list((out / "stage1_test").iterdir())) == 3
    again = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert again.returncode == 2
    assert again.stderr.strip().splitlines()[-1].startswith("error: ")
