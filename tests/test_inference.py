"""Inference: dihedral TTA, tiling with blending, ensembles, routing and the ensemble file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from competition.errors import UserError
from competition.predict import (
    EnsemblePredictor,
    Tiling,
    blend_ramp,
    dihedral,
    inverse_dihedral,
    predict_network,
    tile_starts,
    tta_transforms,
)

# ----------------------------------------------------------------------------- stand-in networks


pytestmark = pytest.mark.usefixtures("one_torch_thread")



class SymmetricConv(nn.Module):
    """Equivariant by construction under the 8 dihedral transforms: each output channel is a
    3×3 convolution (zero padding) with a kernel invariant under rotations and flips."""

    def __init__(self, n_out: int = 3) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        a, b, c = torch.rand(3, n_out, 3, generator=g)
        kernel = torch.stack([torch.stack([a, b, a]), torch.stack([b, c, b]), torch.stack([a, b, a])])  # 3,3,out,in
        self.weight = nn.Parameter(kernel.permute(2, 3, 0, 1).contiguous() - 0.3)

    def forward(self, x):
        return nn.functional.conv2d(x, self.weight, padding=1)


class ShiftRight(nn.Module):
    """Not symmetric: logits[c, i, j] = input[0, i, j - 1] (zero at j = 0)."""

    def __init__(self, n_out: int = 2) -> None:
        super().__init__()
        self.n_out = n_out
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, x):
        shifted = torch.zeros_like(x[:, :1])
        shifted[..., 1:] = x[:, :1, :, :-1]
        return shifted.repeat(1, self.n_out, 1, 1)


class LocalConv(nn.Module):
    """Three 3×3 convolutions with tanh between: receptive field radius 3."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Tanh(), nn.Conv2d(8, 8, 3, padding=1), nn.Tanh(),
                                 nn.Conv2d(8, 3, 3, padding=1))
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return self.net(x)


