"""``competition refit``: the members a tuned ensemble routes to, trained again on every
training image (fold -1), beside the source's ensemble file and holdout calibration."""

from __future__ import annotations

import dataclasses
import json
import logging
import tomllib
from pathlib import Path

import pytest

from competition.errors import UserError
from derived_world import DEFAULTS, cli, submit_args

RECIPE = """
description = "refit test: one all-type member, a fine-tune from it, one member tuning dropped"
""" + DEFAULTS + """
[[all]]
name = "a"

[[histology]]
name = "h-ft"
init_from = "all/a"

[[fluorescence]]
name = "f"
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Synthetic data; the recipe trained on fold 0; its ensemble without the fluorescence
    member (as tuning drops one) and a holdout calibration of it; then the refit."""
    root = tmp_path_factory.mktemp("refit")
    recipe = root / "rt.toml"
    recipe.write_text(RECIPE)
    assert cli("synth", root / "data", "--n-train", 12, "--n-test", 3) == 0
    w = {"root": root, "recipe": recipe, "models": root / "models", "data": root / "data", "folds": root / "folds.csv"}
    train = ["--recipe", recipe, "--data", w["data"], "--models", w["models"], "--folds", w["folds"],
             "--cache-dir", "", "--device", "cpu"]
    assert cli("train-all", *train) == 0
    source = w["models"] / "rt" / "ensemble.json"
    from competition.ensemble import load_ensemble, write_ensemble

    ensemble = load_ensemble(w["models"], "rt")  # built from the finished members
    write_ensemble(ensemble.without_members("fluorescence"))
    assert cli(*submit_args(w, "rt", root / "holdout"), "--solution", w["data"] / "stage1_solution.csv",
               "--calibration", w["models"] / "rt" / "calibration-f0.json") == 0
    w["source_text"] = source.read_text()
    assert cli("refit", *train) == 0
    w["train"] = train
    return w


def config(world, key: str, recipe: str = "rt-refit") -> dict:
    return json.loads((world["models"] / recipe / key / "config.json").read_text())


def test_refit_trains_the_routed_members_and_their_parents_on_every_image(world):
    from competition.ensemble import finished_members

    refit = world["models"] / "rt-refit"
    assert sorted(k for keys in finished_members(refit).values() for k in keys) == ["all/a", "histology/h-ft"]
    n_images = len(list((world["data"] / "stage1_train").iterdir()))
    a, h = config(world, "all/a"), config(world, "histology/h-ft")
    assert (a["fold"], a["n_valid"], a["n_train"]) == (-1, 0, n_images)
    assert h["fold"] == -1 and h["n_valid"] == 0 and h["n_train"] > 0
    assert h["n_train"] > config(world, "histology/h-ft", "rt")["n_train"]  # fold 0's histology images too
    assert h["encoder_weights_loaded"].startswith("init_from all/a")
    source_member = config(world, "all/a", "rt")["member"]
    assert a["member"] == {**source_member, "fold": -1}  # the recipe's settings, the fold aside
    metrics = json.loads((refit / "all/a/metrics.json").read_text())
    assert metrics["best_epoch"] == metrics["epochs"] and metrics["best_score"] is None  # the last epoch


def test_refit_ensemble_is_the_source_with_a_record(world):
    from competition.ensemble import read_ensemble
    from competition.leaderboard import file_hash

    source_path = world["models"] / "rt" / "ensemble.json"
    assert source_path.read_text() == world["source_text"], "the source is not touched"
    source = json.loads(world["source_text"])
    refit = json.loads((world["models"] / "rt-refit" / "ensemble.json").read_text())
    assert refit["recipe"] == "rt-refit" and refit["types"] == source["types"]
    assert refit["refit"]["of"] == str(source_path) and refit["refit"]["sha256"] == file_hash(source_path)
    assert refit["refit"]["source_folds"] == {"all/a": 0, "histology/h-ft": 0}
    assert read_ensemble(world["models"] / "rt-refit" / "ensemble.json").refit == refit["refit"]
    calibration = json.loads((world["models"] / "rt-refit" / "calibration-f0.json").read_text())
    original = json.loads((world["models"] / "rt" / "calibration-f0.json").read_text())
    assert calibration["rows"] == original["rows"] and calibration["key"] == {**original["key"], "recipe": "rt-refit"}
    assert calibration["refit_of"] == str(world["models"] / "rt" / "calibration-f0.json")


def test_submit_with_the_refit_carries_the_record_and_the_sources_expected_score(world):
    out = world["root"] / "sub"
    assert cli(*submit_args(world, "rt-refit", out), "--calibration",
               world["models"] / "rt-refit" / "calibration-f0.json") == 0
    record = json.loads(next(out.glob("rt-refit-stage1-*.json")).read_text())
    assert record["refit"]["of"] == str(world["models"] / "rt" / "ensemble.json")
    assert record["members"] == ["all/a", "histology/h-ft"] and record["models_dir"].endswith("rt-refit")
    assert record["expected_score"]["score"] is not None, record["expected_score"]


