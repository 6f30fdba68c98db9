"""Nucleus-size normalisation: diameters, factors, scaled crops, scaled validation and the
two-pass prediction."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from competition.errors import UserError
from competition.scale import (
    MAX_SCALE,
    MIN_SCALE,
    jitter_scale,
    median_diameter,
    resize_image,
    resize_probs,
    scale_factor,
    scaled_shape,
    scaled_window,
)


def disks(shape, centres, radius) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    label = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centres, 1):
        label[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius * radius] = k
    return label


def test_median_diameter_is_the_equivalent_diameter_of_the_median_area():
    label = np.zeros((50, 50), np.int32)
    label[0:10, 0:10] = 1  # 100 px
    label[20:30, 0:10] = 2  # 100 px
    label[0:20, 20:40] = 3  # 400 px
    label[45, 45] = 4  # 1 px speck
    assert median_diameter(label, min_area=2) == pytest.approx(2 * math.sqrt(100 / math.pi))
    assert median_diameter(label) == pytest.approx(2 * math.sqrt(100 / math.pi))  # median of 1,100,100,400
    assert median_diameter(np.zeros((5, 5), np.int32)) is None
    assert median_diameter(label, min_area=1000) is None


def test_scale_factor_clips_and_is_one_when_unknown():
    assert scale_factor(14.0, 28.0) == pytest.approx(2.0)
    assert scale_factor(1.0, 28.0) == MAX_SCALE
    assert scale_factor(1000.0, 28.0) == MIN_SCALE
    assert scale_factor(None, 28.0) == 1.0
    assert scale_factor(0.0, 28.0) == 1.0
    assert scale_factor(14.0, 0.0) == 1.0


def test_jitter_is_log_uniform_within_bounds():
    rng = np.random.default_rng(0)
    values = np.array([jitter_scale(rng, 1.25) for _ in range(2000)])
    assert values.min() >= 1 / 1.25 and values.max() <= 1.25
    assert abs(np.log(values).mean()) < 0.02  # symmetric in log space
    assert jitter_scale(rng, 1.0) == 1.0


def test_scaled_shape_caps_the_longest_side():
    assert scaled_shape(256, 320, 2.0) == (512, 640)
    h, w = scaled_shape(2000, 1000, 3.0)
    assert max(h, w) <= 3072 and h == 2 * w


def test_resize_round_trip_keeps_shapes():
    image = np.random.default_rng(0).integers(0, 255, (37, 53, 3), dtype=np.uint8)
    assert resize_image(image, 1.0) is image
    big = resize_image(image, 2.0)
    assert big.shape == (74, 106, 3) and big.dtype == np.uint8
    probs = np.random.default_rng(1).random((3, 74, 106)).astype(np.float32)
    back = resize_probs(probs, 37, 53)
    assert back.shape == (3, 37, 53) and back.dtype == np.float32
    assert 0 <= back.min() and back.max() <= 1


def test_scaled_window_at_scale_one_equals_the_plain_cut():
    from competition.train.dataset import cut_window

    rng = np.random.default_rng(2)
    image = rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)
    label = rng.integers(0, 5, (40, 50)).astype(np.int32)
    for top, left in ((0, 0), (-7, -9), (20, 30), (-16, 25)):
        a = cut_window(image, label, top, left, 32)
        b = scaled_window(image, label, 1.0, top, left, 32)
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)


def test_scaled_window_resizes_nuclei_and_marks_the_outside():
    label = disks((64, 64), [(20, 20), (44, 44)], 5)  # ~10 px across
    image = np.where(label[..., None] > 0, 200, 20).astype(np.uint8).repeat(3, axis=2)
    img, lab, inside = scaled_window(image, label, 2.5, -10, -10, 192)
    d = median_diameter(lab)
    assert d == pytest.approx(2.5 * median_diameter(label), rel=0.08)
    assert lab.dtype == np.int32 and set(np.unique(lab)) == {0, 1, 2}
    assert inside[:10, :].sum() == 0 and inside[:, :10].sum() == 0  # outside the image
    assert inside[10:170, 10:170].all()  # 64 px × 2.5 = 160 px of image
    assert img[lab > 0].mean() > 150 and img[(lab == 0) & (inside == 1)].mean() < 60


def test_crops_show_nuclei_at_the_member_diameter():
    from competition.train.dataset import CropDataset, TrainImage
    from competition.train.recipe import Member

    small = disks((96, 96), [(20, 20), (20, 70), (70, 20), (70, 70)], 5)  # ~11 px
    big = disks((256, 256), [(64, 64), (64, 190), (190, 64), (190, 190)], 20)  # ~41 px
    images = []
    for k, label in enumerate((small, big)):
        image = np.where(label[..., None] > 0, 200, 20).astype(np.uint8).repeat(3, axis=2)
        images.append(TrainImage(f"i{k}", image, label, "fluorescence", 1))
    m = Member(type="all", name="m", crop_size=96, pad=16, epochs=1, samples_per_epoch=40,
               augment="none", nucleus_diameter=24.0, scale_jitter=1.0)
    ds = CropDataset(images, m, ("body", "boundary", "gap"), False, 40)
    assert ds.base_scale == pytest.approx([24 / median_diameter(small), 24 / median_diameter(big)])
    for i in range(40):
        _, label, mask, _, _ = ds.crop(i)
        assert label.shape == (128, 128) and mask.shape == (128, 128)
        areas = np.bincount(label.ravel())[1:]
        biggest = areas.max()  # at least one whole nucleus at 24 px across in most crops
        assert 2 * math.sqrt(biggest / math.pi) <= 24 * 1.1
    whole = [2 * math.sqrt(np.bincount(ds.crop(i)[1].ravel())[1:].max() / math.pi) for i in range(40)]
    assert np.median(whole) == pytest.approx(24, rel=0.1)
    x, targets, mask = ds[0]
    assert x.shape == (3, 128, 128) and targets.shape == (3, 128, 128) and mask.shape == (1, 128, 128)


def test_recipe_checks_the_scale_keys_and_allows_all_from_an_earlier_all():
    from competition.train.recipe import parse_recipe

    base = {"defaults": {"encoder": "mobilenet_v2", "crop_size": 64, "pad": 16},
            "all": [{"name": "a"}, {"name": "b", "init_from": "all/a", "nucleus_diameter": 28.0,
                                    "scale_jitter": 1.2}]}
    recipe = parse_recipe(base, name="t")
    assert [m.key for m in recipe.members] == ["all/a", "all/b"]
    assert recipe.member("all/b").nucleus_diameter == 28.0
    with pytest.raises(UserError, match="listed before"):
        parse_recipe({**base, "all": [{"name": "b", "init_from": "all/a"}, {"name": "a"}]}, name="t")
    with pytest.raises(UserError, match="listed before"):
        parse_recipe({**base, "all": [{"name": "a", "init_from": "all/a"}]}, name="t")
    with pytest.raises(UserError, match="nucleus_diameter"):
        parse_recipe({**base, "all": [{"name": "a", "nucleus_diameter": 2.0}]}, name="t")
    with pytest.raises(UserError, match="scale_jitter"):
        parse_recipe({**base, "all": [{"name": "a", "scale_jitter": 0.5}]}, name="t")


class BrightNet(nn.Module):
    """Body logit high where the (normalised) input is bright; boundary and gap low.
    It records the input sizes it saw."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(8.0))
        self.seen: list[tuple[int, int]] = []

    def forward(self, x):
        self.seen.append(tuple(x.shape[2:]))
        body = self.scale * x[:, :1]
        low = torch.full_like(body, -10.0)
        return torch.cat([body, low, low], dim=1)


