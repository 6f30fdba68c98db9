"""Colour test-time augmentation: the views, the ensemble file's ``colour_views``, the one
prediction path averaging them, and tuning that keeps them only where they score better."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from test_submit import cached_loader, make_dataset, make_member, soft_probs

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VIEWS = ("gray", "gbr", "brg")


def stained(seed: int = 0, shape=(40, 48)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)


# ----------------------------------------------------------------------------- the views


def test_views_are_the_grey_level_and_the_rotated_channels():
    from competition.predict.preprocess import colour_view

    image = stained()
    grey = colour_view(image, "gray")
    assert grey.shape == image.shape and grey.dtype == np.uint8
    assert np.array_equal(grey[..., 0], np.rint(image.mean(axis=2)).astype(np.uint8))
    assert np.array_equal(grey[..., 0], grey[..., 2])
    assert np.array_equal(colour_view(image, "gbr")[..., 0], image[..., 1])
    assert np.array_equal(colour_view(image, "gbr")[..., 2], image[..., 0])
    assert np.array_equal(colour_view(image, "brg")[..., 0], image[..., 2])
    assert np.array_equal(colour_view(image, "brg")[..., 1], image[..., 0])
    assert colour_view(image, "gbr").flags["C_CONTIGUOUS"]


def test_every_view_is_inverted_exactly_when_the_image_is():
    from competition.predict.preprocess import colour_view, is_dark_on_light

    for seed, (lo, hi) in enumerate([(0, 100), (150, 256), (60, 200)]):
        rng = np.random.default_rng(seed)
        image = rng.integers(lo, hi, size=(64, 64, 3), dtype=np.uint8)
        image[..., 1] //= 2  # coloured
        for name in VIEWS:
            assert is_dark_on_light(colour_view(image, name)) == is_dark_on_light(image), (seed, name)


def test_a_grey_image_is_its_own_views():
    from competition.predict.preprocess import colour_view, is_gray

    grey = np.repeat(stained()[..., :1], 3, axis=2)
    assert is_gray(grey) and not is_gray(stained())
    for name in VIEWS:
        assert np.array_equal(colour_view(grey, name), grey)


@pytest.mark.parametrize("views, match", [
    ("gray", "expected a list"),
    (["gray", "hue"], "unknown colour view"),
    (["gbr", "gbr"], "listed twice"),
    ([1], "expected a list"),
])
def test_bad_view_lists_are_named(views, match):
    from competition.predict.preprocess import check_colour_views, colour_view

    with pytest.raises(ValueError, match=match):
        check_colour_views(views, "here")
    with pytest.raises(ValueError, match="unknown colour view 'hue'"):
        colour_view(stained(), "hue")


# ----------------------------------------------------------------------------- the ensemble file


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Drawn data and one all-type stand-in member with out-of-fold maps of every image."""
    root = tmp_path_factory.mktemp("colour")
    data = make_dataset(root / "data")
    oof = {i: (t, soft_probs(lab, peak=0.45)) for i, (t, lab) in data["train"].items()}
    make_member(root / "models" / "standin", "all/a", data_dir=root / "data", oof=oof)
    return {"root": root, "data": root / "data", "models": root / "models", "drawn": data}


def _ensemble_file(models, edit=None):
    from competition.ensemble import load_ensemble

    ensemble = load_ensemble(models, "standin")
    data = ensemble.to_dict()
    if edit:
        edit(data["types"])
    ensemble.path.write_text(json.dumps(data))
    return ensemble.path


def test_colour_views_round_trip_and_old_files_stay_as_they_were(world, tmp_path):
    from competition.ensemble import read_ensemble, write_ensemble

    models = tmp_path / "models"
    shutil.copytree(world["models"], models)
    path = _ensemble_file(models)
    plain = read_ensemble(path)
    assert plain.colour_views("histology") == ()
    assert all("colour_views" not in e for e in plain.to_dict()["types"].values())
    path = _ensemble_file(models, lambda t: t["histology"].update(colour_views=["gray", "brg"]))
    ensemble = read_ensemble(path)
    assert ensemble.colour_views("histology") == ("gray", "brg")
    assert ensemble.colour_views("fluorescence") == ()
    write_ensemble(ensemble)
    assert json.loads(path.read_text())["types"]["histology"]["colour_views"] == ["gray", "brg"]
    assert any("colour views gray, brg" in line for line in ensemble.describe())


