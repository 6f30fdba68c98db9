"""Submissions end to end on stand-in models: routing, sidecar, problems, never overwriting."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
import pytest

REPO = Path(__file__).resolve().parents[1]

# ----------------------------------------------------------------------------- drawn data


def draw_sample(kind: str, shape: tuple[int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A drawn image of one type with a few disks (and a touching pair) and its label.

    Shapes: -> image (H, W, 3) uint8, label (H, W) int32.
    """
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    label = np.zeros(shape, np.int32)
    n = 0
    centres = [(h * 0.3, w * 0.3), (h * 0.3, w * 0.3 + 11), (h * 0.7, w * 0.6), (h * 0.25, w * 0.75)]
    centres += [(rng.uniform(8, h - 8), rng.uniform(8, w - 8)) for _ in range(3)]
    for cy, cx in centres:
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(5, 8) ** 2
        disk &= label == 0
        if disk.sum() > 10:
            n += 1
            label[disk] = n
    inside = label > 0
    if kind == "fluorescence":
        image = np.where(inside, 200, 10)[..., None].repeat(3, axis=2)
    elif kind == "histology":
        image = np.where(inside[..., None], [120, 40, 140], [235, 190, 220])
    elif kind == "brightfield":
        image = np.where(inside, 80, 200)[..., None].repeat(3, axis=2)
    else:
        raise ValueError(kind)
    noise = rng.integers(-4, 5, size=image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8), label


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_dataset(root: Path, *, n_test_per_type: int = 1, seed: int = 0) -> dict:
    """Kaggle layout: stage1_train (with masks), stage1_test, sample submission, solution.

    Returns:
        {"train": {id: (type, label)}, "test": {id: (type, label)}}.
    """
    from competition.solution import write_solution

    rng = np.random.default_rng(seed)
    kinds = ("fluorescence", "histology", "brightfield")
    shapes = [(67, 93), (96, 80), (64, 64), (100, 70)]
    out: dict = {"train": {}, "test": {}}
    for split, n_per in (("stage1_train", 2), ("stage1_test", n_test_per_type)):
        for kind in kinds:
            for i in range(n_per):
                image_id = f"{split[7:]}{kind[:4]}{i:02d}"
                image, label = draw_sample(kind, shapes[(i + len(out[split[7:]])) % len(shapes)], rng)
                write_png(root / split / image_id / "images" / f"{image_id}.png", image)
                if split == "stage1_train":
                    for k in range(1, label.max() + 1):
                        write_png(root / split / image_id / "masks" / f"m{k:03d}.png", ((label == k) * 255).astype(np.uint8))
                out[split[7:]][image_id] = (kind, label)
    test = out["test"]
    with (root / "stage1_sample_submission.csv").open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["ImageId", "EncodedPixels"])
        for image_id in test:
            writer.writerow([image_id, "1 1"])
    write_solution({i: lab for i, (_, lab) in test.items()}, root / "stage1_solution.csv",
                   {i: ("Public" if n % 2 else "Private") for n, i in enumerate(test)})
    return out


# ----------------------------------------------------------------------------- stand-in members

CHANNELS = ["body", "boundary", "gap"]


def make_member(root: Path, key: str, *, data_dir: Path | None = None, oof: dict | None = None,
                seed: int = 0, encoder: str = "mobilenet_v2", finished: bool = True) -> Path:
    """A member folder in the training code's format (config.json, best.pt, metrics.json,
    done, optional oof.npz) holding a random-weight smp Unet.

    Args:
        oof: ImageId -> (type, probs C×H×W float) written as oof.npz (uint8, scale 255).
    """
    import torch

    from competition.network import build_network
    from competition.predict.preprocess import IMAGENET_MEAN, IMAGENET_STD

    folder = root / key
    folder.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    net = build_network("Unet", encoder, len(CHANNELS))
    torch.save({"model": net.state_dict(), "epoch": 1, "score": 0.5}, folder / "best.pt")
    mtype, name = key.split("/")
    config = {"recipe": root.name, "key": key, "type": mtype, "name": name, "arch": "Unet",
              "encoder": encoder, "channels": CHANNELS, "mean": list(IMAGENET_MEAN),
              "std": list(IMAGENET_STD), "stride": 32, "invert": True, "fold": 0,
              "data_dir": str(data_dir) if data_dir else ""}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "metrics.json").write_text(json.dumps({"key": key, "best_epoch": 1, "best_score": 0.5,
                                                     "best_by_type": {}, "finished": finished}))
    if finished:
        (folder / "done").write_text("done\n")
    if oof:
        arrays = {"ids": np.array(list(oof)), "types": np.array([t for t, _ in oof.values()]),
                  "channels": np.array(CHANNELS), "scale": np.array(255.0), "epoch": np.array(1)}
        arrays.update({f"p_{i}": np.round(p * 255).astype(np.uint8) for i, (_, p) in oof.items()})
        np.savez_compressed(folder / "oof.npz", **arrays)
    return folder


def soft_probs(label: np.ndarray, peak: float = 1.0) -> np.ndarray:
    """Probabilities made from the targets of a label, blurred, body scaled to ``peak``."""
    from scipy import ndimage as ndi

    from competition.targets import make_targets

    t = make_targets(label)
    t = np.stack([ndi.gaussian_filter(c, 1.0) for c in t])
    t[0] *= peak
    return np.clip(t, 0, 1).astype(np.float32)


# ----------------------------------------------------------------------------- fixtures


pytestmark = pytest.mark.usefixtures("one_torch_thread")



@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """Drawn data, two stand-in members (all + fluorescence) with out-of-fold maps."""
    root = tmp_path_factory.mktemp("submit")
    data = make_dataset(root / "data")
    models = root / "models"
    oof = {i: (t, soft_probs(lab, peak=0.45)) for i, (t, lab) in data["train"].items()}
    make_member(models / "standin", "all/a", data_dir=root / "data", oof=oof)
    make_member(models / "standin", "fluorescence/f", data_dir=root / "data", seed=1,
                oof={i: v for i, v in oof.items() if v[0] == "fluorescence"})
    return {"root": root, "data": root / "data", "models": models, "drawn": data}


_LOADED: dict = {}


def cached_loader(folder, device):
    """load_member, memoised: the stand-in networks are built once for the whole module."""
    from competition.train.members import load_member

    key = (str(folder), str(device))
    if key not in _LOADED:
        _LOADED[key] = load_member(folder, device)
    return _LOADED[key]


def submit(world, tmp_path, **kw):
    from competition.submit import make_submission

    return make_submission(options(world, tmp_path, **kw), loader=cached_loader)


def options(world, tmp_path, **kw):
    from competition.submit import SubmitOptions

    base = {"recipe": "standin", "data_dir": world["data"], "models_dir": world["models"],
            "out_dir": tmp_path / "subs", "device": "cpu"}
    base.update(kw)
    return SubmitOptions(**base)


def read_rows(path: Path) -> list[list[str]]:
    with path.open(newline="") as fh:
        return list(csv.reader(fh))[1:]


# ----------------------------------------------------------------------------- submit