def test_evaluate_uses_the_true_size_and_returns_native_maps():
    from competition.train.dataset import TrainImage
    from competition.train.loop import evaluate

    label = disks((64, 80), [(20, 20), (40, 60)], 5)
    image = np.where(label[..., None] > 0, 220, 10).astype(np.uint8).repeat(3, axis=2)
    net = BrightNet()
    config = {"channels": ["body", "boundary", "gap"], "invert": False,
              "member": {"nucleus_diameter": 2 * median_diameter(label)}}
    result = evaluate(net, [TrainImage("x", image, label, "fluorescence", 0)], config, torch.device("cpu"),
                      keep_probs=True)
    assert net.seen == [(160, 192)]  # 2× (64, 80) plus the 16 px training margin on each side
    assert result.probs["x"].shape == (3, 64, 80)
    assert result.score > 0.9


def scaled_member(tmp_path, diameter: float = 24.0) -> Path:
    """A finished stand-in member ``all/a`` trained at ``diameter``; returns the models folder."""
    folder = tmp_path / "models" / "s" / "all" / "a"
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"channels": ["body", "boundary", "gap"], "invert": False,
                                                    "member": {"nucleus_diameter": diameter}}))
    (folder / "best.pt").write_bytes(b"stand-in")
    (folder / "done").write_text("done\n")
    return tmp_path / "models"