@pytest.mark.parametrize("entry, views, match", [
    ("histology", ["gray", "sepia"], r"types\.histology\.colour_views: unknown colour view"),
    ("all", ["gray"], "belong to an image type"),
    ("fluorescence", "gray", "expected a list"),
])
def test_bad_colour_views_in_the_ensemble_file_are_named(world, tmp_path, entry, views, match):
    from competition.ensemble import read_ensemble
    from competition.errors import UserError

    models = tmp_path / "models"
    shutil.copytree(world["models"], models)
    path = _ensemble_file(models, lambda t: t[entry].update(colour_views=views))
    with pytest.raises(UserError, match=match) as err:
        read_ensemble(path)
    assert str(path) in str(err.value)


def test_colour_views_enter_the_calibration_key_only_when_some_type_has_them():
    from competition.calibration import calibration_key

    record = {"ensemble": {"all": {"members": [{"member": "all/a", "weight": 1.0}]}, "histology": {"members": []}},
              "tta": "flips", "size_passes": 2, "recipe": "cpu"}
    plain = calibration_key(record)
    assert "colour_views" not in plain
    record["ensemble"]["histology"]["colour_views"] = ["gray"]
    assert calibration_key(record)["colour_views"] == {"histology": ["gray"]}
    assert calibration_key(record) != plain


# ----------------------------------------------------------------------------- prediction


def _predictor(models, tta="flips"):
    from competition.ensemble import read_ensemble
    from competition.predict import EnsemblePredictor

    return EnsemblePredictor(read_ensemble(models / "standin" / "ensemble.json"), device="cpu", tta=tta,
                             loader=cached_loader, engine="torch")


def test_the_prediction_is_the_mean_over_the_image_and_its_views(world, tmp_path):
    from competition.predict.preprocess import colour_view

    models = tmp_path / "models"
    shutil.copytree(world["models"], models)
    _ensemble_file(models)
    plain = _predictor(models)
    image = stained(3, (50, 70))
    image[..., 0] = np.maximum(image[..., 0], 180)  # light and coloured
    route = plain.route(image)
    want = np.mean([plain.predict(image, route)[0]] + [plain.predict(colour_view(image, v), route)[0] for v in VIEWS],
                   axis=0)
    _ensemble_file(models, lambda t: t[route.image_type].update(colour_views=list(VIEWS)))
    viewed = _predictor(models)
    probs, taken = viewed.predict(image)
    assert taken.colour_views == VIEWS
    assert taken.to_dict()["colour_views"] == list(VIEWS)
    assert probs.dtype == np.float32
    np.testing.assert_allclose(probs, want, atol=1e-5)
    assert not np.allclose(probs, plain.predict(image, route)[0], atol=1e-3), "the views changed nothing"


