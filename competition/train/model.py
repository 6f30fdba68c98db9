"""Networks: building them with smp, encoder weights, input normalisation, whole-image prediction.

:func:`predict_probs` is the one whole-image forward pass: validation during training and
the inference stage both use it, so they cannot drift apart.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from competition.errors import UserError

log = logging.getLogger(__name__)

#: ImageNet statistics (never ask smp: ``get_preprocessing_params`` downloads).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Input sides must be multiples of this (the encoders' output stride).
STRIDE = 32
#: An image is dark-on-light (brightfield, stained histology) when its median grey level,
#: on a 0..255 scale, is above this.
LIGHT_BACKGROUND_THRESHOLD = 127.0

_warned_offline = False


# ----------------------------------------------------------------------------- polarity


def is_dark_on_light(image: np.ndarray) -> bool:
    """Whether the image has a light background (nuclei darker than it).

    Measured as the median of the channel-mean grey level (on a strided subsample of about
    64k pixels) above :data:`LIGHT_BACKGROUND_THRESHOLD`: the background covers most
    pixels in every image type of this competition.

    Shapes: image H×W×3 uint8.
    """
    step = max(1, int(np.sqrt(image.shape[0] * image.shape[1] / 65536)))  # ~64k pixels
    sub = image[::step, ::step]
    grey = sub.reshape(-1, sub.shape[-1]).mean(axis=1) if sub.ndim == 3 else sub.ravel()
    return bool(np.median(grey) > LIGHT_BACKGROUND_THRESHOLD)


def normalise(image: np.ndarray, invert: bool, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> np.ndarray:
    """uint8 image -> normalised float32 CHW network input.

    Args:
        image: H×W×3 uint8.
        invert: ``255 - image`` first (dark-on-light images made light-on-dark).
        mean, std: per-channel statistics on the 0..1 scale.

    Shapes: image H×W×3 uint8 -> 3×H×W float32.
    """
    x = image.astype(np.float32)
    if invert:
        x = 255.0 - x
    x = (x / 255.0 - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(x.transpose(2, 0, 1))


def invert_for(image: np.ndarray, config: Mapping[str, Any]) -> bool:
    """Whether ``image`` is inverted under a member's resolved config (``invert`` true and the
    image measured dark-on-light)."""
    return bool(config.get("invert")) and is_dark_on_light(image)


# ----------------------------------------------------------------------------- building


def build_network(arch: str, encoder: str, n_channels: int) -> nn.Module:
    """An smp network with random weights (``encoder_weights=None``; no download).

    Args:
        arch: smp architecture name (``Unet``).
        encoder: smp encoder name.
        n_channels: output channels (sigmoid applied outside).
    """
    import segmentation_models_pytorch as smp

    return smp.create_model(arch, encoder_name=encoder, encoder_weights=None, in_channels=3,
                            classes=n_channels)


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


def set_encoder_frozen(model: nn.Module, frozen: bool) -> None:
    """Freeze or unfreeze the encoder's parameters (the tutorial's Freezer)."""
    for p in model.encoder.parameters():
        p.requires_grad_(not frozen)


def unwrap(model: nn.Module) -> nn.Module:
    """The plain network inside a DistributedDataParallel wrapper."""
    return model.module if hasattr(model, "module") else model


# ----------------------------------------------------------------------------- prediction


def pad_to_stride(x: np.ndarray, stride: int = STRIDE) -> tuple[np.ndarray, tuple[int, int]]:
    """Reflect-pad a C×H×W array at the bottom/right to multiples of ``stride``.

    Returns:
        (padded array, (H, W) of the original) for cropping back.
    """
    _, h, w = x.shape
    ph, pw = (-h) % stride, (-w) % stride
    if ph or pw:
        mode = "reflect" if h > 1 and w > 1 else "edge"
        x = np.pad(x, ((0, 0), (0, ph), (0, pw)), mode=mode)
    return x, (h, w)


def predict_logits(model: nn.Module, image: np.ndarray, config: Mapping[str, Any],
                   device: str | torch.device | None = None) -> torch.Tensor:
    """Whole-image logits: normalise, optional invert, reflect-pad to a multiple of 32, crop back.

    Args:
        model: the network (DDP-wrapped or not); put in eval mode here.
        image: H×W×3 uint8.
        config: the member's resolved config (``invert``, ``mean``, ``std``).
        device: defaults to the model's device.

    Returns:
        1×C×H×W float32 logits tensor on ``device``.
    """
    net = unwrap(model)
    net.eval()
    if device is None:
        device = next(net.parameters()).device
    device = torch.device(device)
    x = normalise(image, invert_for(image, config), config.get("mean", IMAGENET_MEAN),
                  config.get("std", IMAGENET_STD))
    x, (h, w) = pad_to_stride(x)
    xt = torch.from_numpy(x)[None].to(device)
    if device.type == "cuda":
        xt = xt.contiguous(memory_format=torch.channels_last)
    amp = torch.autocast("cuda", dtype=torch.float16) if device.type == "cuda" else \
        contextlib.nullcontext()
    with torch.inference_mode(), amp:
        logits = net(xt)
    return logits[:, :, :h, :w].float()


def predict_probs(model: nn.Module, image: np.ndarray, config: Mapping[str, Any],
                  device: str | torch.device | None = None) -> np.ndarray:
    """Whole-image probabilities (sigmoid of :func:`predict_logits`).

    Args:
        model: the network; see :func:`competition.train.members.load_member`.
        image: H×W×3 uint8.
        config: the member's resolved ``config.json`` dict.
        device: defaults to the model's device.

    Returns:
        C×H×W float32 in [0, 1], channels as ``config["channels"]``.

    Shapes: image H×W×3 uint8 -> probs C×H×W float32.
    """
    logits = predict_logits(model, image, config, device)
    return torch.sigmoid(logits)[0].cpu().numpy().astype(np.float32, copy=False)


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