#: The survey rule that was the default until 2026-12-06, whose passes the tests below follow.
FIT = {"survey_rule": "fit"}

#: The survey rule before 2026-12-04 (the view that measured closest to the member's diameter
#: wins, no enlarged view): the refinement tests below keep it, so their pass counts stay.
CLOSEST_VIEW = {"survey_range": 1.0, "survey_upscale": 0, **FIT}


def recording_loader(nets: list):
    """A loader building a fresh :class:`BrightNet` per member, appended to ``nets``."""

    def loader(f, device):
        nets.append(BrightNet())
        return nets[-1], json.loads((Path(f) / "config.json").read_text())

    return loader


def test_predictor_estimates_the_size_then_predicts_at_the_member_diameter(tmp_path):
    from competition.ensemble import load_ensemble
    from competition.predict import EnsemblePredictor
    from competition.predict.ensemble import snap_scale

    models = scaled_member(tmp_path)
    nets: list[BrightNet] = []
    label = disks((96, 96), [(24, 24), (24, 70), (70, 24), (70, 70)], 6)  # ~12 px across
    image = np.where(label[..., None] > 0, 220, 10).astype(np.uint8).repeat(3, axis=2)
    predictor = EnsemblePredictor(load_ensemble(models, "s"), device="cpu", loader=recording_loader(nets), engine="torch",
                                  **FIT)
    probs, route = predictor.predict(image)
    assert probs.shape == (3, 96, 96)
    assert route.diameter == pytest.approx(median_diameter(label), rel=0.15)
    (key, s), = route.scales
    assert key == "all/a" and s == snap_scale(24 / route.diameter)  # rounded to 16 steps per octave
    assert s == pytest.approx(24 / route.diameter, rel=0.022)
    assert nets[0].seen[0] == (128, 128)  # first pass at the native size, plus the 16 px margins
    # ~12 px nuclei natively, under 24 / SURVEY_RANGE: the survey looks at the image enlarged
    # 2x (192 + margins), where they fit; the smaller views are not run, and the refinement
    # would run at the same factor, so the final pass (no TTA) reuses that view whole
    assert nets[0].seen[1:] == [(224, 224)]
    record = route.to_dict()
    assert record["scales"] == {"all/a": round(s, 4)}
    assert predictor.timings.size_estimate > 0
    assert ((probs[0] > 0.5) == (label > 0)).mean() > 0.97


def test_the_network_work_is_counted_by_pass(tmp_path):
    from competition.bench_inference import network_passes, passes_text
    from competition.ensemble import load_ensemble
    from competition.predict import EnsemblePredictor

    models = scaled_member(tmp_path)
    nets: list[BrightNet] = []
    label = disks((96, 96), [(24, 24), (24, 70), (70, 24), (70, 70)], 6)  # ~12 px: the enlarged view fits
    image = np.where(label[..., None] > 0, 220, 10).astype(np.uint8).repeat(3, axis=2)
    predictor = EnsemblePredictor(load_ensemble(models, "s"), device="cpu", loader=recording_loader(nets),
                                  engine="torch", tta="flips", **FIT)
    predictor.predict(image)
    # the native survey (96 + margins), the enlarged one (2x), then the final pass's three
    # other flips of the enlarged image in one batch (its identity view is the survey's)
    assert nets[0].seen == [(128, 128), (224, 224), (224, 224)]
    network = predictor.timings.network
    assert network.stage == "", "no pass is running between images"
    assert network.by_stage().keys() == {"survey", "enlarged survey", "final"}
    assert list(network.by_stage(["final", "survey"])) == ["final", "survey", "enlarged survey"], "order first"
    counts = {name: (t.n_forward, t.pixels) for name, t in network.stages.items()}
    assert counts == {"survey": (1, 128 * 128), "enlarged survey": (1, 224 * 224), "final": (1, 3 * 224 * 224)}
    assert network.n_forward == 3 and network.pixels == sum(p for _, p in counts.values())
    assert network.seconds == pytest.approx(sum(t.seconds for t in network.stages.values()))
    passes = network_passes(predictor)
    assert [name for name, *_ in passes] == ["survey", "enlarged survey", "final"], "in the order they run"
    assert passes[2][2] == pytest.approx(3 * 224 * 224 / 1e6)
    assert passes_text(passes).startswith("survey ") and "final" in passes_text(passes)
    predictor.predict(image)  # a second image adds to the same passes
    assert network.stages["final"].n_forward == 2 and network.n_forward == 6