def test_a_grey_image_skips_its_views(world, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(world["models"], models)
    _ensemble_file(models, lambda t: [t[k].update(colour_views=["gray", "gbr"]) for k in
                                      ("fluorescence", "histology", "brightfield")])
    predictor = _predictor(models, tta="none")
    grey = np.repeat(stained(5)[..., :1], 3, axis=2)
    probs, route = predictor.predict(grey)
    assert route.colour_views == ()
    assert "colour_views" not in route.to_dict()
    assert predictor.timings.network.n_forward == 1
    _ensemble_file(models)
    np.testing.assert_array_equal(probs, _predictor(models, tta="none").predict(grey)[0])


# ----------------------------------------------------------------------------- tuning


def test_view_maps_average_the_members_views_and_leave_grey_images_alone(world):
    from competition.data.io import load_split
    from competition.ensemble import load_ensemble
    from competition.ensemble_tuning import colour_view_oof
    from competition.oof import collect_oof
    from competition.predict import LoadedMember, predict_scaled
    from competition.predict.preprocess import colour_view, is_gray

    ensemble = load_ensemble(world["models"], "standin", create=False)
    oof = collect_oof(ensemble, "all", None)
    samples, _ = load_split(world["data"] / "stage1_train", ids=sorted(oof.probs))
    images = {s.image_id: s.image for s in samples}
    labels = {s.image_id: s.label for s in samples}
    viewed, n_colour = colour_view_oof(ensemble, "all", oof, images, labels, VIEWS, device="cpu",
                                       loader=cached_loader)
    colour = sorted(i for i in images if not is_gray(images[i]))
    assert colour and n_colour == len(colour)
    for i in images:
        if i not in colour:
            assert viewed.probs[i] is oof.probs[i]
    model, config = cached_loader(ensemble.member_folder("all/a"), "cpu")
    member = LoadedMember("all/a", ensemble.member_folder("all/a"), model, config)
    i = colour[0]
    views = [predict_scaled(member, colour_view(images[i], v), 1.0, tta="none", device="cpu") for v in VIEWS]
    np.testing.assert_allclose(viewed.probs[i], np.mean([oof.probs[i], *views], axis=0), atol=1e-5)


@pytest.mark.parametrize("views_win", [True, False])
def test_tuning_keeps_the_views_only_where_they_score_better_out_of_sample(world, tmp_path, monkeypatch, views_win):
    from competition import ensemble_tuning
    from competition.ensemble import load_ensemble, read_ensemble

    models = tmp_path / "models"
    shutil.copytree(world["models"], models)
    real = ensemble_tuning.crossfit_postprocess
    calls = []

    def rigged(samples, *args, **kwargs):
        # the second cross-fitting of an entry is the one with the views
        out = real(samples, *args, **kwargs)
        calls.append(out)
        viewed = len(calls) % 2 == 0
        return {**out, "score": 0.9 if viewed == views_win else 0.1}

    monkeypatch.setattr(ensemble_tuning, "crossfit_postprocess", rigged)
    conditions = {i: f"c{k}" for k, i in enumerate(sorted(world["drawn"]["train"]))}
    ensemble = load_ensemble(models, "standin")
    _, outcomes = ensemble_tuning.tune_ensemble(ensemble, n_rounds=1, conditions=conditions, colour_views=VIEWS,
                                                device="cpu", loader=cached_loader, entries=["histology"])
    (histo,) = outcomes
    assert histo.views["n_colour_images"] == 2 and histo.views["by"] == "crossfit"
    assert histo.views["kept"] == (list(VIEWS) if views_win else [])
    saved = read_ensemble(models / "standin" / "ensemble.json")
    assert saved.colour_views("histology") == (VIEWS if views_win else ())
    assert saved.entries["histology"].tuning["crossfit"]["score"] == 0.9
    assert saved.entries["histology"].tuning["colour_views"]["views_crossfit"] == (0.9 if views_win else 0.1)

    # tuning again without candidates clears them: the parameters are then tuned without views
    _, outcomes = ensemble_tuning.tune_ensemble(saved, n_rounds=1, entries=["histology"])
    assert read_ensemble(models / "standin" / "ensemble.json").colour_views("histology") == ()
    assert outcomes[0].views is None


def test_grey_images_need_no_network_and_the_all_entry_gets_no_views(world, tmp_path):
    from competition.ensemble import load_ensemble
    from competition.ensemble_tuning import colour_view_oof, tune_ensemble
    from competition.oof import collect_oof

    ensemble = load_ensemble(world["models"], "standin", create=False)
    oof = collect_oof(ensemble, "all", None)
    grey = {i: np.zeros((*p.shape[1:], 3), np.uint8) for i, p in oof.probs.items()}

    def never(*args):
        raise AssertionError("a member was loaded")

    assert colour_view_oof(ensemble, "all", oof, grey, {}, VIEWS, device="cpu", loader=never) == (oof, 0)
    models = tmp_path / "models"
    shutil.copytree(world["models"], models)
    (out,) = tune_ensemble(load_ensemble(models, "standin"), n_rounds=1, colour_views=["gray"], device="cpu",
                           loader=never, entries=["all"])[1]
    assert out.views is None


def test_the_tune_command_rejects_unknown_views(world, capsys):
    from competition.cli import main

    assert main(["tune", "--recipe", "standin", "--models", str(world["models"]), "--colour-views", "gray,hue"]) == 2
    assert "--colour-views: unknown colour view(s) ['hue']" in capsys.readouterr().err
