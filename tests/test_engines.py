"""Network engines: ONNX Runtime and OpenVINO against the PyTorch reference, the export file
keyed by the weights, engine choice and its errors."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from competition.errors import UserError
from competition.network import CPU_BF16_ENV, autocast_for, compute_precision, cpu_has_bf16
from competition.predict import Tiling, predict_network
from competition.predict import engines as E

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = [e for e in ("onnxruntime", "openvino") if E._installed(e)]


def tiny_unet(seed: int = 0):
    from competition.network import build_network

    torch.manual_seed(seed)
    return build_network("Unet", "mobilenet_v2", 3).eval()


def normalised(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(3, h, w)).astype(np.float32)


@pytest.fixture(scope="module")
def member(tmp_path_factory):
    folder = tmp_path_factory.mktemp("member")
    return folder, tiny_unet()


@pytest.mark.parametrize("engine", FAST)
def test_fast_engine_probabilities_equal_pytorch_within_the_stated_tolerance(engine, member):
    folder, net = member
    fast = E.make_engine(engine, net, folder=folder, arch="Unet", precision="fp32", threads=1)
    tiling = Tiling(tile_size=128, overlap=64, max_side=160, batch_size=4)  # 200×170: tiled
    for shape, tta in (((70, 90), "flips"), ((200, 170), "none")):
        x = normalised(*shape)
        ref = predict_network(net, x, tta=tta, tiling=tiling, precision="fp32")
        out = predict_network(fast, x, tta=tta, tiling=tiling)
        assert out.shape == ref.shape == (3, *shape)
        assert np.abs(out - ref).max() <= E.TOLERANCE[(engine, "fp32")]


@pytest.mark.skipif("openvino" not in FAST, reason="openvino not installed")
def test_openvino_bf16_stays_within_the_bf16_tolerance(member):
    folder, net = member
    fast = E.make_engine("openvino", net, folder=folder, arch="Unet", precision="bf16", threads=1)
    x = normalised(64, 96)
    ref = predict_network(net, x, precision="fp32")
    diff = np.abs(predict_network(fast, x) - ref)
    assert diff.max() <= E.TOLERANCE[("openvino", "bf16")]


@pytest.mark.skipif("openvino" not in FAST, reason="openvino not installed")
def test_an_openvino_engine_converts_a_numpy_array_in_the_thread_that_builds_it(tmp_path, monkeypatch):
    """Image streams build their engines in the main thread, then start their first inferences
    together. Unless the bindings' first NumPy conversion has already happened, two of those
    can deadlock: six engines' first inferences at once hung 5 of 60 fresh processes without
    it and none of 90 with it. The race is too rare to catch in a test, so this checks that the
    constructor does the conversion, in its own thread, before returning."""
    import threading

    from torch import nn

    model = E.export_onnx(nn.Sequential(nn.Conv2d(3, 3, 1)).eval(), tmp_path / "tiny.onnx")
    calls, real = [], E.initialise_numpy_bindings
    monkeypatch.setattr(E, "initialise_numpy_bindings", lambda: (calls.append(threading.get_ident()), real()))
    engine = E.OpenVinoEngine(model, threads=1, pin=False)
    assert calls == [threading.get_ident()]
    assert engine(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)


@pytest.mark.parametrize("engine", FAST)
def test_a_fast_engines_output_survives_its_next_call(engine, member):
    """predict_network weighs each output into the sum after the batch's call; an engine that
    handed back its request's own buffer would see it overwritten by the next call."""
    folder, net = member
    fast = E.make_engine(engine, net, folder=folder, arch="Unet", precision="fp32", threads=1)
    first = fast(torch.from_numpy(normalised(64, 64, seed=1)[None]))
    kept = first.clone()
    fast(torch.from_numpy(normalised(64, 64, seed=2)[None]))
    assert torch.equal(first, kept)


@pytest.mark.skipif(not FAST, reason="neither onnxruntime nor openvino installed")
def test_the_export_is_keyed_by_the_weights_reused_and_rebuilt_when_they_change(tmp_path):
    net = tiny_unet(0)
    engine = FAST[0]
    E.make_engine(engine, net, folder=tmp_path, arch="Unet")
    files = list((tmp_path / "engine").glob("*.onnx"))
    assert [f.name for f in files] == [f"Unet-{E.weights_key(net)}-v{E.EXPORT_VERSION}.onnx"]
    mtime = files[0].stat().st_mtime_ns
    E.make_engine(engine, net, folder=tmp_path, arch="Unet")
    assert files[0].stat().st_mtime_ns == mtime, "same weights: the export is reused"
    with torch.no_grad():
        next(net.parameters()).add_(0.01)
    E.make_engine(engine, net, folder=tmp_path, arch="Unet")
    after = list((tmp_path / "engine").glob("*.onnx"))
    assert len(after) == 1 and after[0] != files[0], "changed weights: a new export, the stale one removed"
    assert not list((tmp_path / "engine").glob(".*tmp")), "no temporary file left"


