"""Prediction with trained members: tiling, test-time augmentation, ensembles and routing.

The layers, bottom up:

1. :func:`predict_network`: one network on one normalised image (3×H×W float32). The image is
   reflect-padded at the bottom/right to a multiple of 32 (the encoders' output stride), as
   :func:`competition.train.model.predict_logits` does; an image with a side above
   :attr:`Tiling.max_side` (default 1024, the largest training image, so test images are
   predicted whole as validation predicted them) is then cut into overlapping windows (at most 512 px, at least
   64 px overlap, starts on multiples of 32; :func:`window_size` shrinks them to cover a side
   with the fewest windows), so memory stays bounded whatever the image size.
   Windows and TTA views go through the network in batches; the probabilities of each window
   are blended with a separable ramp weight and normalised by the summed weights.
2. TTA: the 8 dihedral transforms of the square (:func:`dihedral`); ``flips`` uses the 4 that
   keep the shape (identity, horizontal, vertical and both flips), ``d4`` all 8. Each view's
   output is mapped back (:func:`inverse_dihedral`) before averaging.
3. :class:`EnsemblePredictor`: every image is classified by
   :func:`competition.data.types.classify_image` and routed to its type's members (or to the
   ``all`` members when its type has none); the members' probabilities are averaged with the
   weights of the ensemble file (:mod:`competition.ensemble`). The routing of each image is
   returned as a :class:`Route` for the submission's JSON sidecar.

Devices: CUDA with ``torch.autocast`` (float16) and channels-last when present, else the CPU;
always under ``torch.inference_mode``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from competition.errors import UserError

log = logging.getLogger(__name__)

__all__ = [
    "TTA_MODES",
    "STRIDE",
    "Tiling",
    "LoadedMember",
    "Route",
    "EnsemblePredictor",
    "tta_transforms",
    "dihedral",
    "inverse_dihedral",
    "tile_starts",
    "window_size",
    "blend_ramp",
    "predict_network",
    "predict_member",
    "resolve_device",
    "set_threads",
]

#: Test-time augmentation modes: ``none``, ``flips`` (4 views), ``d4`` (8 views).
TTA_MODES = ("none", "flips", "d4")
#: Input sides must be multiples of this (the encoders' output stride).
STRIDE = 32


# ----------------------------------------------------------------------------- TTA


def tta_transforms(mode: str) -> tuple[int, ...]:
    """The dihedral transform indices (see :func:`dihedral`) of a TTA mode.

    ``none`` -> (0,); ``flips`` -> identity, 180° rotation (= both flips), horizontal flip,
    vertical flip (0, 2, 4, 6): the four that keep an H×W image H×W; ``d4`` -> all eight.

    Raises:
        UserError: an unknown mode (the message lists the valid ones).
    """
    if mode == "none":
        return (0,)
    if mode == "flips":
        return (0, 2, 4, 6)
    if mode == "d4":
        return tuple(range(8))
    raise UserError(f"unknown TTA mode {mode!r}; valid: {', '.join(TTA_MODES)}")


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """Apply dihedral transform ``k`` (0..7) to the last two dimensions.

    ``k = 4 * f + r``: a horizontal flip (last dim reversed) when ``f = 1``, then ``r``
    counter-clockwise quarter turns (``torch.rot90``). So 0 is the identity, 2 the half
    turn (both flips), 4 the horizontal flip and 6 the vertical flip. Odd ``k`` swap H and W.

    Shapes: (..., H, W) -> (..., H, W) for even k, (..., W, H) for odd k.
    """
    if not 0 <= k < 8:
        raise ValueError(f"dihedral transform index must be in 0..7, got {k}")
    if k >= 4:
        x = torch.flip(x, dims=(-1,))
    r = k % 4
    return torch.rot90(x, r, dims=(-2, -1)) if r else x


def inverse_dihedral(y: torch.Tensor, k: int) -> torch.Tensor:
    """Undo :func:`dihedral`: ``inverse_dihedral(dihedral(x, k), k) == x``.

    Shapes: (..., H', W') -> (..., H, W) with (H, W) the shape before :func:`dihedral`.
    """
    if not 0 <= k < 8:
        raise ValueError(f"dihedral transform index must be in 0..7, got {k}")
    r = k % 4
    if r:
        y = torch.rot90(y, -r, dims=(-2, -1))
    if k >= 4:
        y = torch.flip(y, dims=(-1,))
    return y


# ----------------------------------------------------------------------------- tiling


@dataclass(frozen=True)
class Tiling:
    """How large images are cut into windows, and how many inputs go through at once.

    Attributes:
        tile_size: window side in pixels (a multiple of 32).
        overlap: minimum overlap of neighbouring windows (a multiple of 32, less than
            ``tile_size``); a window's outer quarter-overlap next to a neighbour gets zero
            weight, so a network whose receptive field reaches less than ``overlap / 4``
            pixels gives exactly its whole-image output.
        max_side: images whose (padded) height and width are both at most this are predicted
            whole; larger ones are tiled.
        batch_size: the most windows × TTA views per forward pass.
    """

    tile_size: int = 512
    overlap: int = 64
    max_side: int = 1024
    batch_size: int = 4

    def __post_init__(self) -> None:
        for name in ("tile_size", "overlap", "max_side", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UserError(f"tiling {name} must be a non-negative integer, got {value!r}")
        if self.tile_size < STRIDE or self.tile_size % STRIDE:
            raise UserError(f"tile size must be a positive multiple of {STRIDE}, got {self.tile_size}")
        if self.overlap % STRIDE or self.overlap >= self.tile_size:
            raise UserError(
                f"tile overlap must be a multiple of {STRIDE} below the tile size {self.tile_size}, got {self.overlap}"
            )
        if self.batch_size < 1:
            raise UserError(f"batch size must be >= 1, got {self.batch_size}")


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Window starts covering ``0..length-1``: every ``tile - overlap`` pixels, the last flush
    with the end.

    With ``length``, ``tile`` and ``overlap`` multiples of 32, every start is one too (the
    network then sees the same pixel grid as on the whole image). Neighbouring windows overlap
    by at least ``overlap``. A ``length`` at most ``tile`` gives one window, ``[0]``.
    """
    if length <= tile:
        return [0]
    step = tile - overlap
    starts = [0]
    while starts[-1] + tile < length:
        starts.append(min(starts[-1] + step, length - tile))
    return starts