def test_size_passes_count_the_passes_before_the_final_one(tmp_path):
    from competition.ensemble import load_ensemble
    from competition.errors import UserError
    from competition.predict import EnsemblePredictor

    models = scaled_member(tmp_path)
    label = disks((96, 96), [(24, 24), (70, 70)], 6)
    image = np.where(label[..., None] > 0, 220, 10).astype(np.uint8).repeat(3, axis=2)
    # survey (native + half size), then: 1 pass -> the final pass at the estimate; 2 -> a
    # pass at the estimate, which the final pass (no TTA) takes whole; 3 -> the same: the
    # re-measured estimate keeps the factors, and a pass is never repeated at them
    for passes, forwards, reused in ((1, 3, 0), (2, 3, 1), (3, 3, 1)):
        nets: list[BrightNet] = []
        predictor = EnsemblePredictor(load_ensemble(models, "s"), device="cpu", loader=recording_loader(nets), engine="torch",
                                      size_passes=passes, **CLOSEST_VIEW)
        _, route = predictor.predict(image)
        assert len(nets[0].seen) == forwards, passes
        assert predictor.timings.reused_views == reused
        assert route.diameter == pytest.approx(median_diameter(label), rel=0.15)
    with pytest.raises(UserError, match="size_passes"):
        EnsemblePredictor(load_ensemble(models, "s"), device="cpu", loader=recording_loader([]), size_passes=0)


def test_the_final_pass_takes_its_identity_view_from_the_last_size_pass(tmp_path):
    from competition.ensemble import load_ensemble
    from competition.predict import EnsemblePredictor, predict_scaled

    models = scaled_member(tmp_path)
    label = disks((96, 96), [(24, 24), (24, 70), (70, 24), (70, 70)], 6)
    rng = np.random.default_rng(0)
    image = np.clip(np.where(label[..., None] > 0, 200, 20) + rng.normal(0, 25, (96, 96, 1)), 0, 255)
    image = image.astype(np.uint8).repeat(3, axis=2)
    image[:, :48, 1] //= 2  # not symmetric under the flips
    runs = {}
    for tolerance in (0.0, 0.125):
        nets: list[BrightNet] = []
        predictor = EnsemblePredictor(load_ensemble(models, "s"), device="cpu", loader=recording_loader(nets),
                                      engine="torch", tta="flips", rescale_tolerance=tolerance, **CLOSEST_VIEW)
        probs, route = predictor.predict(image)
        runs[tolerance] = (probs, route, predictor.timings.reused_views, len(nets[0].seen))
        member = predictor.members["all/a"]
        whole = predict_scaled(member, image, dict(route.scales)["all/a"], tta="flips", tiling=predictor.tiling,
                               device=predictor.device)
        if runs[tolerance][2]:
            np.testing.assert_allclose(probs, whole, atol=1e-5)  # the same mean of the four views
    assert runs[0.125][2] == 1, "the re-measured estimate stayed within 9%: the final pass ran 3 views"
    assert runs[0.125][3] == 4  # native and half-size survey, the pass at the estimate, 3 views in one batch


def test_a_rescale_tolerance_keeps_the_factors_a_pass_ran_at(tmp_path):
    from competition.ensemble import load_ensemble
    from competition.errors import UserError
    from competition.predict import EnsemblePredictor

    models = scaled_member(tmp_path)
    label = disks((96, 96), [(24, 24), (24, 70), (70, 24), (70, 70)], 6)  # ~12 px: the estimate asks for 2x
    image = np.where(label[..., None] > 0, 220, 10).astype(np.uint8).repeat(3, axis=2)
    nets: list[BrightNet] = []
    predictor = EnsemblePredictor(load_ensemble(models, "s"), device="cpu", loader=recording_loader(nets),
                                  engine="torch", rescale_tolerance=1.0, **CLOSEST_VIEW)
    probs, route = predictor.predict(image)
    assert dict(route.scales)["all/a"] == 1.0, "2x lies within an octave of the native survey"
    assert len(nets[0].seen) == 2 and predictor.timings.reused_views == 1  # the survey only
    assert ((probs[0] > 0.5) == (label > 0)).mean() > 0.97
    assert predictor.sizing()["rescale_tolerance"] == 1.0
    with pytest.raises(UserError, match="rescale_tolerance"):
        EnsemblePredictor(load_ensemble(models, "s"), device="cpu", loader=recording_loader([]), rescale_tolerance=-0.1)


