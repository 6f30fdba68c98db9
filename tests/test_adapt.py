"""``competition adapt``: an ensemble's routed members fine-tuned on their training images plus
a split's images labelled by a submission of them, beside a copy of the ensemble file and the
holdout calibration."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from competition.errors import UserError
from derived_world import DEFAULTS, cli, submit_args

RECIPE = """
description = "adapt test: one all-type member"
""" + DEFAULTS + """
[[all]]
name = "a"
"""


def adapt_args(world, labels: Path, *more) -> list:
    return ["adapt", "--recipe", "at", "--labels", labels, "--data", world["data"], "--models", world["models"],
            "--folds", world["folds"], "--cache-dir", "", "--device", "cpu", "--epochs", 2, "--samples-per-epoch", 8,
            *more]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Synthetic data; the recipe trained on fold 0 and its ensemble, a holdout calibration of
    it and a submission of the test split; then the adapt with that submission as labels."""
    root = tmp_path_factory.mktemp("adapt")
    recipe = root / "at.toml"
    recipe.write_text(RECIPE)
    assert cli("synth", root / "data", "--n-train", 12, "--n-test", 3) == 0
    w = {"root": root, "models": root / "models", "data": root / "data", "folds": root / "folds.csv"}
    assert cli("train-all", "--recipe", recipe, "--data", w["data"], "--models", w["models"], "--folds", w["folds"],
               "--cache-dir", "", "--device", "cpu") == 0
    from competition.ensemble import load_ensemble

    load_ensemble(w["models"], "at")  # writes ensemble.json from the finished member
    assert cli(*submit_args(w, "at", root / "holdout"), "--solution", w["data"] / "stage1_solution.csv",
               "--calibration", w["models"] / "at" / "calibration-f0.json") == 0
    assert cli(*submit_args(w, "at", root / "sub")) == 0
    w["labels"] = next((root / "sub").glob("at-stage1-*.csv"))
    w["source_text"] = (w["models"] / "at" / "ensemble.json").read_text()
    assert cli(*adapt_args(w, w["labels"])) == 0
    return w


def config(world, recipe: str = "at-adapt") -> dict:
    return json.loads((world["models"] / recipe / "all/a" / "config.json").read_text())


def test_adapt_fine_tunes_the_member_on_its_images_plus_the_labelled_split(world):
    from competition.leaderboard import file_hash

    source, adapted = config(world, "at"), config(world)
    assert adapted["n_train"] == source["n_train"] + 3 and adapted["n_valid"] == source["n_valid"] > 0
    assert adapted["fold"] == 0 and adapted["init_from"] == "all/a"
    assert adapted["encoder_weights_loaded"].startswith("init_from all/a")
    member = adapted["member"]
    assert (member["epochs"], member["samples_per_epoch"], member["schedule"], member["lr"]) == (2, 8, "cosine", 2e-4)
    assert {k: v for k, v in member.items() if k not in ("epochs", "samples_per_epoch", "schedule", "lr", "min_lr",
                                                          "init_from", "valid_every")} == \
        {k: v for k, v in source["member"].items() if k not in ("epochs", "samples_per_epoch", "schedule", "lr",
                                                                "min_lr", "init_from", "valid_every")}
    record = adapted["adapt"]
    assert record["labels"] == str(world["labels"]) and record["sha256"] == file_hash(world["labels"])
    assert record["n_images"] == 3 and record["split"] == str(world["data"] / "stage1_test")
    assert record["of"] == str(world["models"] / "at" / "all/a")
    from competition.submission import validate_submission

    sub, _ = validate_submission(world["labels"])
    assert record["n_objects"] == sum(len([r for r in rles if r]) for rles in sub.rles.values())
    metrics = json.loads((world["models"] / "at-adapt/all/a/metrics.json").read_text())
    assert metrics["finished"] and metrics["best_epoch"] == 2 and metrics["best_score"] is not None


def test_adapted_weights_moved_from_the_source(world):
    import torch

    a = torch.load(world["models"] / "at/all/a/best.pt", weights_only=True)["model"]
    b = torch.load(world["models"] / "at-adapt/all/a/best.pt", weights_only=True)["model"]
    moved = [k for k in a if a[k].is_floating_point() and not torch.equal(a[k], b[k])]
    assert moved and len(moved) > len(a) // 4


def test_adapt_ensemble_and_calibration_are_the_sources_with_a_record(world):
    from competition.ensemble import read_ensemble

    source_path = world["models"] / "at" / "ensemble.json"
    assert source_path.read_text() == world["source_text"], "the source is not touched"
    adapted = json.loads((world["models"] / "at-adapt" / "ensemble.json").read_text())
    assert adapted["recipe"] == "at-adapt" and adapted["types"] == json.loads(world["source_text"])["types"]
    assert adapted["adapt"]["of"] == str(source_path) and adapted["adapt"]["labels"] == str(world["labels"])
    assert read_ensemble(world["models"] / "at-adapt" / "ensemble.json").adapt == adapted["adapt"]
    calibration = json.loads((world["models"] / "at-adapt" / "calibration-f0.json").read_text())
    original = json.loads((world["models"] / "at" / "calibration-f0.json").read_text())
    assert calibration["rows"] == original["rows"] and calibration["key"] == {**original["key"], "recipe": "at-adapt"}
    assert calibration["adapt_of"] == str(world["models"] / "at" / "calibration-f0.json")