def test_submission_is_valid_and_the_sidecar_records_the_run(world, tmp_path):
    from competition.submission import validate_submission

    from competition import cpu_model
    from competition.submit import make_submission

    result = make_submission(options(world, tmp_path, tta="flips"))
    test = world["drawn"]["test"]
    assert result.path.name.startswith("standin-stage1-")
    _, problems = validate_submission(result.path, required_ids=list(test))
    assert problems == []
    record = json.loads(result.sidecar.read_text())
    for key in ("recipe", "members", "postprocess", "local_cv", "routing", "tta", "git_commit", "timings", "problems"):
        assert key in record, key
    assert record["tta"] == "flips"
    assert record["threads"] >= 1
    assert record["cpu"] == cpu_model(), "the CPU the timings were taken on"
    assert record["cpu"] is not None and "AMX" in record["cpu"], record["cpu"]
    assert sorted(record["members"]) == ["all/a", "fluorescence/f"]
    for image_id, (kind, _) in test.items():
        route = record["routing"][image_id]
        assert route["type"] == kind
        assert route["fallback"] is (kind != "fluorescence")
        assert [m["member"] for m in route["members"]] == (["fluorescence/f"] if kind == "fluorescence" else ["all/a"])
    assert record["timings"]["network_s"] > 0
    by_pass = record["timings"]["network_by_pass"]
    assert by_pass.keys() == {"final"}, "members without a nucleus diameter: no size passes"
    assert by_pass["final"]["forwards"] > 0 and by_pass["final"]["megapixels"] > 0
    assert by_pass["final"]["seconds"] == pytest.approx(record["timings"]["network_s"], abs=2e-3)
    assert record["problems"] == []


def test_two_submissions_in_a_row_give_two_files(world, tmp_path):
    first = submit(world, tmp_path)
    second = submit(world, tmp_path)
    assert first.path != second.path
    assert first.path.is_file()
    assert second.path.is_file()
    assert sorted(p.suffix for p in (tmp_path / "subs").iterdir()) == [".csv", ".csv", ".json", ".json"]


def test_submission_path_never_reuses_a_name(tmp_path):
    from datetime import datetime, timezone

    from competition.submit import submission_path

    now = datetime(2018, 4, 16, 12, 0, 0, tzinfo=timezone.utc)
    first = submission_path(tmp_path, "cpu", "stage1", now)
    assert first.name == "cpu-stage1-20180416T120000Z.csv"
    first.write_text("x")
    second = submission_path(tmp_path, "cpu", "stage1", now)
    assert second.name == "cpu-stage1-20180416T120000Z-2.csv"