def cluster_image(shape=(96, 96), cell=12, n=3):
    """An ``n`` x ``n`` cluster of small bright squares (``cell - 1`` px) parted by 1 px grey
    lines in the middle of a dark image: shrunk to half size, the lines blur into the squares
    and the cluster becomes one blob; enlarged, they part the squares more clearly."""
    top = (shape[0] - cell * n) // 4 * 2  # even: each line shares a half-size pixel with a square
    label = np.zeros(shape, np.int32)
    for k in range(n * n):
        i, j = divmod(k, n)
        label[top + i * cell:top + (i + 1) * cell - 1, top + j * cell:top + (j + 1) * cell - 1] = k + 1
    image = np.full(shape, 10, np.uint8)
    image[top:top + cell * n - 1, top:top + cell * n - 1] = 90
    image[label > 0] = 220
    return image[..., None].repeat(3, axis=2), label


def test_the_survey_trusts_the_sharpest_view_that_fits_not_a_merged_blob(tmp_path):
    from competition.ensemble import load_ensemble
    from competition.predict import EnsemblePredictor
    from competition.postprocess import watershed_instances
    from competition.predict import predict_scaled

    models = scaled_member(tmp_path)
    image, label = cluster_image()
    true = median_diameter(label)  # ~11 px: natively under 24 / 1.6, enlarged 2x within the range
    # the failure: at half size the cluster is one blob of about the member's size
    predictor = EnsemblePredictor(load_ensemble(models, "s"), device="cpu", loader=recording_loader([]), engine="torch")
    half = predict_scaled(predictor.members["all/a"], image, 0.5, tta="none", tiling=predictor.tiling, device=predictor.device)
    assert watershed_instances(half).max() == 1 and label.max() == 9
    estimates = {}
    for name, kw in (("closest", CLOSEST_VIEW), ("sharpest fitting", FIT)):
        nets: list[BrightNet] = []
        predictor = EnsemblePredictor(load_ensemble(models, "s"), device="cpu", loader=recording_loader(nets),
                                      engine="torch", size_passes=1, **kw)
        estimates[name] = predictor.predict(image)[1].diameter
    assert estimates["closest"] > 2.5 * true, "the closest-view rule trusts the merged blob"
    assert estimates["sharpest fitting"] == pytest.approx(true, rel=0.15)


def test_the_survey_stops_at_the_native_view_when_it_fits_and_enlarges_only_within_the_limit(tmp_path):
    from competition.ensemble import load_ensemble
    from competition.errors import UserError
    from competition.predict import EnsemblePredictor

    models = scaled_member(tmp_path)
    label = disks((96, 96), [(24, 24), (24, 70), (70, 24), (70, 70)], 11)  # ~22 px: fits 24 natively
    image = np.where(label[..., None] > 0, 220, 10).astype(np.uint8).repeat(3, axis=2)
    nets: list[BrightNet] = []
    predictor = EnsemblePredictor(load_ensemble(models, "s"), device="cpu", loader=recording_loader(nets), engine="torch",
                                  **FIT)
    _, route = predictor.predict(image)
    assert route.diameter == pytest.approx(median_diameter(label), rel=0.1)
    assert nets[0].seen[0] == (128, 128) and (96, 96) not in nets[0].seen, "no half-size view once the native one fits"

    small, _ = cluster_image()
    for limit, second in ((0, (224, 224)), (96 * 96 * 3, (96, 96))):  # 3x the pixels: 2x would need 4x
        nets = []
        predictor = EnsemblePredictor(load_ensemble(models, "s"), device="cpu", loader=recording_loader(nets),
                                      engine="torch", upscale_max_pixels=limit, **FIT)
        predictor.predict(small)
        assert nets[0].seen[1] == second, "the survey's second view: enlarged 2x, or else the half size"
    for bad in ({"survey_range": 0.9}, {"survey_upscale": 1.0}, {"survey_upscale": -2}):
        with pytest.raises(UserError, match="survey_"):
            EnsemblePredictor(load_ensemble(models, "s"), device="cpu", loader=recording_loader([]), **bad)