def test_holdout_tune_and_a_second_refit_of_a_refit_are_refused(world, capsys):
    assert cli(*submit_args(world, "rt-refit", world["root"] / "h2"), "--solution",
               world["data"] / "stage1_solution.csv", "--crossfit") == 2
    assert "would score images they trained on" in capsys.readouterr().err
    assert not (world["root"] / "h2").exists()
    assert cli("tune", "--recipe", "rt-refit", "--models", world["models"], "--data", world["data"],
               "--rounds", "1") == 2
    assert "no out-of-fold maps" in capsys.readouterr().err
    from competition.ensemble import load_ensemble
    from competition.train.recipe import load_recipe
    from competition.train.refit import refit_recipe

    with pytest.raises(UserError, match="is a refit already"):
        refit_recipe(load_recipe(world["recipe"]), load_ensemble(world["models"], "rt-refit"))


def test_rerun_skips_the_finished_members_and_rewrites_the_same_ensemble(world, caplog):
    refit = world["models"] / "rt-refit"
    before = {p: p.read_bytes() for p in (refit / "ensemble.json", refit / "all/a/best.pt")}
    caplog.set_level(logging.INFO)
    assert cli("refit", *world["train"]) == 0
    assert "all/a: finished earlier" in caplog.text and "histology/h-ft: finished earlier" in caplog.text
    assert {p: p.read_bytes() for p in before} == before


def test_refit_recipe_names_a_member_the_recipe_lacks_and_twins(world):
    from competition.ensemble import MemberRef, load_ensemble
    from competition.train.recipe import load_recipe
    from competition.train.refit import refit_recipe

    recipe = load_recipe(world["recipe"])
    source = load_ensemble(world["models"], "rt")
    alien = dataclasses.replace(recipe, members=tuple(m for m in recipe.members if m.key != "histology/h-ft"))
    with pytest.raises(UserError, match="routes to member histology/h-ft, which recipe"):
        refit_recipe(alien, source)
    a = recipe.member("all/a")
    twins = dataclasses.replace(recipe, members=(a, dataclasses.replace(a, name="b", fold=1)))
    entries = {**source.entries, "all": dataclasses.replace(source.entries["all"],
                                                            members=(MemberRef("all/a"), MemberRef("all/b")))}
    entries["histology"] = dataclasses.replace(entries["histology"], members=())
    with pytest.raises(UserError, match="differ only in their fold"):
        refit_recipe(twins, dataclasses.replace(source, entries=entries))
    plain = refit_recipe(recipe, source)
    assert [m.key for m in plain.members] == ["all/a", "histology/h-ft"] and {m.fold for m in plain.members} == {-1}


def test_refit_without_a_tuned_ensemble_says_what_to_run(tmp_path):
    from competition.train.recipe import load_recipe
    from competition.train.refit import refit_source

    with pytest.raises(UserError, match="train and tune the recipe first"):
        refit_source(tmp_path, load_recipe("tiny"))


def test_fold_minus_one_is_the_only_negative_fold():
    from competition.train.recipe import parse_recipe

    base = {"description": "x", "defaults": {"encoder": "mobilenet_v2", "encoder_weights": "none",
                                             "crop_size": 64, "pad": 16}}
    recipe = parse_recipe({**base, "all": [{"name": "a", "fold": -1}]}, name="x")
    assert recipe.member("all/a").fold == -1
    with pytest.raises(UserError, match="fold: a fold number >= 0, or -1"):
        parse_recipe({**base, "all": [{"name": "a", "fold": -2}]}, name="x")


def test_a_clone_without_weights_can_refit_and_a_changed_recipe_is_named(world, tmp_path):
    import shutil

    from competition.train.recipe import load_recipe, parse_recipe
    from competition.train.refit import refit_recipe, refit_source

    clone = tmp_path / "models"  # what git holds: the ensemble file, configs and logs, no weights
    shutil.copytree(world["models"] / "rt", clone / "rt", ignore=shutil.ignore_patterns("*.pt", "oof.npz", "engine"))
    recipe = load_recipe(world["recipe"])
    source = refit_source(clone, recipe)
    assert [m.key for m in refit_recipe(recipe, source).members] == ["all/a", "histology/h-ft"]
    data = tomllib.loads(RECIPE)
    data["defaults"]["epochs"] = 2
    with pytest.raises(UserError, match=r"member all/a .* other settings than recipe 'rt' now gives \(epochs\)"):
        refit_recipe(parse_recipe(data, name="rt"), source)