def test_submit_with_the_adapted_ensemble_records_it_and_tune_and_a_second_adapt_are_refused(world, capsys):
    out = world["root"] / "sub-adapt"
    assert cli(*submit_args(world, "at-adapt", out), "--calibration",
               world["models"] / "at-adapt" / "calibration-f0.json") == 0
    record = json.loads(next(out.glob("at-adapt-stage1-*.json")).read_text())
    assert record["adapt"]["labels"] == str(world["labels"]) and record["refit"] is None
    assert record["expected_score"]["score"] is not None
    assert cli("tune", "--recipe", "at-adapt", "--models", world["models"], "--data", world["data"],
               "--rounds", "1") == 2
    assert "adapted to pseudo-labels" in capsys.readouterr().err
    args = adapt_args(world, world["labels"])
    args[args.index("at")] = "at-adapt"
    assert cli(*args) == 2
    assert "is adapted already" in capsys.readouterr().err


def test_rerun_skips_the_finished_member_and_rewrites_the_same_ensemble(world, caplog):
    folder = world["models"] / "at-adapt"
    before = {p: p.read_bytes() for p in (folder / "ensemble.json", folder / "all/a/best.pt")}
    caplog.set_level(logging.INFO)
    assert cli(*adapt_args(world, world["labels"])) == 0
    assert "all/a: finished earlier" in caplog.text
    assert {p: p.read_bytes() for p in before} == before


def test_a_rerun_with_other_labels_is_refused_and_changes_nothing(world, tmp_path, capsys):
    folder = world["models"] / "at-adapt"
    before = {p: p.read_bytes() for p in (folder / "ensemble.json", folder / "all/a/config.json")}
    lines = world["labels"].read_text().splitlines()
    other = tmp_path / "other.csv"  # the same images, one object fewer
    other.write_text("\n".join(lines[:1] + lines[2:]) + "\n")
    assert cli(*adapt_args(world, other)) == 2
    assert f"{folder / 'all/a'}: trained with other adapt" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in before} == before


def test_labels_that_miss_an_image_or_label_training_images_are_refused(world, tmp_path, capsys):
    lines = world["labels"].read_text().splitlines()
    first = lines[1].split(",")[0]
    short = tmp_path / "short.csv"
    short.write_text("\n".join([lines[0]] + [x for x in lines[1:] if not x.startswith(first + ",")]) + "\n")
    models = tmp_path / "models"
    shutil.copytree(world["models"] / "at", models / "at")
    args = adapt_args(world, short)
    args[args.index(world["models"])] = models
    assert cli(*args) == 2
    assert first in capsys.readouterr().err
    assert not (models / "at-adapt").exists()
    # a split of images that the fold-0 member trains on with their true labels
    folds = {line.split(",")[0]: line.split(",")[2] for line in world["folds"].read_text().splitlines()[1:]}
    trained = next(i for i, f in folds.items() if f != "0")
    split = tmp_path / "split"
    shutil.copytree(world["data"] / "stage1_train" / trained / "images", split / trained / "images")
    labels = tmp_path / "trained.csv"
    labels.write_text(f"ImageId,EncodedPixels\n{trained},\n")
    args = adapt_args(world, labels, "--split", split)
    args[args.index(world["models"])] = models
    assert cli(*args) == 2
    assert f"{trained} and 0 more of {split} are training images of all/a" in capsys.readouterr().err
    assert not (models / "at-adapt").exists()


def test_a_source_without_weights_says_what_to_train(world, tmp_path):
    from competition.ensemble import read_ensemble
    from competition.train.adapt import AdaptSettings, adapt_members

    models = tmp_path / "models"
    shutil.copytree(world["models"] / "at", models / "at", ignore=shutil.ignore_patterns("*.pt"))
    with pytest.raises(UserError, match="has no best.pt and config.json: train the members"):
        adapt_members(read_ensemble(models / "at" / "ensemble.json", members_on_disk=False), AdaptSettings())
    with pytest.raises(UserError, match="epochs and samples per epoch must be >= 1"):
        AdaptSettings(epochs=0)


def test_an_averaged_member_is_adapted_without_averaging_back(world, tmp_path):
    from competition.ensemble import read_ensemble
    from competition.train.adapt import AdaptSettings, adapt_members

    models = tmp_path / "models"
    shutil.copytree(world["models"] / "at", models / "at")
    path = models / "at" / "all/a" / "config.json"
    config = json.loads(path.read_text())
    config["member"]["average_with_init"] = 0.5
    path.write_text(json.dumps(config))
    (member, _, _), = adapt_members(read_ensemble(models / "at" / "ensemble.json"), AdaptSettings())
    assert member.init_from == "all/a" and member.average_with_init == 0.0


def test_pseudo_images_carry_the_submissions_objects(world):
    from competition.rle import rles_to_label
    from competition.submission import validate_submission
    from competition.train.adapt import PSEUDO_FOLD, load_pseudo_images

    images = load_pseudo_images(world["data"] / "stage1_test", world["labels"])
    sub, _ = validate_submission(world["labels"])
    assert len(images) == 3 and {im.fold for im in images} == {PSEUDO_FOLD}
    for im in images:
        image_id = im.image_id.removeprefix("pseudo:")
        expected = rles_to_label([r for r in sub.rles[image_id] if r], im.image.shape[:2])
        assert np.array_equal(im.label > 0, expected > 0) and im.label.max() == expected.max()