class SureAtNet(nn.Module):
    """Sure of whole nuclei only at one input side (``sure_side``, margins included): there
    its body logit is ``20 x``; at every other size it is ``x - 1.5``, so only the bright
    centres of the nuclei pass 0.5, and barely: the fragments of a network that sees nuclei
    far from its trained size."""

    def __init__(self, sure_side: int) -> None:
        super().__init__()
        self.sure_side = sure_side
        self.w = nn.Parameter(torch.tensor(1.0))
        self.seen: list[tuple[int, int]] = []

    def forward(self, x):
        self.seen.append(tuple(x.shape[2:]))
        body = 20 * x[:, :1] if x.shape[2] == self.sure_side else x[:, :1] - 1.5
        low = torch.full_like(body, -10.0)
        return torch.cat([self.w * body, low, low], dim=1)


def test_the_confidence_rule_trusts_the_view_the_members_are_surest_of(tmp_path):
    from competition.ensemble import load_ensemble
    from competition.errors import UserError
    from competition.predict import EnsemblePredictor

    models = scaled_member(tmp_path)  # trained at 24 px
    label = disks((256, 256), [(64, 64), (64, 190), (190, 64), (190, 190)], 24)  # 48 px across
    yy, xx = np.mgrid[:256, :256]
    r2 = np.min([((yy - cy) ** 2 + (xx - cx) ** 2) / 24**2 for cy, cx in ((64, 64), (64, 190), (190, 64), (190, 190))], axis=0)
    image = np.where(label > 0, 240 - 90 * r2, 10).astype(np.uint8)[..., None].repeat(3, axis=2)
    true = median_diameter(label)
    found = {}
    for rule in ("fit", "confidence"):
        nets: list[nn.Module] = []

        def loader(f, device):
            nets.append(SureAtNet(sure_side=128 + 32))  # the half-size view, plus its margins
            return nets[-1], json.loads((Path(f) / "config.json").read_text())

        predictor = EnsemblePredictor(load_ensemble(models, "s"), device="cpu", loader=loader, engine="torch",
                                      size_passes=1, survey_rule=rule)
        found[rule] = (predictor.predict(image)[1].diameter, nets[0].seen)
        assert predictor.sizing()["survey_rule"] == rule
    # fit: the native view's fragments (the bright centres, about 27 px) fit 24 px: trusted
    assert found["fit"][0] < 0.65 * true and (160, 160) not in found["fit"][1]
    # confidence: every survey view runs; the half-size one is surest, and sees whole nuclei
    assert found["confidence"][0] == pytest.approx(true, rel=0.15)
    assert found["confidence"][1][:3] == [(288, 288), (160, 160), (96, 96)]
    with pytest.raises(UserError, match="survey_rule"):
        EnsemblePredictor(load_ensemble(models, "s"), device="cpu", loader=recording_loader([]), survey_rule="best")


def test_snapped_scales_are_on_the_octave_grid_and_close():
    from competition.predict.ensemble import snap_scale

    for s in (0.26, 0.5, 0.77, 1.0, 1.31, 2.9):
        snapped = snap_scale(s, 16)
        assert abs(math.log2(snapped) * 16 - round(math.log2(snapped) * 16)) < 1e-9
        assert abs(math.log2(snapped / s)) <= 1 / 32 + 1e-12
    assert snap_scale(1.0) == 1.0 and snap_scale(0.77, 0) == 0.77
    assert snap_scale(0.771) == snap_scale(0.772), "nearby estimates share one input shape"


