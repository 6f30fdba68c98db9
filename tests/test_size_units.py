"""Post-processing sizes counted in the network's pixels: PostprocessParams.at_scale, tuning on
samples that carry their resize factor, the ensemble file's ``size_units``, and the resize
factor the prediction path hands to post-processing."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from competition.errors import UserError
from competition.postprocess import PostprocessParams, watershed_instances
from competition.tuning import score_params, tune_postprocess
# ``world``: drawn data and two stand-in members (all + fluorescence) with out-of-fold maps
from test_submit import submit, world  # noqa: F401


def disks(shape, specs):
    """A label image of disks ``(cy, cx, r)`` and its soft probabilities (body only)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    label = np.zeros(shape, np.int32)
    for n, (cy, cx, r) in enumerate(specs, 1):
        label[(yy - cy) ** 2 + (xx - cx) ** 2 <= r * r] = n
    probs = np.where(label > 0, 0.9, 0.05).astype(np.float32)[None]
    return probs, label


def test_at_scale_converts_pixel_counts_and_keeps_the_rest():
    p = PostprocessParams(body_threshold=0.4, seed_threshold=0.6, min_seed_size=8, min_size=48, seed_dilation=2)
    assert p.at_scale(1.0) is p
    up = p.at_scale(2.0)  # the network saw the image twice as large: a nucleus covers a quarter of the pixels here
    assert (up.min_seed_size, up.min_size, up.seed_dilation) == (2, 12, 1)
    assert PostprocessParams(grow=3).at_scale(2.0).grow == 1.5, "a distance, divided by the factor and not rounded"
    down = p.at_scale(0.5)
    assert (down.min_seed_size, down.min_size, down.seed_dilation) == (32, 192, 4)
    assert (up.body_threshold, up.seed_threshold, up.fill_holes, up.watershed_on) == (0.4, 0.6, True, "seed")
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="positive"):
            p.at_scale(bad)


def test_a_sample_factor_scales_the_sizes_in_scoring_and_tuning():
    # two nuclei of about 28 px area: min_size 48 counted in the network's pixels keeps them
    # when the network saw the image at twice its size (12 px here), removes them at 1
    probs, label = disks((40, 48), [(12, 12, 3), (28, 34, 3)])
    params = PostprocessParams(body_threshold=0.5, seed_threshold=0.5, min_seed_size=4, min_size=48)
    assert score_params([(probs, label)], params) == 0.0
    assert score_params([(probs, label, 2.0)], params) == 1.0
    assert score_params([(probs, label, 2.0)], params) == score_params([(probs, label)], params.at_scale(2.0))
    grid = {"min_size": (0, 48, 200)}
    base = PostprocessParams(min_seed_size=4, min_size=200)
    # at factor 0.25 (the network saw a quarter of the size) 48 and 200 network pixels are 768
    # and 3200 here: only 0 keeps the nuclei; at factor 2 they are 12 and 50: 0 and 48 keep them
    tuned = tune_postprocess([(probs, label, 0.25)], grid, base, n_rounds=1)
    assert tuned.params.min_size == 0 and tuned.score_after == 1.0
    tuned = tune_postprocess([(probs, label, 2.0)], grid, base, n_rounds=1)
    assert tuned.params.min_size == 0  # a tie keeps the earlier value, and 48 ties at factor 2
    assert dict((v, s) for name, v, s in tuned.history if name == "min_size")[48] == 1.0
    with pytest.raises(ValueError, match="resize factor"):
        score_params([(probs, label, 0.0)], params)
    with pytest.raises(ValueError, match="expected"):
        score_params([(probs, label, 1.0, "extra")], params)


def test_route_scale_is_the_members_geometric_mean():
    from competition.predict.ensemble import Route

    assert Route("fluorescence", "all", (("all/a", 1.0),), True).scale == 1.0
    route = Route("fluorescence", "all", (("all/a", 1.0), ("all/b", 1.0)), True, 20.0, (("all/a", 0.5), ("all/b", 2.0)))
    assert route.scale == pytest.approx(1.0)
    assert Route("histology", "all", (("all/a", 1.0),), True, 56.0, (("all/a", 0.5),)).scale == 0.5


@pytest.fixture
def models(world, tmp_path):
    root = tmp_path / "models"
    shutil.copytree(world["models"], root)
    return root


def test_params_for_converts_only_entries_in_network_units(models):
    from competition.ensemble import load_ensemble, read_ensemble, write_ensemble

    ensemble = load_ensemble(models, "standin")
    tuned = PostprocessParams(min_seed_size=8, min_size=48).to_dict()
    ensemble = ensemble.with_tuning("fluorescence", tuned, {"n_images": 1})
    assert ensemble.params_for("fluorescence", scale=2.0)[0].min_size == 48  # image units: as written
    ensemble = ensemble.with_tuning("fluorescence", tuned, {"n_images": 1}, size_units="network")
    assert ensemble.params_for("fluorescence", scale=2.0)[0].min_size == 12
    assert ensemble.params_for("fluorescence")[0].min_size == 48
    assert ensemble.params_for("brightfield", scale=2.0)[0] == PostprocessParams()  # defaults: not converted
    with pytest.raises(ValueError, match="size_units"):
        ensemble.with_tuning("fluorescence", tuned, {}, size_units="px")
    write_ensemble(ensemble)
    data = json.loads(ensemble.path.read_text())
    assert data["types"]["fluorescence"]["size_units"] == "network"
    assert "size_units" not in data["types"]["histology"]  # old files stay as they were
    assert read_ensemble(ensemble.path).entries["fluorescence"].size_units == "network"
    assert "sizes in the network's pixels" in "\n".join(read_ensemble(ensemble.path).describe())
    data["types"]["histology"]["size_units"] = "microns"
    ensemble.path.write_text(json.dumps(data))
    with pytest.raises(UserError, match=r"histology.*size_units.*microns"):
        read_ensemble(ensemble.path)