@pytest.fixture
def broken_world(world, tmp_path) -> dict:
    """The drawn data with one test image replaced by garbage bytes."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(world["data"], data)
    victim = sorted(world["drawn"]["test"])[0]
    (data / "stage1_test" / victim / "images" / f"{victim}.png").write_bytes(b"not a png")
    return {**world, "data": data, "victim": victim}


def test_unreadable_test_image_gets_an_empty_row_and_is_reported(broken_world, tmp_path, caplog):
    result = submit(broken_world, tmp_path)
    victim = broken_world["victim"]
    rows = read_rows(result.path)
    assert [r for r in rows if r[0] == victim] == [[victim, ""]]
    assert {r[0] for r in rows} == set(broken_world["drawn"]["test"])
    record = json.loads(result.sidecar.read_text())
    assert [p["image_id"] for p in record["problems"]] == [victim]
    assert victim in caplog.text


def test_unreadable_test_image_with_strict_is_an_error(broken_world, tmp_path):
    from competition.errors import DataError
    with pytest.raises(DataError, match=broken_world["victim"]):
        submit(broken_world, tmp_path, strict=True)
    assert not (tmp_path / "subs").exists()


def test_missing_member_folder_fails_before_any_prediction(world, tmp_path, monkeypatch):
    import shutil

    from competition.errors import UserError
    from competition.predict import EnsemblePredictor
    models = tmp_path / "models"
    shutil.copytree(world["models"], models)
    path = models / "standin" / "ensemble.json"
    if not path.exists():
        from competition.ensemble import load_ensemble

        load_ensemble(models, "standin")
    data = json.loads(path.read_text())
    data["types"]["histology"]["members"] = [{"member": "histology/gone", "weight": 1.0}]
    path.write_text(json.dumps(data))

    def never(*args, **kwargs):
        raise AssertionError("prediction started")

    monkeypatch.setattr(EnsemblePredictor, "predict", never)
    with pytest.raises(UserError, match="histology/gone"):
        submit(world, tmp_path, models_dir=models)
    assert not (tmp_path / "subs").exists()


def test_solution_scores_and_appends_to_the_leaderboard(world, tmp_path):
    from competition import leaderboard
    result = submit(world, tmp_path, solution=world["data"] / "stage1_solution.csv", postprocess_workers=1)
    assert result.report[-1].startswith("score ")
    rows = leaderboard.read_rows(tmp_path / "subs" / "leaderboard.csv")
    assert len(rows) == 1
    assert rows[0]["submission"] == str(result.path)
    record = json.loads(result.sidecar.read_text())
    assert record["score"]["score"] == pytest.approx(result.score.score, abs=1e-6)
    errors = record["score"]["errors_at_iou_0.5"]
    assert set(errors) == set(result.score.errors_by_group())
    for kind, counts in errors.items():
        assert counts["n_true"] == sum(c.n_true for i, c in result.score.errors.items() if result.score.types.get(i) == kind)
        assert counts["matched"] + counts["missed"] + counts["merged"] + counts["split"] + counts["outline"] == counts["n_true"]


def test_tuning_writes_better_params_into_the_ensemble(world, tmp_path):
    import shutil

    from competition.ensemble import load_ensemble, read_ensemble
    from competition.ensemble_tuning import tune_ensemble

    models = tmp_path / "models"
    shutil.copytree(world["models"], models)
    ensemble, outcomes = tune_ensemble(load_ensemble(models, "standin"), n_rounds=1)
    by_entry = {t.entry: t for t in outcomes}
    assert set(by_entry) == {"all", "fluorescence", "histology", "brightfield"}
    fluo = by_entry["fluorescence"].result
    assert fluo.n_images == 2
    assert fluo.score_after > fluo.score_before
    assert fluo.params.body_threshold < 0.45  # the drawn maps peak at 0.45
    saved = read_ensemble(models / "standin" / "ensemble.json")
    assert saved.entries["fluorescence"].postprocess == fluo.params.to_dict()
    assert saved.entries["histology"].tuning["from_entry"] == "all"  # fallback: all's maps of histology images
    assert saved.entries["histology"].tuning["n_images"] == 2
    # the fine-tuned member's maps equal the all-type model's here: a tie keeps the own member
    assert by_entry["fluorescence"].choice["kept"] == "own"
    assert saved.entries["fluorescence"].members[0].key == "fluorescence/f"


def test_tuning_falls_back_to_the_all_type_model_when_it_scores_better(world, tmp_path):
    import shutil

    from competition.ensemble import load_ensemble, read_ensemble
    from competition.ensemble_tuning import tune_ensemble

    models = tmp_path / "models"
    shutil.copytree(world["models"], models)
    folder = models / "standin" / "fluorescence" / "f"
    worse = {i: (t, soft_probs(np.roll(lab, 6, axis=1), peak=0.45))  # shifted: poor IoU
             for i, (t, lab) in world["drawn"]["train"].items() if t == "fluorescence"}
    shutil.rmtree(folder)
    make_member(models / "standin", "fluorescence/f", data_dir=world["data"], seed=1, oof=worse)

    _, outcomes = tune_ensemble(load_ensemble(models, "standin"), n_rounds=1)
    choice = {t.entry: t for t in outcomes}["fluorescence"].choice
    assert choice["kept"] == "all"
    assert choice["all_score"] > choice["own_score"]
    saved = read_ensemble(models / "standin" / "ensemble.json")
    assert saved.entries["fluorescence"].members == ()
    assert saved.route("fluorescence") == ("all", True)
    assert saved.entries["fluorescence"].tuning["from_entry"] == "all"


def test_tuning_averages_the_types_members_with_the_all_type_ones_when_that_scores_best(world, tmp_path):
    """The type's member draws every nucleus a few pixels to the right, the all-type member
    as far to the left: each alone misses the outlines, their mean is centred."""
    import shutil

    from competition.ensemble import load_ensemble, read_ensemble
    from competition.ensemble_tuning import tune_ensemble

    models = tmp_path / "models"
    shutil.copytree(world["models"], models)
    drawn = world["drawn"]["train"].items()
    for key, shift, kinds in (("fluorescence/f", 2, ("fluorescence",)), ("all/a", -2, None)):
        shutil.rmtree(models / "standin" / key)
        oof = {i: (t, soft_probs(np.roll(lab, shift, axis=1), peak=0.9)) for i, (t, lab) in drawn
               if kinds is None or t in kinds}
        make_member(models / "standin", key, data_dir=world["data"], seed=1, oof=oof)
    conditions = {i: f"c{k % 2}" for k, i in enumerate(sorted(world["drawn"]["train"]))}
    _, without = tune_ensemble(load_ensemble(models, "standin"), n_rounds=1, conditions=conditions, n_parts=2,
                               write=False)
    assert "both_score" not in {t.entry: t for t in without}["fluorescence"].choice, "off by default"
    _, outcomes = tune_ensemble(load_ensemble(models, "standin"), n_rounds=1, conditions=conditions, n_parts=2,
                                average_with_all=True)
    fluo = {t.entry: t for t in outcomes}["fluorescence"]
    choice = fluo.choice
    assert choice["kept"] == "both"
    assert choice["both_score"] > max(choice["own_score"], choice["all_score"])
    assert fluo.members == ("fluorescence/f", "all/a")
    saved = read_ensemble(models / "standin" / "ensemble.json")
    assert [m.key for m in saved.entries["fluorescence"].members] == ["fluorescence/f", "all/a"]
    assert saved.route("fluorescence") == ("fluorescence", False)
    assert saved.entries["fluorescence"].tuning["choice"]["kept"] == "both"


def test_a_member_dropped_by_tuning_is_not_reported_as_unlisted(world, tmp_path, caplog):
    import logging
    import shutil

    from competition.ensemble import load_ensemble, read_ensemble, write_ensemble
    from competition.ensemble_tuning import tune_ensemble

    models = tmp_path / "models"
    shutil.copytree(world["models"], models)
    worse = {i: (t, soft_probs(np.roll(lab, 6, axis=1), peak=0.45))
             for i, (t, lab) in world["drawn"]["train"].items() if t == "fluorescence"}
    shutil.rmtree(models / "standin" / "fluorescence" / "f")
    make_member(models / "standin", "fluorescence/f", data_dir=world["data"], seed=1, oof=worse)
    tune_ensemble(load_ensemble(models, "standin"), n_rounds=1)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="competition.ensemble"):
        load_ensemble(models, "standin")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert "dropped by tuning" in caplog.text
    # without the tuning record the same file's missing member is a warning
    saved = read_ensemble(models / "standin" / "ensemble.json")
    write_ensemble(saved.with_tuning("fluorescence", saved.entries["fluorescence"].postprocess or {}, {}))
    caplog.clear()
    load_ensemble(models, "standin")
    assert "does not list finished member(s) fluorescence/f" in caplog.text


def test_with_conditions_the_choice_of_members_is_made_out_of_sample(world, tmp_path, monkeypatch):
    """Given conditions, own members and the all-type model are compared by their
    cross-fitted scores, not the tuned (in-sample) ones: here the cross-fitting is made to
    disagree with the tuned scores, and it decides."""
    import shutil

    from competition import ensemble_tuning
    from competition.ensemble import load_ensemble, read_ensemble

    models = tmp_path / "models"
    shutil.copytree(world["models"], models)
    folder = models / "standin" / "fluorescence" / "f"
    worse = {i: (t, soft_probs(np.roll(lab, 6, axis=1), peak=0.45))
             for i, (t, lab) in world["drawn"]["train"].items() if t == "fluorescence"}
    shutil.rmtree(folder)
    make_member(models / "standin", "fluorescence/f", data_dir=world["data"], seed=1, oof=worse)
    real = ensemble_tuning.crossfit_postprocess

    def inverted(*args, **kwargs):
        out = real(*args, **kwargs)
        return {**out, "score": None if out["score"] is None else 1.0 - out["score"]}

    monkeypatch.setattr(ensemble_tuning, "crossfit_postprocess", inverted)
    conditions = {i: f"c{k}" for k, i in enumerate(sorted(world["drawn"]["train"]))}
    _, outcomes = ensemble_tuning.tune_ensemble(load_ensemble(models, "standin"), n_rounds=1,
                                                conditions=conditions)
    fluo = {t.entry: t for t in outcomes}["fluorescence"]
    choice = fluo.choice
    assert choice["by"] == "crossfit"
    assert choice["all_score"] > choice["own_score"], "in sample the all-type model wins"
    assert choice["own_crossfit"] > choice["all_crossfit"]
    assert choice["kept"] == "own"
    assert fluo.crossfit["score"] == choice["own_crossfit"], "the entry's out-of-sample record is the kept side's"
    saved = read_ensemble(models / "standin" / "ensemble.json")
    assert saved.entries["fluorescence"].members[0].key == "fluorescence/f"


# ----------------------------------------------------------------------------- kaggle


def fake_kaggle(bin_dir: Path, script: str) -> None:
    bin_dir.mkdir(parents=True, exist_ok=True)
    exe = bin_dir / "kaggle"
    exe.write_text(f"#!{sys.executable}\n{script}\n")
    exe.chmod(0o755)


def no_credentials(monkeypatch, tmp_path) -> None:
    for name in ("KAGGLE_API_TOKEN", "KAGGLE_USERNAME", "KAGGLE_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KAGGLE_CONFIG_DIR", str(tmp_path / "no-kaggle-config"))


def test_upload_without_credentials_keeps_the_csv_and_says_what_to_do(world, tmp_path, monkeypatch):
    no_credentials(monkeypatch, tmp_path)
    monkeypatch.setenv("KAGGLE_SUBMIT", "1")
    result = submit(world, tmp_path)
    assert result.upload["status"] == "no-credentials"
    assert "KAGGLE_API_TOKEN" in result.upload["detail"]
    assert result.path.is_file()
    assert json.loads(result.sidecar.read_text())["upload"]["status"] == "no-credentials"


def test_upload_runs_the_kaggle_cli_and_times_out_instead_of_hanging(tmp_path, monkeypatch):
    from competition.upload import kaggle_upload

    monkeypatch.setenv("KAGGLE_API_TOKEN", "stand-in")
    bin_dir = tmp_path / "bin"
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    csv_path = tmp_path / "s.csv"
    csv_path.write_text("ImageId,EncodedPixels\n")
    log_file = tmp_path / "args.json"
    fake_kaggle(bin_dir, f"import json, sys\njson.dump(sys.argv[1:], open({str(log_file)!r}, 'w'))\nprint('Successfully submitted')")
    outcome = kaggle_upload(csv_path, "cv 0.5", check_network=False)
    assert outcome["status"] == "uploaded"
    assert json.loads(log_file.read_text()) == ["competitions", "submit", "data-science-bowl-2018", "-f", str(csv_path), "-m", "cv 0.5"]
    fake_kaggle(bin_dir, "import time\ntime.sleep(30)")
    assert kaggle_upload(csv_path, "m", timeout=1, check_network=False)["status"] == "timeout"
    fake_kaggle(bin_dir, "import sys\nprint('403 - Forbidden', file=sys.stderr)\nsys.exit(1)")
    failed = kaggle_upload(csv_path, "m", check_network=False)
    assert failed["status"] == "failed"
    assert "rules" in failed["detail"]
    assert csv_path.is_file()


# ----------------------------------------------------------------------------- CLI


def run_cli(*args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "competition", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600)


def test_submit_cli_reports_a_missing_recipe_folder_as_one_line(world, tmp_path, capsys):
    from competition.cli import main

    status = main(["submit", "--recipe", "nothing", "--data", str(world["data"]), "--models", str(tmp_path / "m"),
                   "--out-dir", str(tmp_path / "s")])
    assert status == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no models for recipe 'nothing'")
    assert len(err.splitlines()) == 1


def test_predict_command_writes_labels_and_routing(world, tmp_path):
    from PIL import Image

    from competition.cli import main

    out = tmp_path / "pred"
    status = main(["predict", str(world["data"] / "stage1_test"), "--recipe", "standin", "--models", str(world["models"]),
                   "--out", str(out), "--device", "cpu", "--probs"])
    assert status == 0
    routing = json.loads((out / "routing.json").read_text())
    assert set(routing) == set(world["drawn"]["test"])
    for image_id, (kind, label) in world["drawn"]["test"].items():
        assert routing[image_id]["type"] == kind
        assert np.asarray(Image.open(out / f"{image_id}.png")).shape == label.shape
        with np.load(out / f"{image_id}.npz") as z:
            assert z["probs"].shape == (3, *label.shape)


def test_bench_inference_reports_each_tta_mode_the_engine_check_and_the_float32_reference(world):
    from competition.bench_inference import ENGINE_CHECK_LABEL, bench_inference

    timings = bench_inference(world["models"], "standin", world["data"], n_images=1, tta=("none", "flips"), device="cpu",
                              loader=cached_loader)
    assert [t.tta for t in timings] == ["none", "flips", "flips", "flips"]
    assert timings[-1].engine == "torch fp32"
    assert timings[-2].engine == "torch fp32" + ENGINE_CHECK_LABEL
    assert all(t.n_images == 1 for t in timings)
    assert all(0 < t.network_s <= t.predict_s <= t.total_s for t in timings)
    assert "img/s" in timings[1].line()
    assert [name for name, *_ in timings[1].passes] == ["final"]
    assert "network by pass: final " in timings[1].line()
    for compared in timings[-2:]:
        assert compared.changed_objects is not None and 0.0 <= compared.agreement <= 1.0
        assert compared.changed_objects <= compared.n_objects
        assert "not reproduced pixel for pixel" in compared.line()
        assert "in the images both runs resized alike" in compared.line()
        assert 0 <= compared.unpartnered_apart <= compared.unpartnered_objects
        assert 0 <= compared.images_apart <= compared.n_images
    assert timings[0].changed_objects is None and timings[1].changed_objects is None
    without = bench_inference(world["models"], "standin", world["data"], n_images=1, tta=("flips",), device="cpu",
                              loader=cached_loader, engine_check=False)
    assert [t.engine for t in without] == [timings[1].engine, "torch fp32"]


def test_compare_objects_counts_reference_objects_the_fast_run_does_not_reproduce():
    from competition.bench_inference import _Clock, compare_objects
    from competition.rle import label_to_rles

    ref = np.zeros((20, 20), np.int32)
    ref[2:6, 2:6], ref[10:15, 10:15] = 1, 2
    same, moved = ref.copy(), ref.copy()
    moved[moved == 2] = 0
    moved[11:16, 10:15] = 2  # shifted by one row: IoU 20/30, not identical
    a, b, c = _Clock(), _Clock(), _Clock()
    for clock, label in ((a, ref), (b, same), (c, moved)):
        clock.objects.append((label.shape, label_to_rles(label)))
    assert compare_objects(b, a) == (0, 1.0, 0, 0, 0, 0)
    changes = compare_objects(c, a)
    assert changes.changed == 1 and changes.reshaped == 1, "moved at IoU 2/3: matched up to 0.65"
    assert changes.unpartnered == 0
    assert changes.agreement == pytest.approx(np.mean([1.0] * 4 + [1 / 3] * 6))
    lost = ref.copy()
    lost[lost == 2] = 0
    d = _Clock()
    d.objects.append((lost.shape, label_to_rles(lost)))
    assert compare_objects(d, a)[2:] == (1, 1, 0, 0), "no factors recorded: every image counts as resized alike"


def test_compare_objects_tells_images_resized_apart_from_the_rest():
    from competition.bench_inference import InferenceTiming, _Clock, compare_objects
    from competition.rle import label_to_rles

    ref = np.zeros((20, 20), np.int32)
    ref[2:6, 2:6], ref[10:15, 10:15] = 1, 2
    lost = ref.copy()
    lost[lost == 2] = 0
    fast, reference = _Clock(), _Clock()
    # image 0: one object lost at the same factors; image 1: both lost, resized one grid step
    # apart; image 2: identical, resized apart
    for label, f_scale, r_scale in ((lost, 1.0, 1.0), (np.zeros_like(ref), 1.0905, 1.0), (ref, 0.5, 0.4585)):
        fast.objects.append((ref.shape, label_to_rles(label)))
        reference.objects.append((ref.shape, label_to_rles(ref)))
        fast.scales.append((("m", f_scale),))
        reference.scales.append((("m", r_scale),))
    changes = compare_objects(fast, reference)
    assert changes.unpartnered == 3
    assert (changes.unpartnered_apart, changes.images_apart) == (2, 2)
    timing = InferenceTiming("flips", 3, 1.0, 0.5, 0.8, 0.1, 0.1, 4, changed_objects=changes.changed,
                             agreement=changes.agreement, reshaped_objects=changes.reshaped,
                             unpartnered_objects=changes.unpartnered, unpartnered_apart=changes.unpartnered_apart,
                             images_apart=changes.images_apart)
    assert ("3 without one at IoU > 0.5 (1 in the images both runs resized alike, 2 in the 2 image(s) they "
            "resized by different factors)") in timing.line()


def test_bench_resizes_the_timed_runs_and_keeps_the_reference_at_today_s_settings(world, monkeypatch):
    from competition import bench_inference as B

    seen, refs = [], []
    real = B._predictor

    def recording(*args, **kw):
        predictor = real(*args, **kw)
        role = "reference" if kw.get("sizing") is B.REFERENCE_SIZING else kw.get("engine")
        seen.append((role, predictor.nucleus_px, predictor.max_upscale, predictor.size_max_pixels,
                     predictor.upscale_max_pixels))
        if role == "reference":
            refs.append(predictor)
        return predictor

    monkeypatch.setattr(B, "_predictor", recording)
    sizing = {"nucleus_px": 12.0, "max_upscale": 2.0, "size_max_pixels": 20_000, "upscale_max_pixels": 50_000}
    B.bench_inference(world["models"], "standin", world["data"], n_images=1, tta=("none",), device="cpu",
                      loader=cached_loader, sizing=sizing)
    B.bench_stage2(world["models"], "standin", 1, every=1, device="cpu", loader=cached_loader, sizing=sizing)
    timed = [s for s in seen if s[0] != "reference"]
    reference = [s for s in seen if s[0] == "reference"]
    assert any(s[0] == "torch" for s in timed), "the engine check: float32 PyTorch at the timed runs' sizing"
    assert timed and all(s[1:] == (12.0, 2.0, 20_000, 50_000) for s in timed)
    assert len(reference) == 2 and all(s[1:] == (None, 3.0, None, None) for s in reference)
    assert all(p.rescale_tolerance == 0.0 for p in refs), "the reference keeps no pass's factors but exact ones"


def test_bench_size_passes_reach_the_timed_runs_and_not_the_reference(world, monkeypatch):
    from competition import bench_inference as B

    passes = {}
    real = B._predictor

    def recording(*args, **kw):
        predictor = real(*args, **kw)
        role = "reference" if kw.get("sizing") is B.REFERENCE_SIZING else kw.get("engine")
        passes.setdefault(role, set()).add(predictor.size_passes)
        return predictor

    monkeypatch.setattr(B, "_predictor", recording)
    seen = {}

    def record(*args, sizing=None, **kwargs):
        seen["sizing"] = sizing
        return []

    monkeypatch.setattr(B, "bench_inference", record)
    assert B.main(["--size-passes", "1", "--stage2-like", "0", "--no-peak-memory", "--no-reference"]) == 0
    assert seen["sizing"] == {"size_passes": 1}
    monkeypatch.undo()
    monkeypatch.setattr(B, "_predictor", recording)
    B.bench_inference(world["models"], "standin", world["data"], n_images=1, tta=("none",), device="cpu",
                      loader=cached_loader, sizing=seen["sizing"])
    assert passes.pop("reference") == {2}, "the reference keeps today's two size passes"
    assert passes and all(p == {1} for p in passes.values())


def test_stage2_like_images_follow_the_size_table_and_are_seeded():
    from competition.bench_inference import STAGE2_SHAPES, stage2_like

    shapes = {(h, w) for h, w, _ in STAGE2_SHAPES}
    first = list(stage2_like(6, seed=1))
    assert all(image.shape[:2] in shapes and image.dtype == np.uint8 and image.shape[2] == 3 for _, image in first)
    again = list(stage2_like(6, seed=1))
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(first, again))


def test_bench_stage2_projects_the_final_stage_and_times_the_reference(world):
    from competition.bench_inference import STAGE2_IMAGES, bench_stage2

    report = bench_stage2(world["models"], "standin", 3, every=2, device="cpu", loader=cached_loader,
                          tiling=None, seed=2)
    assert report.n_images == 3 and report.n_reference == 2
    assert report.total_s > 0 and report.reference_s > 0 and report.fast_on_reference_s > 0
    assert report.projected_min == pytest.approx(report.total_s / 3 * STAGE2_IMAGES / 60)
    assert "projected 3019 images" in report.lines()[0] and "x faster" in report.lines()[1]


# ----------------------------------------------------------------------------- the demo chain


def _has_synth() -> bool:
    return (REPO / "competition" / "synth.py").is_file() and (REPO / "competition" / "commands" / "synth.py").is_file()


@pytest.mark.slow
def test_demo_chain_synth_train_tune_submit_leaderboard_report(tmp_path):
    """What `make demo` runs, by subprocess, into tmp_path."""
    data, models, subs = tmp_path / "data", tmp_path / "models", tmp_path / "subs"
    if _has_synth():
        out = run_cli("synth", str(data), "--n-train", "12", "--n-test", "6")
        assert out.returncode == 0, out.stderr
    else:  # the synthetic-data module is not there yet: drawn data in the same layout
        make_dataset(data, n_test_per_type=2)
    out = run_cli("train-all", "--recipe", "tiny", "--data", str(data), "--models", str(models),
                  "--folds", str(tmp_path / "folds.csv"), "--cache-dir", str(tmp_path / "cache"), "--device", "cpu")
    assert out.returncode == 0, out.stderr[-3000:]
    out = run_cli("tune", "--recipe", "tiny", "--models", str(models), "--rounds", "1")
    assert out.returncode == 0, out.stderr[-3000:]
    assert "score" in out.stdout
    ensemble = json.loads((models / "tiny" / "ensemble.json").read_text())
    assert any(entry["postprocess"] for entry in ensemble["types"].values())
    out = run_cli("submit", "--recipe", "tiny", "--data", str(data), "--models", str(models), "--out-dir", str(subs),
                  "--solution", str(data / "stage1_solution.csv"), "--device", "cpu")
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip().splitlines()[-1].startswith("score ")
    submissions = sorted(subs.glob("tiny-stage1-*.csv"))
    assert len(submissions) == 1
    assert json.loads(submissions[0].with_suffix(".json").read_text())["score"] is not None
    out = run_cli("leaderboard", "--path", str(subs / "leaderboard.csv"))
    assert out.returncode == 0, out.stderr
    assert str(submissions[0]) in out.stdout
    out = run_cli("report", str(submissions[0]), "--solution", str(data / "stage1_solution.csv"), "--out", str(tmp_path / "report"))
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "report" / "index.html").is_file()


def test_training_validation_scores_the_probabilities_that_submit_post_processes(world):
    """One member, one image: the probabilities evaluate() keeps for the OOF maps are those
    the ensemble predictor hands to post-processing (up to the maps' uint8 quantisation)."""
    from competition.data.io import read_image
    from competition.ensemble import load_ensemble
    from competition.predict import EnsemblePredictor
    from competition.train.dataset import TrainImage
    from competition.train.loop import evaluate
    from competition.train.members import load_member

    folder = world["models"] / "standin" / "all" / "a"
    model, config = load_member(folder)
    ensemble = load_ensemble(world["models"], "standin")
    predictor = EnsemblePredictor(ensemble, device="cpu", tta="none")
    image_id = sorted(world["drawn"]["test"])[0]
    image = read_image(world["data"] / "stage1_test" / image_id / "images" / f"{image_id}.png")
    sample = TrainImage(image_id, image, np.zeros(image.shape[:2], np.int32), "fluorescence", 0)
    kept = evaluate(model, [sample], config, torch.device("cpu"), keep_probs=True).probs[image_id]
    route = predictor.route(image)
    assert [k for k, _ in route.members] == ["all/a"]
    submitted, _ = predictor.predict(image, route)
    assert np.abs(submitted * 255.0 - kept.astype(np.float32)).max() <= 0.5 + 1e-3


def lay_out_holdout(world, tmp_path):
    """Fold 1 of two (alternate training ids) laid out by `holdout`: (ids, folds CSV, folder)."""
    from competition.cli import main

    train = world["drawn"]["train"]
    ids = sorted(train)
    folds = tmp_path / "folds.csv"
    folds.write_text("ImageId,type,fold\n" + "".join(f"{i},{train[i][0]},{k % 2}\n" for k, i in enumerate(ids)))
    out = tmp_path / "holdout"
    assert main(["holdout", "--data", str(world["data"]), "--folds", str(folds), "--fold", "1", "--out", str(out)]) == 0
    return ids, folds, out


def test_holdout_lays_a_training_fold_out_as_a_test_set_and_it_scores(world, tmp_path):
    from competition.cli import main
    from competition.scoring import score_submission

    ids, folds, out = lay_out_holdout(world, tmp_path)
    held = ids[1::2]
    assert sorted(p.name for p in (out / "stage1_test").iterdir()) == held
    assert all((out / "stage1_test" / i / "images" / f"{i}.png").is_file() for i in held)
    assert not any((out / "stage1_test" / i / "masks").exists() for i in held)  # images only
    sample = (out / "stage1_sample_submission.csv").read_text().splitlines()
    assert sample[0] == "ImageId,EncodedPixels" and [r.split(",")[0] for r in sample[1:]] == held
    result = submit(world, tmp_path, data_dir=out, solution=out / "solution.csv")
    scored = score_submission(result.path, out / "solution.csv")
    assert {im.image_id for im in scored.result.images} == set(held)
    assert result.score is not None and result.score.result.score == pytest.approx(scored.result.score)
    assert main(["holdout", "--data", str(world["data"]), "--folds", str(folds), "--fold", "1", "--out", str(out)]) == 2


def test_holdout_scaled_resizes_images_and_masks_alike_and_it_scores(world, tmp_path):
    """`holdout --scale 2`: copies twice the size, every nucleus twice across, the same
    objects; the submit path predicts and scores it like the plain holdout."""
    from competition.cli import main
    from competition.data.io import read_image
    from competition.scoring import score_submission
    from competition.solution import read_solution

    ids, folds, plain = lay_out_holdout(world, tmp_path)
    out = tmp_path / "holdout-x2"
    assert main(["holdout", "--data", str(world["data"]), "--folds", str(folds), "--fold", "1", "--out", str(out),
                 "--scale", "2"]) == 0
    before, after = read_solution(plain / "solution.csv"), read_solution(out / "solution.csv")
    assert sorted(after) == sorted(before) == ids[1::2]
    for image_id in ids[1::2]:
        folder = out / "stage1_test" / image_id / "images"
        assert not folder.is_symlink(), "a resized holdout holds copies, never links into the data"
        small = read_image(plain / "stage1_test" / image_id / "images" / f"{image_id}.png")
        large = read_image(folder / f"{image_id}.png")
        assert large.shape == (2 * small.shape[0], 2 * small.shape[1], 3)
        label, big = before[image_id].label(), after[image_id].label()
        assert big.shape == large.shape[:2]
        assert np.array_equal(big, label.repeat(2, axis=0).repeat(2, axis=1))  # nearest, centres aligned
        assert np.abs(large[::2, ::2].astype(int).mean() - small.astype(int).mean()) < 8
    result = submit(world, tmp_path, data_dir=out, solution=out / "solution.csv")
    assert result.score is not None
    assert result.score.result.score == pytest.approx(score_submission(result.path, out / "solution.csv").result.score)


def test_holdout_scaled_down_drops_only_what_vanishes_and_bad_scales_are_refused(world, tmp_path, capsys):
    from competition.cli import main
    from competition.solution import read_solution

    ids, folds, plain = lay_out_holdout(world, tmp_path)
    out = tmp_path / "holdout-x05"
    assert main(["holdout", "--data", str(world["data"]), "--folds", str(folds), "--fold", "1", "--out", str(out),
                 "--scale", "0.5"]) == 0
    printed = capsys.readouterr().out
    before, after = read_solution(plain / "solution.csv"), read_solution(out / "solution.csv")
    for image_id, image in after.items():
        h, w = before[image_id].shape
        assert image.shape == (round(h / 2), round(w / 2))
        ratio = (image.label() > 0).sum() / (before[image_id].label() > 0).sum()
        assert 0.15 < ratio < 0.35  # a quarter of the area
    n_before = sum(len(i.rles) for i in before.values())
    n_after = sum(len(i.rles) for i in after.values())
    assert f"{n_after} objects resized by 0.5 ({n_before - n_after} too small to keep)" in printed
    for bad in ("0.1", "5"):
        assert main(["holdout", "--data", str(world["data"]), "--folds", str(folds), "--fold", "1",
                     "--out", str(tmp_path / f"bad{bad}"), "--scale", bad]) == 2
        assert "--scale must lie in [0.25, 4.0]" in capsys.readouterr().err
        assert not (tmp_path / f"bad{bad}").exists()


def _write_oof(source: Path, folder: Path, keep) -> None:
    """Write ``folder``'s oof.npz as ``source``'s with only the images ``keep`` accepts (the
    images the member then says it held out)."""
    with np.load(source / "oof.npz") as z:
        arrays = {k: z[k] for k in z.files}
    held = [keep(str(i)) for i in arrays["ids"]]
    arrays["ids"] = arrays["ids"][held]
    arrays["types"] = arrays["types"][held]
    arrays = {k: v for k, v in arrays.items() if not k.startswith("p_") or keep(k[2:])}
    np.savez_compressed(folder / "oof.npz", **arrays)


def test_a_holdout_refuses_members_that_trained_on_its_images(world, tmp_path, monkeypatch):
    """`make holdout FOLD=1` on members that held out fold 0 would score images they trained on."""
    import shutil

    from competition.errors import UserError
    from competition.predict import EnsemblePredictor

    ids, folds, out = lay_out_holdout(world, tmp_path)  # fold 1: ids[1::2], one image per type
    fold0, fold1 = set(ids[0::2]), set(ids[1::2])
    models = tmp_path / "models"
    shutil.copytree(world["models"], models)
    every = world["models"] / "standin" / "all/a"  # the stand-ins' maps hold every training image
    for key in ("all/a", "fluorescence/f"):
        _write_oof(every, models / "standin" / key, lambda i: i in fold0)
    with monkeypatch.context() as patch:
        patch.setattr(EnsemblePredictor, "predict", lambda *a, **k: pytest.fail("refused only after predicting"))
        with pytest.raises(UserError, match=r"all/a trained on \d+ of them .*fluorescence/f trained on") as info:
            submit(world, tmp_path, models_dir=models, data_dir=out, solution=out / "solution.csv", crossfit=True)
    assert "it held out fold" in str(info.value)
    assert not (tmp_path / "subs").exists()
    # the fluorescence member held out the fold's other images but not the one routed to it:
    # found once the images are routed, before anything is written
    fluo = next(i for i in sorted(fold1) if world["drawn"]["train"][i][0] == "fluorescence")
    _write_oof(every, models / "standin" / "all/a", lambda i: i in fold1)
    _write_oof(every, models / "standin" / "fluorescence/f", lambda i: i in fold1 - {fluo})
    with pytest.raises(UserError, match=rf"fluorescence/f trained on 1 of them \(e.g. {fluo};"):
        submit(world, tmp_path, models_dir=models, data_dir=out, solution=out / "solution.csv",
               calibration=tmp_path / "cal.json")
    assert not list((tmp_path / "subs").glob("*.csv")) and not (tmp_path / "cal.json").exists()
    # members that held out this fold pass
    _write_oof(every, models / "standin" / "fluorescence/f", lambda i: i in fold1)
    assert submit(world, tmp_path, models_dir=models, data_dir=out, solution=out / "solution.csv",
                  crossfit=True).score is not None


def test_tuning_pools_the_out_of_fold_maps_of_the_recipe_trained_on_another_fold(world, tmp_path, capsys):
    """`make tune OTHER_FOLDS=models/fold1`: the members of fold 0 and their copies trained on
    fold 1 tune together, as if one member held out every image."""
    import shutil

    from competition.cli import main
    from competition.ensemble import load_ensemble
    from competition.ensemble_tuning import tune_ensemble
    from competition.errors import UserError
    from competition.oof import collect_oof, with_other_folds

    ids = sorted(world["drawn"]["train"])
    fold0, fold1 = set(ids[0::2]), set(ids[1::2])
    every = world["models"] / "standin"  # the stand-ins' maps hold every training image
    main_dir, other_dir = tmp_path / "models", tmp_path / "fold1"
    for root, fold, held in ((main_dir, 0, fold0), (other_dir, 1, fold1)):
        shutil.copytree(world["models"], root)
        for key in ("all/a", "fluorescence/f"):
            _write_oof(every / key, root / "standin" / key, lambda i: i in held)
            config = root / "standin" / key / "config.json"
            config.write_text(json.dumps({**json.loads(config.read_text()), "fold": fold}))
    whole = load_ensemble(world["models"], "standin")
    pooled = with_other_folds(load_ensemble(main_dir, "standin"), [other_dir])
    assert pooled.other_folds == (other_dir / "standin",)
    oof, reference = collect_oof(pooled, "all", None), collect_oof(whole, "all", None)
    assert list(oof.probs) == list(reference.probs) == ids
    assert oof.members == {"all/a": len(fold0), str(other_dir / "standin" / "all/a"): len(fold1)}
    assert all(np.array_equal(oof.probs[i], reference.probs[i]) for i in ids)
    assert set(oof.n_views.values()) == {1}, "each image from the one member that held it out"
    conditions = {i: f"c{k % 4}" for k, i in enumerate(ids)}
    tuned, outcomes = tune_ensemble(pooled, n_rounds=1, write=False, conditions=conditions, n_parts=2)
    alone, expected = tune_ensemble(whole, n_rounds=1, write=False, conditions=conditions, n_parts=2)
    for got, want in zip(outcomes, expected):
        assert (got.entry, got.params, got.result.n_images) == (want.entry, want.params, want.result.n_images)
        assert got.crossfit == want.crossfit
    assert tuned.entries["all"].tuning["other_folds"] == [str(other_dir / "standin")]
    assert "other_folds" not in alone.entries["all"].tuning
    assert main(["tune", "--recipe", "standin", "--models", str(main_dir), "--other-folds", str(other_dir),
                 "--rounds", "1", "--dry-run"]) == 0
    assert f"out-of-fold maps also from {other_dir / 'standin'}" in capsys.readouterr().out
    with pytest.raises(UserError, match="validated on fold 0, like another folder of all/a.*count twice"):
        with_other_folds(load_ensemble(main_dir, "standin"), [main_dir])
    with pytest.raises(UserError, match=r"nowhere/standin not found: train recipe standin on another fold"):
        with_other_folds(load_ensemble(main_dir, "standin"), [tmp_path / "nowhere"])


def test_a_type_seen_in_one_condition_takes_the_cross_fitted_all_type_parameters(world, tmp_path):
    """Its own parameters could only be tuned on the images a holdout then scores with them."""
    import shutil

    from competition.ensemble import load_ensemble, read_ensemble
    from competition.ensemble_tuning import tune_ensemble

    models = tmp_path / "models"
    shutil.copytree(world["models"], models)
    train = world["drawn"]["train"]
    ids = sorted(train)
    lonely = [i for i in ids if train[i][0] == "histology"]
    assert lonely, "the drawn world has stained images"
    conditions = {i: "histology-one" if i in lonely else f"c{k % 3}" for k, i in enumerate(ids)}
    tuned, outcomes = tune_ensemble(load_ensemble(models, "standin"), n_rounds=1, conditions=conditions, n_parts=2)
    histology = next(t for t in outcomes if t.entry == "histology")
    assert histology.result is None and histology.params is None
    assert "come from 1 imaging condition" in histology.note and histology.crossfit["score"] is None
    saved = read_ensemble(models / "standin" / "ensemble.json")
    assert saved.entries["histology"].postprocess is None and saved.entries["all"].postprocess is not None
    assert "no parameters of its own" in saved.entries["histology"].tuning["note"]
    for image_id in lonely:
        params, source = saved.params_for("histology", crossfit_id=image_id)
        part = saved.entries["all"].tuning["crossfit"]["parts"][image_id]
        assert source == f"cross-fitted all part {part}"
    assert saved.params_for("histology")[1] == "tuned all"
    # with two conditions the type keeps parameters of its own, cross-fitted
    conditions.update({i: f"histology-{k % 2}" for k, i in enumerate(lonely)})
    if len(lonely) > 1:
        tuned, outcomes = tune_ensemble(load_ensemble(models, "standin"), n_rounds=1, conditions=conditions, n_parts=2)
        assert tuned.entries["histology"].postprocess is not None
        assert tuned.params_for("histology", crossfit_id=lonely[0])[1].startswith("cross-fitted histology part")
    # a type whose own member is dropped for the all-type ones (its maps say nothing here), its
    # images of one condition: no parameters of its own either
    fluo = [i for i in ids if train[i][0] == "fluorescence"]
    own = models / "standin" / "fluorescence/f" / "oof.npz"
    with np.load(own) as z:
        arrays = {k: (np.zeros_like(v) if k.startswith("p_") else v) for k, v in z.items()}
    np.savez_compressed(own, **arrays)
    conditions.update({i: "fluorescence-one" for i in fluo})
    tuned, outcomes = tune_ensemble(load_ensemble(models, "standin"), n_rounds=1, conditions=conditions, n_parts=2)
    fluorescence = next(t for t in outcomes if t.entry == "fluorescence")
    assert fluorescence.choice is None and fluorescence.params is None
    assert tuned.entries["fluorescence"].members == () and tuned.entries["fluorescence"].postprocess is None
    assert tuned.entries["fluorescence"].tuning["choice"]["kept"] == "all"
    assert "come from 1 imaging condition" in fluorescence.note


def test_holdout_calibrates_the_expected_score_of_a_test_submission(world, tmp_path):
    ids, folds, out = lay_out_holdout(world, tmp_path)
    cal = tmp_path / "calibration.json"
    held = submit(world, tmp_path, data_dir=out, solution=out / "solution.csv", calibration=cal, crossfit=True)
    assert held.record["border_strips"] >= 0
    assert held.record["size_check"] is None or 0 <= held.record["size_check"]["within_25pct"] <= 1
    rows = json.loads(cal.read_text())["rows"]
    assert {r["image_id"] for r in rows} == set(ids[1::2])
    assert all(r["distance"] >= 0 for r in rows)
    test = submit(world, tmp_path, calibration=cal)
    expected = test.record["expected_score"]
    assert expected["score"] is not None and 0 <= expected["score"] <= 1
    lo, hi = expected["interval"]
    assert lo <= expected["score"] <= hi
    assert expected["n_test"] == test.record["n_images"]
    # the same rows split into two folds' files pool back into the same estimate
    from competition.errors import UserError
    from competition.expected import write_calibration

    written = json.loads(cal.read_text())
    halves = tuple(write_calibration(tmp_path / f"calibration-f{k}.json", written["rows"][k::2], key=written["key"])
                   for k in (0, 1))
    pooled = submit(world, tmp_path, calibration=halves)
    assert pooled.record["expected_score"]["score"] == expected["score"]
    assert pooled.record["expected_score"]["calibration_rows"] == {
        str(h): len(written["rows"][k::2]) for k, h in enumerate(halves)}
    with pytest.raises(UserError, match="writes one holdout calibration; got 2 files"):
        submit(world, tmp_path, data_dir=out, solution=out / "solution.csv", calibration=halves, crossfit=True)
    other = submit(world, tmp_path, calibration=cal, tta="flips")  # not the submission calibrated
    assert other.record["expected_score"]["score"] is None
    assert "other members, TTA" in other.record["expected_score"]["note"]
    assert test.record["sizing"] == {"nucleus_px": None, "max_upscale": 2.0, "size_max_pixels": 500_000,
                                     "rescale_tolerance": 0.125, "upscale_max_pixels": 2_000_000,
                                     "survey_range": 1.6, "survey_upscale": 2.0, "survey_rule": "confidence",
                                     "shrink_range": 0.0}
    resized = submit(world, tmp_path, calibration=cal, nucleus_px=20.0)
    assert resized.record["sizing"]["nucleus_px"] == 20.0
    assert resized.record["expected_score"]["score"] is None, "resized otherwise than the holdout"
    fit = submit(world, tmp_path, calibration=cal, survey_rule="fit")
    assert fit.record["sizing"]["survey_rule"] == "fit"
    assert fit.record["expected_score"]["score"] is None, "another survey rule than the holdout's"
    data = json.loads(cal.read_text())
    del data["key"]["sizing"]["survey_rule"]  # written before the rule was recorded: the fit rule
    cal.write_text(json.dumps(data))
    assert submit(world, tmp_path, calibration=cal).record["expected_score"]["score"] is None
    assert (submit(world, tmp_path, calibration=cal, survey_rule="fit").record["expected_score"]["score"]
            == pytest.approx(expected["score"]))
    del data["key"]["sizing"]  # a calibration written before the resizing was recorded:
    cal.write_text(json.dumps(data))  # it speaks for the settings of that time only
    assert submit(world, tmp_path, calibration=cal, survey_rule="fit").record["expected_score"]["score"] is None
    again = submit(world, tmp_path, calibration=cal, rescale_tolerance=0.0, max_upscale=3.0, size_max_pixels=0,
                   upscale_max_pixels=0, survey_range=1.0, survey_upscale=0, survey_rule="fit", shrink_range=1.0)
    assert again.record["expected_score"]["score"] == pytest.approx(expected["score"])


def test_an_interrupted_submit_resumes_from_its_cache_and_writes_the_same_csv(world, tmp_path, monkeypatch):
    from competition.predict import EnsemblePredictor

    plain = submit(world, tmp_path / "plain")
    cache = tmp_path / "cache"
    real = EnsemblePredictor.predict
    calls = []

    def dies_on_the_third(self, image, route=None):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(self, image, route)

    monkeypatch.setattr(EnsemblePredictor, "predict", dies_on_the_third)
    with pytest.raises(KeyboardInterrupt):
        submit(world, tmp_path / "first", cache_dir=cache)
    assert not list((tmp_path / "first").rglob("*.csv")), "no partial CSV"
    assert len(list(cache.glob("*/*.json"))) == 2
    calls.clear()
    monkeypatch.setattr(EnsemblePredictor, "predict", lambda self, image, route=None: (calls.append(1), real(self, image, route))[1])
    resumed = submit(world, tmp_path / "second", cache_dir=cache)
    assert len(calls) == plain.record["n_images"] - 2
    assert resumed.path.read_text() == plain.path.read_text()


def _fast_engine() -> str | None:
    from competition.predict import engines as E

    return next((e for e in ("openvino", "onnxruntime") if E._installed(e)), None)


@pytest.mark.parametrize("streams", [1, 2])
def test_a_submit_killed_with_sigkill_resumes_and_writes_the_csv_of_an_uninterrupted_run(world, tmp_path, streams):
    """kill -9 in the middle of the prediction loop (the moment the first image is cached),
    then the same command again: the same CSV as a run never interrupted, no partial file;
    with one stream (PyTorch) and with two (a fast engine, the CPU default)."""
    import os
    import signal
    import time

    engine = "torch" if streams == 1 else _fast_engine()
    if engine is None:
        pytest.skip("neither onnxruntime nor openvino installed")
    data = tmp_path / "data"
    make_dataset(data, n_test_per_type=4, seed=3)  # 12 test images

    def command(out: Path, cache: Path) -> list[str]:
        return [sys.executable, "-m", "competition", "submit", "--recipe", "standin", "--data", str(data),
                "--models", str(world["models"]), "--out-dir", str(out), "--cache-dir", str(cache),
                "--device", "cpu", "--threads", str(streams), "--engine", engine, "--tta", "flips",
                "--image-streams", str(streams)]

    plain = subprocess.run(command(tmp_path / "plain", tmp_path / "plain-cache"), cwd=REPO, capture_output=True,
                           text=True, timeout=600)
    assert plain.returncode == 0, plain.stderr[-2000:]
    cache = tmp_path / "cache"
    proc = subprocess.Popen(command(tmp_path / "killed", cache), cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not list(cache.glob("*/*.json")) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
    n_cached = len(list(cache.glob("*/*.json")))
    assert 1 <= n_cached < 12
    assert not list((tmp_path / "killed").rglob("*.csv")), "no CSV, partial or whole, from the killed run"
    again = subprocess.run(command(tmp_path / "killed", cache), cwd=REPO, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-2000:]
    assert f"{n_cached} image(s) taken from the cache" in again.stderr
    [first] = (tmp_path / "plain").glob("*.csv")
    [resumed] = (tmp_path / "killed").glob("*.csv")
    assert resumed.read_text() == first.read_text()


def test_peak_memory_of_a_child_does_not_count_the_parent_that_started_it():
    """``ru_maxrss`` survives exec: a child of a large parent would report the parent's size."""
    from competition.bench_inference import _peak_rss_kb

    if _peak_rss_kb() is None:
        pytest.skip("no /proc/self/status here")
    ballast = np.ones(400 * 2**20, np.uint8)  # the parent grows by 400 MB
    probe = ("import resource; from competition.bench_inference import _peak_rss_kb; "
             "print(_peak_rss_kb(), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
    out = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True)
    own_kb, rusage_kb = (int(v) for v in out.stdout.split())
    assert ballast.sum() == ballast.size
    assert 0 < own_kb < 300 * 1024, f"the child reports {own_kb} kB (getrusage says {rusage_kb} kB)"