class Recorder(nn.Module):
    """Cheap per-pixel network that records the input shapes it sees."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 1)
        self.shapes: list[tuple[int, ...]] = []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return self.conv(x)


def random_input(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(3, h, w)).astype(np.float32)


# ----------------------------------------------------------------------------- dihedral transforms


@pytest.mark.parametrize("k", range(8))
def test_inverse_dihedral_undoes_dihedral(k):
    x = torch.randn(2, 3, 5, 7)
    assert torch.equal(inverse_dihedral(dihedral(x, k), k), x)


def test_dihedral_matches_numpy_flips_and_rotations():
    x = torch.arange(35.0).reshape(5, 7)
    a = x.numpy()
    assert np.array_equal(dihedral(x, 4).numpy(), a[:, ::-1])  # horizontal flip
    assert np.array_equal(dihedral(x, 6).numpy(), a[::-1, :])  # vertical flip
    assert np.array_equal(dihedral(x, 2).numpy(), a[::-1, ::-1])  # half turn
    assert np.array_equal(dihedral(x, 1).numpy(), np.rot90(a))  # quarter turn swaps H, W


def test_d4_transforms_are_eight_distinct_and_flips_keep_the_shape():
    x = torch.randn(5, 7)
    views = {(tuple(dihedral(x, k).shape), tuple(dihedral(x, k).flatten().tolist())) for k in tta_transforms("d4")}
    assert len(views) == 8
    assert all(dihedral(x, k).shape == x.shape for k in tta_transforms("flips"))
    assert len(tta_transforms("flips")) == 4
    assert tta_transforms("none") == (0,)


def test_unknown_tta_mode_is_a_user_error():
    with pytest.raises(UserError, match="flips"):
        tta_transforms("rot45")


@pytest.mark.parametrize("mode", ["flips", "d4"])
def test_tta_of_an_equivariant_model_equals_its_plain_output(mode):
    net = SymmetricConv()
    x = random_input(67, 93)
    plain = predict_network(net, x, tta="none")
    augmented = predict_network(net, x, tta=mode)
    assert plain.shape == (3, 67, 93)
    np.testing.assert_allclose(augmented, plain, atol=1e-5)


def test_tta_maps_every_view_back_before_averaging():
    """A model that shifts right: mapped back, the flipped views shift left (flips), and the
    rotated ones up and down (d4). Without the inverse transforms the geometry would differ."""
    net = ShiftRight()
    x = random_input(40, 50)
    s = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    c = x[0]
    left, right = s(c[1:-1, :-2]), s(c[1:-1, 2:])  # value from j-1 and from j+1, interior pixels
    up, down = s(c[:-2, 1:-1]), s(c[2:, 1:-1])
    flips = predict_network(net, x, tta="flips")[0, 1:-1, 1:-1]
    np.testing.assert_allclose(flips, (left + right) / 2, atol=1e-6)
    d4 = predict_network(net, x, tta="d4")[0, 1:-1, 1:-1]
    np.testing.assert_allclose(d4, (left + right + up + down) / 4, atol=1e-6)
    plain = predict_network(net, x, tta="none")[0, 1:-1, 1:-1]
    np.testing.assert_allclose(plain, left, atol=1e-6)


def test_views_average_a_subset_of_the_tta_transforms():
    """The identity view plus the other three, weighed 1:3, is the flips mean (how the final
    pass reuses the last size pass); bad view lists are refused."""
    net = ShiftRight()
    x = random_input(40, 50, seed=4)
    flips = predict_network(net, x, tta="flips")
    identity = predict_network(net, x, tta="none")
    others = predict_network(net, x, tta="flips", views=(2, 4, 6))
    np.testing.assert_allclose((identity + 3 * others) / 4, flips, atol=1e-6)
    assert not np.allclose(others, identity, atol=1e-3)
    for bad in ((), (0, 0), (8,)):
        with pytest.raises(ValueError, match="views"):
            predict_network(net, x, views=bad)


# ----------------------------------------------------------------------------- tiling


@pytest.mark.parametrize("length", [96, 128, 160, 320, 544, 1504])
def test_tile_starts_cover_on_the_stride_with_enough_overlap(length):
    tile, overlap = 128, 64
    starts = tile_starts(length, min(tile, length), overlap)
    assert starts[0] == 0
    assert starts[-1] + min(tile, length) == length
    assert all(s % 32 == 0 for s in starts)
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))


def test_blend_ramp_is_zero_at_shared_edges_and_one_inside():
    w = blend_ramp(128, 64, before=True, after=True)
    assert w[:16].max() == 0.0
    assert w[-16:].max() == 0.0
    assert w[48:80].min() == 1.0
    assert blend_ramp(128, 64, before=False, after=False).min() == 1.0


def test_tiled_prediction_equals_whole_image_prediction():
    """Receptive field radius 3 < overlap / 4: the zero-weight margin hides every window edge."""
    net = LocalConv()
    x = random_input(300, 200, seed=1)
    whole = predict_network(net, x, tiling=Tiling(max_side=1024))
    assert len(net.shapes) == 1
    net.shapes.clear()
    tiled = predict_network(net, x, tiling=Tiling(tile_size=128, overlap=64, max_side=100, batch_size=3))
    assert max(s[2] for s in net.shapes) == 128
    assert sum(s[0] for s in net.shapes) > 4  # several windows
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_tiled_prediction_with_tta_equals_whole_image_with_tta():
    net = LocalConv()
    x = random_input(150, 230, seed=2)
    whole = predict_network(net, x, tta="d4", tiling=Tiling(max_side=1024))
    tiled = predict_network(net, x, tta="d4", tiling=Tiling(tile_size=96, overlap=64, max_side=64, batch_size=8))
    np.testing.assert_allclose(tiled, whole, atol=1e-5)


def test_a_1500_by_1100_image_runs_in_bounded_tiles():
    net = Recorder()
    x = random_input(1500, 1100, seed=3)
    probs = predict_network(net, x, tiling=Tiling(tile_size=512, overlap=64, max_side=512, batch_size=2))
    assert probs.shape == (3, 1500, 1100)
    assert max(max(s[2], s[3]) for s in net.shapes) <= 512
    assert max(s[0] for s in net.shapes) <= 2
    assert np.isfinite(probs).all()
    assert probs.min() >= 0.0
    assert probs.max() <= 1.0


@pytest.mark.parametrize("shape", [(1, 40), (5, 7), (33, 31)])
def test_small_and_odd_images_keep_their_shape(shape):
    probs = predict_network(SymmetricConv(), random_input(*shape), tta="d4")
    assert probs.shape == (3, *shape)
    assert np.isfinite(probs).all()


def test_tiling_rejects_sizes_off_the_stride():
    with pytest.raises(UserError, match="multiple of 32"):
        Tiling(tile_size=500)
    with pytest.raises(UserError, match="overlap"):
        Tiling(tile_size=128, overlap=128)


def test_the_submit_and_bench_command_lines_default_to_the_tiling_that_validation_uses(monkeypatch, capsys):
    # holdout and tuning predict with Tiling(); a submit default that drifted from it would
    # submit through a path the local score did not see
    from competition import bench_inference
    from competition.cli import build_parser

    expected = Tiling()
    submit = build_parser().parse_args(["submit", "--recipe", "r", "--data", "d"])
    assert (submit.tile_size, submit.tile_overlap, submit.max_side, submit.batch_size) == (
        expected.tile_size, expected.overlap, expected.max_side, expected.batch_size)
    seen = {}

    def record(*args, tiling=None, **kwargs):
        seen["tiling"] = tiling
        return []

    monkeypatch.setattr(bench_inference, "bench_inference", record)
    assert bench_inference.main(["--stage2-like", "0", "--no-peak-memory", "--no-reference", "--tta", "none"]) == 0
    assert seen["tiling"] == expected
    from competition import cpu_model

    assert f"cpu: {cpu_model()} (the figures below are this machine's)" in capsys.readouterr().out
    assert bench_inference.main(["--tile-size", "500", "--stage2-like", "0"]) == 2


# ----------------------------------------------------------------------------- ensembles and routing


class ConstantNet(nn.Module):
    """Logits equal to a constant everywhere."""

    def __init__(self, logit: float) -> None:
        super().__init__()
        self.logit = nn.Parameter(torch.tensor(float(logit)))

    def forward(self, x):
        return self.logit.expand(x.shape[0], 3, x.shape[2], x.shape[3])


def fake_member(root: Path, key: str, logit: float, *, finished: bool = True) -> None:
    folder = root / key
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"channels": ["body", "boundary", "gap"], "invert": False,
                                                    "logit": logit}))
    (folder / "best.pt").write_bytes(b"stand-in")
    if finished:
        (folder / "done").write_text("done\n")


def constant_loader(folder, device):
    config = json.loads((Path(folder) / "config.json").read_text())
    return ConstantNet(config["logit"]).to(device), config


def logit(p: float) -> float:
    return float(np.log(p / (1 - p)))


@pytest.fixture
def recipe_root(tmp_path) -> Path:
    root = tmp_path / "models" / "standin"
    fake_member(root, "all/a", logit(0.2))
    fake_member(root, "fluorescence/f1", logit(0.6))
    fake_member(root, "fluorescence/f2", logit(0.9))
    return root


def images() -> dict[str, np.ndarray]:
    fluo = np.full((40, 50, 3), 10, np.uint8)
    histo = np.zeros((40, 50, 3), np.uint8)
    histo[:] = (230, 180, 220)
    gray = np.full((40, 50, 3), 200, np.uint8)
    return {"fluorescence": fluo, "histology": histo, "brightfield": gray}


def test_built_ensemble_lists_finished_members_and_falls_back_to_all(recipe_root):
    from competition.ensemble import load_ensemble

    fake_member(recipe_root, "histology/unfinished", 0.0, finished=False)
    ensemble = load_ensemble(recipe_root.parent, "standin")
    assert (recipe_root / "ensemble.json").is_file()
    assert ensemble.member_keys() == ["all/a", "fluorescence/f1", "fluorescence/f2"]
    assert ensemble.route("fluorescence") == ("fluorescence", False)
    assert ensemble.route("histology") == ("all", True)


def test_routing_averages_members_with_their_weights(recipe_root):
    from competition.ensemble import load_ensemble, read_ensemble

    load_ensemble(recipe_root.parent, "standin")
    data = json.loads((recipe_root / "ensemble.json").read_text())
    data["types"]["fluorescence"]["members"][1]["weight"] = 3.0
    (recipe_root / "ensemble.json").write_text(json.dumps(data))
    predictor = EnsemblePredictor(read_ensemble(recipe_root / "ensemble.json"), device="cpu", loader=constant_loader)
    probs, route = predictor.predict(images()["fluorescence"])
    assert route.image_type == "fluorescence"
    assert not route.fallback
    assert route.members == (("fluorescence/f1", 1.0), ("fluorescence/f2", 3.0))
    np.testing.assert_allclose(probs, (0.6 + 3 * 0.9) / 4, atol=1e-5)
    probs, route = predictor.predict(images()["histology"])
    assert route.image_type == "histology"
    assert route.fallback
    assert route.ensemble == "all"
    np.testing.assert_allclose(probs, 0.2, atol=1e-5)
    _, route = predictor.predict(images()["brightfield"])
    assert route.image_type == "brightfield"
    assert route.to_dict()["fallback"] is True


def write_ensemble_file(root: Path, types: dict) -> Path:
    path = root / "ensemble.json"
    path.write_text(json.dumps({"recipe": "standin", "types": types}))
    return path


def test_ensemble_naming_a_missing_member_fails_before_loading(recipe_root):
    from competition.ensemble import read_ensemble

    path = write_ensemble_file(recipe_root, {"all": {"members": [{"member": "all/a"}]},
                                             "histology": {"members": [{"member": "histology/nope", "weight": 1}]}})
    with pytest.raises(UserError, match="histology/nope"):
        read_ensemble(path)


@pytest.mark.parametrize(
    ("types", "message"),
    [
        ({"all": {"members": [{"member": "all/a", "weight": 0}]}}, "must be > 0"),
        ({"all": {"members": [{"member": "all/a", "weight": "1"}]}}, "finite number"),
        ({"all": {"members": [{"member": "all/a", "wieght": 1}]}}, "unknown key"),
        ({"all": {"members": [{"member": "all/a"}, {"member": "all/a"}]}}, "twice"),
        ({"phase": {"members": []}}, "unknown key"),
        ({"all": {"members": []}, "fluorescence": {"members": [{"member": "fluorescence/f1"}]}}, "fall back"),
        ({"all": {"members": [{"member": "all/a"}], "postprocess": {"body_treshold": 0.4}}}, "body_threshold"),
    ],
)
def test_invalid_ensemble_files_are_user_errors(recipe_root, types, message):
    from competition.ensemble import read_ensemble

    with pytest.raises(UserError, match=message):
        read_ensemble(write_ensemble_file(recipe_root, types))


def test_missing_model_folder_is_a_user_error(tmp_path):
    from competition.ensemble import load_ensemble

    with pytest.raises(UserError, match="train-all"):
        load_ensemble(tmp_path / "models", "nothing")


def test_params_for_prefers_the_type_then_all_then_defaults(recipe_root):
    from competition.ensemble import read_ensemble
    from competition.postprocess import PostprocessParams

    path = write_ensemble_file(recipe_root, {
        "all": {"members": [{"member": "all/a"}], "postprocess": {"body_threshold": 0.35}},
        "fluorescence": {"members": [{"member": "fluorescence/f1"}], "postprocess": {"body_threshold": 0.45}},
    })
    ensemble = read_ensemble(path)
    assert ensemble.params_for("fluorescence") == (PostprocessParams(body_threshold=0.45), "tuned fluorescence")
    assert ensemble.params_for("histology") == (PostprocessParams(body_threshold=0.35), "tuned all")
    path = write_ensemble_file(recipe_root, {"all": {"members": [{"member": "all/a"}]}})
    assert read_ensemble(path).params_for("histology") == (PostprocessParams(), "default")


@pytest.mark.parametrize(("length", "expected"), [(512, 512), (544, 320), (704, 384), (1504, 448), (2048, 480)])
def test_window_size_covers_with_the_fewest_windows(length, expected):
    from competition.predict import window_size

    tiling = Tiling(tile_size=512, overlap=64, max_side=512)
    size = window_size(length, tiling)
    assert size == expected
    starts = tile_starts(length, size, 64)
    assert starts[-1] + size == length
    assert all(b - a <= size - 64 for a, b in zip(starts, starts[1:]))


class _EdgeNet(torch.nn.Module):
    """Body logit +10 within 16 px of its input's edges, -10 inside: a network that invents
    objects in the unsupervised margin of its training crops."""

    def forward(self, x):
        out = torch.full((x.shape[0], 3, *x.shape[2:]), -10.0)
        out[:, 0, :16], out[:, 0, -16:], out[:, 0, :, :16], out[:, 0, :, -16:] = 10.0, 10.0, 10.0, 10.0
        return out


@pytest.mark.parametrize("shape", [(64, 64), (67, 93), (700, 1100)])
def test_every_image_border_is_padded_by_the_training_margin(shape):
    """Whole images and tiles alike: no image pixel falls in the network's outer 16 px."""
    from competition.predict import Tiling, predict_network

    x = np.zeros((3, *shape), np.float32)
    probs = predict_network(_EdgeNet(), x, tiling=Tiling(tile_size=512, overlap=64, max_side=1024), device="cpu",
                            margin=16)
    assert probs.shape == (3, *shape)
    assert probs[0].max() < 0.01
