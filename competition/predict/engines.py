"""Network engines: what runs a member's forward pass (PyTorch, ONNX Runtime, OpenVINO).

Every engine maps a CPU batch N×3×H×W float32 (H, W multiples of 32) to N×C×H×W float32
probabilities (the sigmoid of the logits); :func:`competition.predict.forward.predict_network`
does the padding, tiling, TTA and blending around it, the same for every engine.

- ``torch``: the reference. The member's ``precision`` (bf16 autocast with channels_last on
  the CPU, float16 on CUDA); the only engine on CUDA.
- ``onnxruntime``: the member exported to ONNX (float32, sigmoid included) and run by one
  ONNX Runtime session per member.
- ``openvino``: the same ONNX file compiled by OpenVINO for the CPU, in bfloat16 for
  ``bf16`` members (its CPU plugin uses AVX-512 BF16/AMX where the CPU has them), float32
  otherwise.

On a CPU without bfloat16 hardware every engine computes ``bf16`` members in float32
(:func:`competition.network.compute_precision`): emulated bf16 is several times slower.

The exported file lives in the member's folder, ``<member>/engine/<arch>-<weights key>-v<N>.onnx``,
keyed by a hash of the weights (:func:`weights_key`): changed weights get a new file and the
stale ones are removed; it is written to a temporary file and renamed, and is never
committed (``models/`` is ignored). A folder that cannot be written falls back to a cache
folder under the system's temporary directory.

``auto`` picks by measurement (``make bench``, README "Inference"): ``torch`` on CUDA; on
the CPU the first installed of :data:`CPU_PREFERENCE` for the member's precision. Measured
here (2 cores, 1 thread, a lite0 UNet, 4 views of 544×672): PyTorch float32 4.38 s, PyTorch
bf16 1.19 s, ONNX Runtime float32 1.77 s, OpenVINO float32 1.84 s, OpenVINO bf16 0.86 s. So
OpenVINO first; without it, a bf16 member is faster in PyTorch than in ONNX Runtime (which
has no fast bf16 convolutions on the CPU), a float32 member faster in ONNX Runtime. On an
AVX2-only AMD EPYC (no bfloat16 hardware; same batch, 1 thread): PyTorch float32 6.21 s,
PyTorch bf16 (emulated) 43.1 s, ONNX Runtime and OpenVINO float32 2.26 s each (2.7×).
(OpenVINO INT8 by NNCF post-training quantization ran in 1.30 s but its probabilities agreed
with float32 on about half the pixels; it is not offered.)
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from competition.errors import UserError
from competition.network import compute_precision

log = logging.getLogger(__name__)

__all__ = [
    "ENGINES", "CPU_PREFERENCE", "EXPORT_VERSION", "TOLERANCE", "TorchEngine", "OnnxRuntimeEngine",
    "OpenVinoEngine", "resolve_engine", "weights_key", "export_onnx", "exported_file", "make_engine",
]

#: Engine names accepted by ``--engine``.
ENGINES = ("auto", "torch", "onnxruntime", "openvino")

#: ``auto`` on the CPU, by the member's precision: the first of these whose package is installed.
CPU_PREFERENCE = {"bf16": ("openvino", "torch"), "fp32": ("openvino", "onnxruntime", "torch")}

#: Bumped when the export changes (opset, graph), so older files are rebuilt.
EXPORT_VERSION = 1

#: Largest absolute difference of a probability from the float32 PyTorch reference that the
#: tests accept, per engine and member precision. Measured on the trained ``cpu`` member
#: (13 stage-1 test images, flips, at their estimated scale): ONNX Runtime float32 below
#: 1e-4; OpenVINO bf16 at most 0.143 on a pixel, 0.049 at the 99.9th percentile, 0.0005 on
#: average; PyTorch's own bf16 path 0.098, 0.046 and 0.0005.
TOLERANCE = {("onnxruntime", "fp32"): 1e-3, ("openvino", "fp32"): 1e-3, ("openvino", "bf16"): 0.15,
             ("torch", "bf16"): 0.15}

_PACKAGE = {"onnxruntime": "onnxruntime", "openvino": "openvino"}


def _installed(engine: str) -> bool:
    if engine == "torch":
        return True
    import importlib.util

    return importlib.util.find_spec(_PACKAGE[engine]) is not None


def resolve_engine(engine: str, device: torch.device, precision: str = "auto") -> str:
    """``auto`` -> ``torch`` on CUDA, else the first installed of :data:`CPU_PREFERENCE` for
    ``precision`` (a member's: ``bf16``, or ``auto``/``fp32``, float32 on the CPU).

    Raises:
        UserError: an unknown engine, a non-torch engine on CUDA, or an engine whose package
            is not installed (the message says which to install).
    """
    if engine not in ENGINES:
        raise UserError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
    if engine == "auto":
        if device.type != "cpu":
            return "torch"
        order = CPU_PREFERENCE["bf16" if compute_precision(device, precision) == "bf16" else "fp32"]
        return next(e for e in order if _installed(e))
    if engine != "torch" and device.type != "cpu":
        raise UserError(f"engine {engine} runs on the CPU only; use --engine torch with --device {device.type}")
    if not _installed(engine):
        raise UserError(f"engine {engine} needs the {_PACKAGE[engine]} package: `make setup` installs it "
                        f"(requirements.lock), or pip install {_PACKAGE[engine]}")
    return engine


# ----------------------------------------------------------------------------- engines


class TorchEngine:
    """The PyTorch forward: the member's precision on its device, under inference mode."""

    name = "torch"

    def __init__(self, net: nn.Module, device: torch.device | str | None = None, precision: str = "auto") -> None:
        self.net = net.eval()
        self.device = torch.device(device) if device is not None else next(net.parameters()).device
        self.precision = precision

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        from competition.network import autocast_for, uses_channels_last

        xb = batch.to(self.device, non_blocking=True)
        if uses_channels_last(self.device, self.precision):
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            with autocast_for(self.device, self.precision):
                logits = self.net(xb)
            return torch.sigmoid(logits.float()).cpu()  # .cpu() synchronises on CUDA


class OnnxRuntimeEngine:
    """One ONNX Runtime CPU session over an exported member (float32)."""

    name = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(threads or torch.get_num_threads())
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(batch.numpy(), dtype=np.float32)
        return torch.from_numpy(self.session.run(None, {self.input: x})[0])


def initialise_numpy_bindings() -> None:
    """Make OpenVINO's bindings convert a NumPy array once, in the calling thread.

    The first conversion in a process initialises pybind11's NumPy API inside a one-time
    static. The initialiser releases the GIL while another thread waits for the same static
    with the GIL held, so two image streams whose first inferences coincide deadlock (seen
    once in `make holdout`, and in 5 of 60 fresh processes that ran six engines' first
    inferences at once; none of 90 once this runs first). Engines are built in the main
    thread before any stream starts, so calling this there settles it. Cheap, and idempotent.
    """
    import openvino as ov

    _ = ov.Tensor(np.zeros((1,), dtype=np.float32)).data


class OpenVinoEngine:
    """An exported member compiled by OpenVINO for the CPU (bf16 for ``bf16`` members)."""

    name = "openvino"

    def __init__(self, path: str | Path, threads: int | None = None, precision: str = "auto", *,
                 pin: bool = True) -> None:
        import openvino as ov

        config = {
            "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
            "INFERENCE_PRECISION_HINT": "bf16" if compute_precision("cpu", precision) == "bf16" else "f32",
            "PERFORMANCE_HINT": "LATENCY",
        }
        if not pin:
            # Several engines in one process (image streams, competition.predict.streams): pinned,
            # each puts its threads on the same first cores (measured: 2 streams of 1 thread on 2
            # cores took 69.2 s pinned, 38.4 s unpinned, for what one 2-thread stream did in 53.7 s).
            config["ENABLE_CPU_PINNING"] = False
        self.compiled = ov.Core().compile_model(str(path), "CPU", config)
        self.request = self.compiled.create_infer_request()
        initialise_numpy_bindings()

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = np.ascontiguousarray(batch.numpy(), dtype=np.float32)
        out = self.request.infer({0: x})  # share_outputs=False: the arrays are copies, ours to keep
        return torch.from_numpy(np.asarray(next(iter(out.values())), dtype=np.float32))


# ----------------------------------------------------------------------------- export


def weights_key(net: nn.Module) -> str:
    """16 hex digits of the SHA-256 of the network's state (names, dtypes, shapes, values)."""
    digest = hashlib.sha256()
    for name, tensor in net.state_dict().items():
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return digest.hexdigest()[:16]


def exported_file(folder: str | Path, net: nn.Module, arch: str = "net", *, key: str | None = None) -> Path:
    """Where the ONNX export of ``net`` for the member in ``folder`` lives (it may not exist
    yet); ``key``: its :func:`weights_key`, when already computed."""
    return Path(folder) / "engine" / f"{arch}-{key or weights_key(net)}-v{EXPORT_VERSION}.onnx"


def export_onnx(net: nn.Module, path: str | Path) -> Path:
    """Export ``net`` followed by a sigmoid to ONNX at ``path`` (float32, opset 17, dynamic
    batch, height and width), written to a temporary file and renamed.

    The TorchScript-based exporter is used (``dynamo=False``): it needs no extra package and
    handles smp's UNets; its deprecation warning is silenced here.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = net.training
    wrapped = nn.Sequential(net, nn.Sigmoid()).eval().cpu()
    dummy = torch.zeros(1, 3, 64, 64)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapped, (dummy,), tmp, input_names=["x"], output_names=["probs"], opset_version=17,
                dynamic_axes={"x": {0: "n", 2: "h", 3: "w"}, "probs": {0: "n", 2: "h", 3: "w"}}, dynamo=False,
            )
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        net.train(was_training)
    return path


def _ensure_export(folder: str | Path, net: nn.Module, arch: str) -> Path:
    """The member's current export, built when missing; stale exports of the member removed."""
    key = weights_key(net)  # hashed once: the whole state is read
    candidates = [Path(folder), Path(tempfile.gettempdir()) / "competition-engines" / key]
    last_error: Exception | None = None
    for base in candidates:
        path = exported_file(base, net, arch, key=key)
        if path.is_file():
            return path
        try:
            t0 = time.perf_counter()
            export_onnx(net, path)
        except OSError as exc:  # a read-only member folder: use the temporary cache
            last_error = exc
            log.warning("cannot write the ONNX export in %s (%s); using %s", path.parent, exc, candidates[-1])
            continue
        log.info("exported %s to %s in %.1f s", folder, path, time.perf_counter() - t0)
        for stale in path.parent.glob(f"{arch}-*.onnx"):
            if stale != path:
                with contextlib.suppress(OSError):
                    stale.unlink()
                    log.info("removed stale export %s", stale)
        return path
    raise UserError(f"cannot export member {folder} to ONNX: {last_error}")


def make_engine(engine: str, net: nn.Module, *, folder: str | Path, arch: str = "net",
                device: torch.device | str = "cpu", precision: str = "auto", threads: int | None = None,
                pin: bool = True):
    """The engine ``engine`` (already resolved, see :func:`resolve_engine`) for one member
    (``pin`` False: OpenVINO leaves its threads unpinned, for several engines side by side)."""
    if engine == "torch":
        return TorchEngine(net, device, precision)
    path = _ensure_export(folder, net, arch)
    if engine == "onnxruntime":
        return OnnxRuntimeEngine(path, threads)
    if engine == "openvino":
        return OpenVinoEngine(path, threads, precision, pin=pin)
    raise UserError(f"unknown engine {engine!r}; valid: {', '.join(ENGINES)}")