def blend_ramp(size: int, overlap: int, *, before: bool, after: bool) -> np.ndarray:
    """1-D blending weight of a window along one axis.

    Next to a neighbouring window (``before``: one starts before this one; ``after``: one
    ends after it), the weight is 0 on the outer ``overlap // 4`` pixels, then rises linearly
    to 1 over the next ``overlap // 2`` pixels; elsewhere it is 1. Two neighbours overlapping
    by at least ``overlap`` pixels never both weigh 0 on a pixel, and the zero margin discards
    the pixels whose receptive field is cut by the window edge.

    Shapes: -> (size,) float32.
    """
    weight = np.ones(size, dtype=np.float32)
    if overlap <= 0:
        return weight
    margin, rise = overlap // 4, max(overlap // 2, 1)
    d = np.arange(size, dtype=np.float32)
    ramp = np.clip((d - margin + 1) / (rise + 1), 0.0, 1.0)
    if before:
        weight = np.minimum(weight, ramp)
    if after:
        weight = np.minimum(weight, ramp[::-1])
    return weight


def window_size(length: int, tiling: Tiling) -> int:
    """Window side along an axis of ``length`` (a multiple of 32) pixels.

    At most ``tiling.tile_size``; as small as still covers the axis with the fewest windows
    overlapping by ``tiling.overlap``, so an axis just over the tile size (544 px, say) takes
    two windows of 320 px rather than two of 512 (less compute wasted on the overlap).
    """
    tile, overlap = tiling.tile_size, tiling.overlap
    if length <= tile:
        return length
    n = math.ceil((length - overlap) / (tile - overlap))
    return min(tile, math.ceil((length + (n - 1) * overlap) / n / STRIDE) * STRIDE)


@dataclass(frozen=True)
class _Window:
    top: int
    left: int
    height: int
    width: int
    weight: np.ndarray  # height × width float32