def test_nucleus_px_and_max_upscale_set_the_final_resize(tmp_path):
    from competition.ensemble import load_ensemble
    from competition.errors import UserError
    from competition.predict import EnsemblePredictor
    from competition.predict.ensemble import MAX_UPSCALE, snap_scale

    models = scaled_member(tmp_path)
    label = disks((96, 96), [(24, 24), (24, 70), (70, 24), (70, 70)], 6)  # ~12 px across
    image = np.where(label[..., None] > 0, 220, 10).astype(np.uint8).repeat(3, axis=2)

    def scale(**kw):
        predictor = EnsemblePredictor(load_ensemble(models, "s"), device="cpu", loader=recording_loader([]),
                                      engine="torch", **kw)
        _, route = predictor.predict(image)
        return dict(route.scales)["all/a"], route.diameter

    own, d = scale(max_upscale=3.0)
    smaller, d2 = scale(nucleus_px=18.0, max_upscale=3.0)
    assert own == snap_scale(24 / d)
    assert smaller == snap_scale(18 / d2) and smaller < own, "a smaller target diameter resizes less"
    capped, _ = scale(max_upscale=1.5)
    assert own > 1.5 and capped == snap_scale(1.5)
    default, _ = scale()
    assert default == snap_scale(min(24 / d, MAX_UPSCALE)), "up-scaling stops at MAX_UPSCALE by default"
    for bad in ({"nucleus_px": 2.0}, {"max_upscale": 0.5}, {"size_max_pixels": 100}, {"upscale_max_pixels": -1}):
        with pytest.raises(UserError):
            EnsemblePredictor(load_ensemble(models, "s"), device="cpu", loader=recording_loader([]), **bad)