def test_weights_key_follows_the_values_not_the_object():
    a, b = tiny_unet(0), tiny_unet(0)
    assert E.weights_key(a) == E.weights_key(b)
    assert E.weights_key(a) != E.weights_key(tiny_unet(1))


def test_engine_choice_and_its_errors(monkeypatch):
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert E.resolve_engine("auto", cuda) == "torch"
    assert E.resolve_engine("torch", cpu) == "torch"
    with pytest.raises(UserError, match="unknown engine 'tensorrt'"):
        E.resolve_engine("tensorrt", cpu)
    with pytest.raises(UserError, match="CPU only"):
        E.resolve_engine("onnxruntime", cuda)
    monkeypatch.setattr(E, "_installed", lambda name: name in ("torch", "onnxruntime"))
    assert E.resolve_engine("auto", cpu, "fp32") == "onnxruntime"
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert E.resolve_engine("auto", cpu, "bf16") == "torch", "PyTorch's bf16 beats ONNX Runtime's float32"
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    assert E.resolve_engine("auto", cpu, "bf16") == "onnxruntime", "no bf16 hardware: bf16 members run in float32"
    monkeypatch.setattr(E, "_installed", lambda name: True)
    assert E.resolve_engine("auto", cpu, "bf16") == "openvino"
    monkeypatch.setattr(E, "_installed", lambda name: name == "torch")
    assert E.resolve_engine("auto", cpu) == "torch"
    with pytest.raises(UserError, match="needs the openvino package"):
        E.resolve_engine("openvino", cpu)


@pytest.mark.skipif(not FAST, reason="neither onnxruntime nor openvino installed")
def test_the_ensemble_predictor_runs_members_through_the_engine(tmp_path):
    from competition.ensemble import load_ensemble
    from competition.predict import EnsemblePredictor
    from competition.predict.preprocess import IMAGENET_MEAN, IMAGENET_STD
    from competition.train.members import load_member

    folder = tmp_path / "models" / "standin" / "all" / "a"
    folder.mkdir(parents=True)
    torch.save({"model": tiny_unet().state_dict(), "epoch": 1, "score": 0.5}, folder / "best.pt")
    (folder / "config.json").write_text(json.dumps({
        "arch": "Unet", "encoder": "mobilenet_v2", "channels": ["body", "boundary", "gap"],
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "invert": False}))
    (folder / "done").write_text("done\n")
    ensemble = load_ensemble(tmp_path / "models", "standin")
    image = np.random.default_rng(0).integers(0, 255, (60, 70, 3), dtype=np.uint8)
    ref, _ = EnsemblePredictor(ensemble, device="cpu", engine="torch", loader=load_member).predict(image)
    fast = EnsemblePredictor(ensemble, device="cpu", engine=FAST[0], loader=load_member)
    assert fast.engine == FAST[0]
    assert isinstance(fast.members["all/a"].engine, (E.OnnxRuntimeEngine, E.OpenVinoEngine))
    assert Path(folder / "engine").is_dir()
    out, _ = fast.predict(image)
    assert np.abs(out - ref).max() <= E.TOLERANCE[(FAST[0], "fp32")]


def test_bf16_computes_in_float32_on_a_cpu_without_bfloat16_hardware(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv(CPU_BF16_ENV, "0")
    assert not cpu_has_bf16()
    assert compute_precision(cpu, "bf16") == "fp32"
    assert compute_precision("cuda", "bf16") == "bf16", "only the CPU falls back"
    with autocast_for(cpu, "bf16"):
        assert not torch.is_autocast_enabled("cpu")
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.float32
    monkeypatch.setenv(CPU_BF16_ENV, "1")
    assert compute_precision(cpu, "bf16") == "bf16"
    with autocast_for(cpu, "bf16"):
        assert torch.ones(2, 2).matmul(torch.ones(2, 2)).dtype == torch.bfloat16
    for precision in ("auto", "fp32"):
        assert compute_precision(cpu, precision) == precision
    monkeypatch.delenv(CPU_BF16_ENV)
    probes = [getattr(torch.cpu, n, lambda: False)() for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    assert cpu_has_bf16() == any(probes), "without the override: what PyTorch reads off the CPU"