def _windows(height: int, width: int, tiling: Tiling) -> list[_Window]:
    """Windows over a padded ``height`` × ``width`` image (one whole window when small)."""
    if max(height, width) <= tiling.max_side:
        return [_Window(0, 0, height, width, np.ones((height, width), np.float32))]
    th, tw = window_size(height, tiling), window_size(width, tiling)
    rows, cols = tile_starts(height, th, tiling.overlap), tile_starts(width, tw, tiling.overlap)
    out = []
    for i, top in enumerate(rows):
        wy = blend_ramp(th, tiling.overlap, before=i > 0, after=i < len(rows) - 1)
        for j, left in enumerate(cols):
            wx = blend_ramp(tw, tiling.overlap, before=j > 0, after=j < len(cols) - 1)
            out.append(_Window(top, left, th, tw, np.outer(wy, wx)))
    return out


def _pad_to_stride(x: np.ndarray) -> np.ndarray:
    """Reflect-pad a C×H×W array at the bottom/right to multiples of 32, exactly as training's
    validation does (:func:`competition.train.model.pad_to_stride`)."""
    from competition.train.model import pad_to_stride

    return pad_to_stride(x, STRIDE)[0]


# ----------------------------------------------------------------------------- devices


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` -> CUDA when present, else CPU; ``cuda`` without CUDA is a UserError."""
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA device")
    return torch.device(device)


def set_threads(threads: int | None) -> None:
    """Set torch's CPU threads (None: leave torch's default, one per core).

    On cores shared with other work, 1 thread can beat 2 several times over: the OpenMP team
    waits at every layer for its slowest, descheduled thread (measured here: a resnet18 UNet
    on a 256×256 image took 0.18 s with 1 thread and 1.65 s with 2 while another process kept
    one of the 2 cores busy).
    """
    if threads is None:
        return
    if threads < 1:
        raise UserError(f"threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)


def _autocast(device: torch.device):
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


# ----------------------------------------------------------------------------- one network


@dataclass
class NetworkTimer:
    """Seconds spent in forward passes (synchronised on CUDA) and their count."""

    seconds: float = 0.0
    n_forward: int = 0


def predict_network(
    net: nn.Module,
    x: np.ndarray,
    *,
    tta: str = "none",
    tiling: Tiling = Tiling(),
    device: torch.device | str | None = None,
    timer: NetworkTimer | None = None,
) -> np.ndarray:
    """Probabilities of one network on one normalised image, tiled and with TTA.

    The image is reflect-padded at the bottom/right to a multiple of 32; when a padded side
    exceeds ``tiling.max_side`` it is cut into windows (:func:`tile_starts`). Every window is
    seen under each TTA transform; the logits of each view are mapped back by
    :func:`inverse_dihedral` and turned into probabilities by a sigmoid; the views are
    averaged and the windows blended (:func:`blend_ramp` weights, normalised).

    Why the arithmetic mean of probabilities: each view is an estimate of the same per-pixel
    probability, and their mean stays a probability in [0, 1] that the tuned thresholds of
    the post-processing apply to unchanged; one overconfident view moves it by at most
    1 / n_views. Averaging logits (a geometric-style mean) would let one extreme view dominate
    and shifts the operating point of the thresholds. It is also what the top DSB 2018
    solutions did.

    Args:
        net: the network (eval mode is set here); ``net(x)`` maps N×3×H×W to N×C×H×W logits
            for H, W multiples of 32.
        x: 3×H×W float32 normalised input (:func:`competition.train.model.normalise`).
        tta: one of :data:`TTA_MODES`.
        tiling: window size, overlap, the whole-image limit and the batch size.
        device: default: the network's device.
        timer: accumulates the forward-pass seconds, when given.

    Returns:
        C×H×W float32 probabilities.

    Shapes: x (3, H, W) float32 -> probs (C, H, W) float32.
    """
    if x.ndim != 3:
        raise ValueError(f"predict_network expects a 3×H×W input, got shape {x.shape}")
    net.eval()
    if device is None:
        device = next(net.parameters()).device
    device = torch.device(device)
    transforms = tta_transforms(tta)
    _, height, width = x.shape
    padded = _pad_to_stride(np.asarray(x, dtype=np.float32))
    _, hp, wp = padded.shape
    windows = _windows(hp, wp, tiling)
    source = torch.from_numpy(np.ascontiguousarray(padded))
    acc: np.ndarray | None = None
    weight_sum = np.zeros((hp, wp), dtype=np.float32)
    # One job per (window, view); odd views swap H and W, so batch by shape.
    jobs = [(w, k) for w in windows for k in transforms]
    by_shape: dict[tuple[int, int], list[tuple[_Window, int]]] = {}
    for w, k in jobs:
        shape = (w.height, w.width) if k % 2 == 0 else (w.width, w.height)
        by_shape.setdefault(shape, []).append((w, k))
    n_views = len(transforms)
    for group in by_shape.values():
        for start in range(0, len(group), tiling.batch_size):
            chunk = group[start : start + tiling.batch_size]
            batch = torch.stack(
                [dihedral(source[:, w.top : w.top + w.height, w.left : w.left + w.width], k) for w, k in chunk]
            )
            probs = _forward(net, batch, device, timer)
            for (w, k), p in zip(chunk, probs):
                p = inverse_dihedral(p, k).numpy()
                if acc is None:
                    acc = np.zeros((p.shape[0], hp, wp), dtype=np.float32)
                acc[:, w.top : w.top + w.height, w.left : w.left + w.width] += p * (w.weight / n_views)
    for w in windows:
        weight_sum[w.top : w.top + w.height, w.left : w.left + w.width] += w.weight
    assert acc is not None
    out = acc[:, :height, :width] / weight_sum[None, :height, :width]
    return np.ascontiguousarray(out, dtype=np.float32)


def _forward(net: nn.Module, batch: torch.Tensor, device: torch.device, timer: NetworkTimer | None) -> torch.Tensor:
    """Sigmoid of the network's logits for a batch, returned on the CPU as float32."""
    t0 = time.perf_counter()
    xb = batch.to(device, non_blocking=True)
    if device.type == "cuda":
        xb = xb.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode():
        with _autocast(device):
            logits = net(xb)
        probs = torch.sigmoid(logits.float()).detach().cpu()
    if timer is not None:
        timer.seconds += time.perf_counter() - t0  # .cpu() synchronises on CUDA
        timer.n_forward += 1
    return probs


# ----------------------------------------------------------------------------- members


@dataclass
class LoadedMember:
    """A trained member in memory.

    Attributes:
        key: its folder relative to the recipe folder (``"<type>/<name>"``).
        folder: the member folder.
        model: the network (eval mode, on the predictor's device).
        config: the member's ``config.json`` dict (``channels``, ``mean``, ``std``,
            ``invert``, ...).
    """

    key: str
    folder: Path
    model: nn.Module
    config: dict

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self.config.get("channels", ()))

    @property
    def nucleus_diameter(self) -> float:
        """The diameter the member was trained at (0: native scale)."""
        return float((self.config.get("member") or {}).get("nucleus_diameter", 0.0) or 0.0)


def predict_member(
    member: LoadedMember,
    image: np.ndarray,
    *,
    tta: str = "none",
    tiling: Tiling = Tiling(),
    device: torch.device | str | None = None,
    timer: NetworkTimer | None = None,
) -> np.ndarray:
    """One member's probabilities for one image: normalise (with the member's invert
    decision, taken on the whole image), then :func:`predict_network`.

    Shapes: image (H, W, 3) uint8 -> probs (C, H, W) float32.
    """
    from competition.train.model import IMAGENET_MEAN, IMAGENET_STD, invert_for, normalise

    config = member.config
    x = normalise(image, invert_for(image, config), config.get("mean", IMAGENET_MEAN), config.get("std", IMAGENET_STD))
    return predict_network(member.model, x, tta=tta, tiling=tiling, device=device, timer=timer)


# ----------------------------------------------------------------------------- ensembles


@dataclass(frozen=True)
class Route:
    """Where one image went.

    Attributes:
        image_type: the type :func:`~competition.data.types.classify_image` gave it.
        ensemble: the ensemble entry used (the type itself, or ``"all"`` on fallback).
        members: the member keys used, with their weights.
        fallback: True when the type had no members and the ``all`` members were used.
        diameter: the median nucleus diameter estimated by the size passes (members trained
            at a fixed ``nucleus_diameter``), None when no member needed it or the first
            pass found no nucleus.
        scales: member key -> the resize factor that member saw (1 = native).
    """

    image_type: str
    ensemble: str
    members: tuple[tuple[str, float], ...]
    fallback: bool
    diameter: float | None = None
    scales: tuple[tuple[str, float], ...] = ()

    def to_dict(self) -> dict[str, Any]:
        out = {
            "type": self.image_type,
            "ensemble": self.ensemble,
            "members": [{"member": k, "weight": w} for k, w in self.members],
            "fallback": self.fallback,
        }
        if self.scales:
            out["nucleus_diameter_estimate"] = None if self.diameter is None else round(self.diameter, 2)
            out["scales"] = {k: round(v, 4) for k, v in self.scales}
        return out


@dataclass
class PredictorTimings:
    """Seconds spent per stage (summed over images)."""

    network: NetworkTimer = field(default_factory=NetworkTimer)
    classify: float = 0.0
    predict: float = 0.0  # the whole ensemble prediction, normalisation and blending included
    size_estimate: float = 0.0  # part of predict: the passes that estimate the nucleus size
    n_images: int = 0


class EnsemblePredictor:
    """Routes each image to its type's ensemble and averages the members' probabilities.

    Every member an image type can be routed to is loaded when the predictor is built (the
    ``all`` members only when some type falls back to them), so a broken member is reported
    before any prediction starts; the ensemble file's folders were checked when it was read.

    Args:
        ensemble: the ensemble spec (:class:`competition.ensemble.Ensemble`), validated.
        device: ``auto``, ``cpu``, ``cuda`` or a torch device.
        tta: one of :data:`TTA_MODES`.
        tiling: see :class:`Tiling`.
        loader: ``folder, device -> (model, config)``; default
            :func:`competition.train.members.load_member` (tests pass stand-ins).
        size_passes: for members trained at a ``nucleus_diameter``: how many passes without
            TTA estimate the nucleus size before the final pass (1: one native-scale pass;
            2: a second pass at the first estimate re-measures it, which corrects the first
            pass where nuclei far from the member's size merge or break up).
    """

    def __init__(
        self,
        ensemble,
        *,
        device: str | torch.device = "auto",
        tta: str = "none",
        tiling: Tiling = Tiling(),
        loader=None,
        size_passes: int = 2,
    ) -> None:
        tta_transforms(tta)  # validates
        if size_passes < 1:
            raise UserError(f"size_passes must be >= 1, got {size_passes}")
        self.size_passes = int(size_passes)
        self.ensemble = ensemble
        self.device = resolve_device(device)
        self.tta = tta
        self.tiling = tiling
        self.timings = PredictorTimings()
        if loader is None:
            from competition.train.members import load_member as loader
        self.members: dict[str, LoadedMember] = {}
        for key in ensemble.routed_member_keys():
            folder = ensemble.member_folder(key)
            try:
                model, config = loader(folder, self.device)
            except UserError:
                raise
            except Exception as exc:  # noqa: BLE001 - a corrupt checkpoint is the user's to fix
                raise UserError(f"cannot load member {folder}: {type(exc).__name__}: {exc}") from None
            model.eval()
            if self.device.type == "cuda":
                model.to(memory_format=torch.channels_last)
            self.members[key] = LoadedMember(key, Path(folder), model, config)
        channels = {m.channels for m in self.members.values()}
        if len(channels) > 1:
            raise UserError(
                "ensemble members predict different channels: "
                + "; ".join(f"{k}: {list(m.channels)}" for k, m in self.members.items())
            )
        self.channels: tuple[str, ...] = channels.pop() if channels else ()
        log.info(
            "loaded %d member(s) on %s, TTA %s (%d view(s)), tiles %d px (overlap %d) above %d px",
            len(self.members),
            self.device,
            tta,
            len(tta_transforms(tta)),
            tiling.tile_size,
            tiling.overlap,
            tiling.max_side,
        )

    def route(self, image: np.ndarray) -> Route:
        """Classify ``image`` and pick its ensemble (the ``all`` fallback when its type has no
        member)."""
        from competition.data.types import classify_image

        t0 = time.perf_counter()
        image_type = classify_image(image)
        self.timings.classify += time.perf_counter() - t0
        entry, fallback = self.ensemble.route(image_type)
        return Route(image_type, entry, tuple((m.key, m.weight) for m in self.ensemble.members_of(entry)), fallback)

    def predict(self, image: np.ndarray, route: Route | None = None) -> tuple[np.ndarray, Route]:
        """Weighted mean of the routed members' probabilities.

        Returns:
            (probs C×H×W float32, the route taken).

        Shapes: image (H, W, 3) uint8 -> probs (C, H, W) float32.
        """
        if route is None:
            route = self.route(image)
        t0 = time.perf_counter()
        total = sum(w for _, w in route.members)
        targets = {key: self.members[key].nucleus_diameter for key, _ in route.members}
        if any(targets.values()):
            route = self._estimate_scales(image, route, targets)
        scales = dict(route.scales) or {key: 1.0 for key, _ in route.members}
        out: np.ndarray | None = None
        for key, weight in route.members:
            probs = predict_scaled(
                self.members[key], image, scales[key], tta=self.tta, tiling=self.tiling, device=self.device,
                timer=self.timings.network,
            )
            if out is None:
                out = probs * (weight / total)
            else:
                out += probs * (weight / total)
        self.timings.predict += time.perf_counter() - t0
        self.timings.n_images += 1
        assert out is not None
        return out, route


    def _estimate_scales(self, image: np.ndarray, route: Route, targets: dict[str, float]) -> Route:
        """Size passes for members trained at a fixed nucleus diameter: the routed members'
        mean probabilities (no TTA), first at the native scale, post-processed with the type's
        parameters; the median diameter of those instances sets each member's resize factor
        (:func:`competition.scale.scale_factor`), and each further pass (``size_passes``)
        predicts at the current factors and measures again."""
        from competition.postprocess import watershed_instances
        from competition.scale import median_diameter, scale_factor

        t0 = time.perf_counter()
        total = sum(w for _, w in route.members)
        params = self.ensemble.params_for(route.image_type)[0]
        scales = {k: 1.0 for k, _ in route.members}
        diameter = None
        for _ in range(self.size_passes):
            mean: np.ndarray | None = None
            for key, weight in route.members:
                p = predict_scaled(self.members[key], image, scales[key], tta="none", tiling=self.tiling,
                                   device=self.device, timer=self.timings.network) * (weight / total)
                mean = p if mean is None else mean + p
            assert mean is not None
            estimate = median_diameter(watershed_instances(mean, params, self.channels), min_area=params.min_size)
            if estimate is None:  # nothing found at this scale: keep the previous estimate
                break
            diameter = estimate
            scales = {k: scale_factor(diameter, targets[k]) for k, _ in route.members}
        self.timings.size_estimate += time.perf_counter() - t0
        return dataclasses.replace(route, diameter=diameter, scales=tuple(scales.items()))


def predict_scaled(
    member: LoadedMember,
    image: np.ndarray,
    scale: float,
    *,
    tta: str = "none",
    tiling: Tiling = Tiling(),
    device: torch.device | str | None = None,
    timer: NetworkTimer | None = None,
) -> np.ndarray:
    """:func:`predict_member` on the image resized by ``scale``, probabilities resized back to
    the image's own grid (bilinear).

    Shapes: image (H, W, 3) uint8 -> probs (C, H, W) float32.
    """
    if scale == 1.0:
        return predict_member(member, image, tta=tta, tiling=tiling, device=device, timer=timer)
    from competition.scale import resize_image, resize_probs

    probs = predict_member(member, resize_image(image, scale), tta=tta, tiling=tiling, device=device, timer=timer)
    return resize_probs(probs, image.shape[0], image.shape[1])


# ----------------------------------------------------------------------------- reading ahead


def prefetch(items: Sequence, read, *, depth: int = 2) -> Iterator[tuple[Any, Any, BaseException | None]]:
    """Yield ``(item, read(item), None)`` in order, reading up to ``depth`` items ahead in a
    background thread so the network does not wait for the disk; a failed read yields
    ``(item, None, exception)``.
    """
    from concurrent.futures import ThreadPoolExecutor

    def safe(item):
        try:
            return read(item), None
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            return None, exc

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read") as pool:
        pending = []
        iterator = iter(items)
        for item in iterator:
            pending.append((item, pool.submit(safe, item)))
            if len(pending) > depth:
                break
        while pending:
            item, future = pending.pop(0)
            nxt = next(iterator, _END)
            if nxt is not _END:
                pending.append((nxt, pool.submit(safe, nxt)))
            value, error = future.result()
            yield item, value, error


_END = object()