def test_upscale_max_pixels_limits_the_upscaling_of_large_images_only(tmp_path):
    from competition.ensemble import load_ensemble
    from competition.predict import EnsemblePredictor
    from competition.predict.ensemble import UPSCALE_MAX_PIXELS, snap_scale

    models = scaled_member(tmp_path)
    label = disks((96, 96), [(24, 24), (24, 70), (70, 24), (70, 70)], 6)  # ~12 px across: 2x wanted
    image = np.where(label[..., None] > 0, 220, 10).astype(np.uint8).repeat(3, axis=2)

    def predictor(**kw):
        return EnsemblePredictor(load_ensemble(models, "s"), device="cpu", loader=recording_loader([]),
                                 engine="torch", max_upscale=3.0, **kw)

    def scale(**kw):
        _, route = predictor(**kw).predict(image)
        return dict(route.scales)["all/a"], route.diameter

    free, d = scale(upscale_max_pixels=0)
    assert free == snap_scale(24 / d) and free > 1.5
    assert scale(upscale_max_pixels=96 * 96 * 100)[0] == free, "a budget the image stays under changes nothing"
    limited, _ = scale(upscale_max_pixels=int(96 * 96 * 1.5 ** 2))
    assert limited == snap_scale(1.5), "up-scaled to the budget's pixels, no further"
    assert scale(upscale_max_pixels=96 * 96 // 4)[0] == 1.0, "a budget below the image's size never shrinks it"
    p = predictor()
    assert p.upscale_max_pixels == UPSCALE_MAX_PIXELS and p.sizing()["upscale_max_pixels"] == UPSCALE_MAX_PIXELS
    assert p.upscale_limit((96, 96)) == 3.0
    assert p.upscale_limit((1000, 1000)) == pytest.approx(2 ** 0.5)
    assert p.upscale_limit((4000, 4000)) == 1.0
    assert predictor(upscale_max_pixels=0).upscale_limit((4000, 4000)) == 3.0


def test_size_windows_cover_a_large_image_in_four_bounded_windows():
    from competition.predict.ensemble import size_windows

    assert size_windows((300, 400), None) == [((slice(0, 300), slice(0, 400)), (False,) * 4)]
    assert size_windows((300, 400), 300 * 400) == [((slice(0, 300), slice(0, 400)), (False,) * 4)]
    for shape in ((2560, 2560), (1040, 1388), (256, 5000)):
        windows = size_windows(shape, 250_000)
        assert len(windows) == 4
        for (rows, cols), inner in windows:
            assert 0 <= rows.start < rows.stop <= shape[0] and 0 <= cols.start < cols.stop <= shape[1]
            assert (rows.stop - rows.start) * (cols.stop - cols.start) <= 250_000 / 4 + 1
            assert inner == (rows.start > 0, rows.stop < shape[0], cols.start > 0, cols.stop < shape[1])
    (r0, c0), _ = size_windows((2560, 2560), 250_000)[0]
    (r3, c3), _ = size_windows((2560, 2560), 250_000)[3]
    assert r0.stop <= r3.start and c0.stop <= c3.start, "the windows are spread over the image"


def test_object_areas_leave_out_objects_cut_by_an_inner_edge():
    from competition.scale import diameter_of_areas, object_areas

    label = np.zeros((20, 20), np.int32)
    label[0:4, 5:9] = 1  # touches the top edge
    label[8:12, 8:12] = 2  # inside
    label[10:20, 16:20] = 3  # touches the bottom and right edges
    assert sorted(object_areas(label)) == [16, 16, 40]
    assert sorted(object_areas(label, cut_edges=(True, False, False, False))) == [16, 40]
    assert sorted(object_areas(label, cut_edges=(True, True, True, True))) == [16]
    only_cut = np.zeros((10, 10), np.int32)
    only_cut[0:3, 0:3] = 1
    assert list(object_areas(only_cut, cut_edges=(True,) * 4)) == [9], "nothing whole: keep what there is"
    assert diameter_of_areas(np.array([], np.int64)) is None
    assert diameter_of_areas(np.array([3, 100]), min_area=10) == pytest.approx(2 * math.sqrt(100 / math.pi))


def test_the_size_passes_of_a_large_image_see_only_its_windows(tmp_path):
    from competition.ensemble import load_ensemble
    from competition.predict import EnsemblePredictor

    models = scaled_member(tmp_path)
    centres = [(y, x) for y in range(16, 192, 32) for x in range(16, 256, 32)]
    label = disks((192, 256), centres, 6)
    image = np.where(label[..., None] > 0, 220, 10).astype(np.uint8).repeat(3, axis=2)
    routes, seen = {}, {}
    for limit in (0, 4 * 64 * 64):  # 0: the whole image
        nets: list[BrightNet] = []
        predictor = EnsemblePredictor(load_ensemble(models, "s"), device="cpu", loader=recording_loader(nets),
                                      engine="torch", survey_factors=(1.0,), size_max_pixels=limit)
        _, routes[limit] = predictor.predict(image)
        seen[limit] = nets[0].seen
    assert routes[4 * 64 * 64].diameter == pytest.approx(routes[0].diameter, rel=0.1)
    # whole: survey, refinement (which the final pass without TTA reuses)
    assert seen[0][0] == (224, 288) and len(seen[0]) == 2
    assert seen[4 * 64 * 64][:4] == [(96, 96)] * 4, "the survey: four 64 px windows plus margins"
    assert len(seen[4 * 64 * 64]) == 4 + 4 + 1, "survey and refinement on windows: nothing to reuse"
    assert seen[4 * 64 * 64][-1] == seen[0][-1], "the final pass still predicts the whole image"


def test_the_final_pass_shrinks_large_nuclei_only_to_the_top_of_the_trained_sizes(tmp_path):
    from competition.ensemble import load_ensemble
    from competition.errors import UserError
    from competition.predict import EnsemblePredictor
    from competition.predict.ensemble import snap_scale

    models = scaled_member(tmp_path)
    config = tmp_path / "models" / "s" / "all" / "a" / "config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()),
                                  "member": {"nucleus_diameter": 24.0, "scale_jitter": 1.5}}))
    label = disks((224, 224), [(56, 56), (56, 168), (168, 56), (168, 168)], 24)  # ~48 px across

    def final(**kw):
        nets: list[BrightNet] = []
        image = np.where(label[..., None] > 0, 220, 10).astype(np.uint8).repeat(3, axis=2)
        predictor = EnsemblePredictor(load_ensemble(models, "s"), device="cpu", loader=recording_loader(nets),
                                      engine="torch", **FIT, **kw)
        probs, route = predictor.predict(image)
        assert ((probs[0] > 0.5) == (label > 0)).mean() > 0.97
        return dict(route.scales)["all/a"], route.diameter, predictor.sizing()["shrink_range"]

    limited, diameter, recorded = final()
    assert recorded == 0.0 and diameter == pytest.approx(median_diameter(label), rel=0.15)
    # to 1.5 x 24 = 36 px (the member's jitter), not to its 24 px diameter
    assert limited == snap_scale(36 / diameter) and limited > 0.7
    full, _, recorded = final(shrink_range=1.0)
    assert recorded == 1.0 and full == snap_scale(24 / diameter) and full < 0.55
    assert final(shrink_range=2.5)[0] == 1.0  # 60 px lies above these nuclei: not shrunk at all
    with pytest.raises(UserError, match="shrink_range"):
        EnsemblePredictor(load_ensemble(models, "s"), device="cpu", loader=recording_loader([]), shrink_range=0.5)