def test_tuning_counts_sizes_in_the_network_pixels_of_each_image(models, world):
    from competition.ensemble import load_ensemble, read_ensemble
    from competition.ensemble_tuning import _samples_at, members_diameter, tune_ensemble
    from competition.oof import collect_oof
    from competition.scale import label_scale

    ensemble = load_ensemble(models, "standin")
    assert members_diameter(ensemble, "all") == 0.0  # the stand-ins were not trained at one size
    config = models / "standin" / "all" / "a" / "config.json"
    data = json.loads(config.read_text())
    data.setdefault("member", {})["nucleus_diameter"] = 20.0
    config.write_text(json.dumps(data))
    assert members_diameter(ensemble, "all") == pytest.approx(20.0)
    oof = collect_oof(ensemble, "all", None)
    from competition.data.io import load_split

    loaded, _ = load_split(world["data"] / "stage1_train", ids=sorted(oof.probs))
    labels = {s.image_id: s.label for s in loaded}
    factors = [f for _, _, f in _samples_at(oof, labels, 20.0)]
    assert factors == [label_scale(labels[i], 20.0) for i in oof.probs] and any(f != 1.0 for f in factors)
    assert [f for _, _, f in _samples_at(oof, labels, 0.0)] == [1.0] * len(factors)
    tuned, _ = tune_ensemble(ensemble, n_rounds=1, data_dir=world["data"], size_units="network")
    saved = read_ensemble(models / "standin" / "ensemble.json")
    assert {saved.entries[n].size_units for n in saved.entries if saved.entries[n].postprocess} == {"network"}
    assert tuned.entries["all"].size_units == "network"


def test_submit_post_processes_with_the_images_resize_factor(world, tmp_path, monkeypatch):
    """The factor a route records reaches post-processing: an entry in network units gets its
    sizes converted by it (here forced to 2, so min_size 400 becomes 100)."""
    import dataclasses

    from competition.ensemble import load_ensemble, write_ensemble
    from competition.predict import ensemble as predict_ensemble

    models = tmp_path / "models"
    shutil.copytree(world["models"], models)
    ensemble = load_ensemble(models, "standin")
    big = PostprocessParams(min_size=400).to_dict()
    for name in ("all", "fluorescence"):
        ensemble = ensemble.with_tuning(name, big, {"n_images": 1}, size_units="network")
    write_ensemble(ensemble)
    seen = []
    original = predict_ensemble.EnsemblePredictor.predict

    def predict(self, image, route=None):
        probs, route = original(self, image, route)
        route = dataclasses.replace(route, scales=tuple((k, 2.0) for k, _ in route.members))
        seen.append(route.image_type)
        return probs, route

    calls = []
    original_ws = watershed_instances

    def spy(probs, params, channels):
        calls.append(params.min_size)
        return original_ws(probs, params, channels)

    monkeypatch.setattr(predict_ensemble.EnsemblePredictor, "predict", predict)
    monkeypatch.setattr("competition.postprocess.watershed_instances", spy)
    submit({**world, "models": models}, tmp_path)
    assert seen and set(calls) == {100}


def test_tuning_in_image_units_ignores_the_factors_and_bad_units_are_refused(models, world):
    from competition.ensemble import load_ensemble, read_ensemble
    from competition.ensemble_tuning import tune_ensemble

    config = models / "standin" / "all" / "a" / "config.json"
    data = json.loads(config.read_text())
    data.setdefault("member", {})["nucleus_diameter"] = 20.0
    config.write_text(json.dumps(data))
    ensemble = load_ensemble(models, "standin")
    with pytest.raises(UserError, match="size units"):
        tune_ensemble(ensemble, n_rounds=1, data_dir=world["data"], size_units="px")
    image, _ = tune_ensemble(ensemble, n_rounds=1, data_dir=world["data"], write=False)  # the default
    network, outcomes = tune_ensemble(ensemble, n_rounds=1, data_dir=world["data"], size_units="network")
    assert image.entries["all"].size_units == "image" and network.entries["all"].size_units == "network"
    assert "size_units" not in json.dumps(image.to_dict())
    by_entry = {t.entry: t for t in outcomes}
    assert by_entry["all"].result is not None
    assert read_ensemble(models / "standin" / "ensemble.json").entries["all"].size_units == "network"


def test_tune_command_takes_the_size_units(models, world, capsys):
    from competition.cli import main
    from competition.ensemble import read_ensemble

    base = ["tune", "--recipe", "standin", "--models", str(models), "--data", str(world["data"]), "--rounds", "1"]
    assert main(base + ["--size-units", "network"]) == 0
    assert read_ensemble(models / "standin" / "ensemble.json").entries["all"].size_units == "network"
    assert main(base) == 0  # the default: the image's pixels
    assert read_ensemble(models / "standin" / "ensemble.json").entries["all"].size_units == "image"
    with pytest.raises(SystemExit):
        main(base + ["--size-units", "microns"])
    assert "invalid choice" in capsys.readouterr().err
