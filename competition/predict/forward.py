"""The one network forward: TTA views, tiles, blending, precision, device and timing.

:func:`predict_network` takes one normalised image (3×H×W float32, from
:func:`competition.predict.preprocess.normalise`) and one network, and returns probabilities
on the same grid. The image is first reflect-padded by the member's training margin on
every side (:func:`competition.predict.preprocess.pad_for_network`; training crops carry
that margin unsupervised, so no image border may fall in it) and to a multiple of 32; an
image whose padded side exceeds :attr:`Tiling.max_side` (default 1024) is cut into
overlapping windows (at most 512 px, at least 64 px overlap, starts on multiples of 32;
:func:`window_size` shrinks them to cover a side with the fewest windows), so memory stays
bounded whatever the image size. Windows and TTA views go through the network in batches;
the probabilities of each window are blended with a separable ramp weight and normalised by
the summed weights.

TTA: the 8 dihedral transforms of the square (:func:`dihedral`); ``flips`` uses the 4 that
keep the shape (identity, horizontal, vertical and both flips), ``d4`` all 8. Each view's
output is mapped back (:func:`inverse_dihedral`) before averaging.

The forward pass itself is an engine's (:mod:`competition.predict.engines`): PyTorch with the
member's ``precision`` (float16 autocast and channels_last on CUDA, bfloat16 autocast and
channels_last on the CPU for ``bf16`` members, float32 otherwise; under
``torch.inference_mode``), ONNX Runtime or OpenVINO.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from competition.errors import UserError

log = logging.getLogger(__name__)
from competition.predict.preprocess import STRIDE, pad_for_network

__all__ = [
    "TTA_MODES",
    "STRIDE",
    "Tiling",
    "NetworkTimer",
    "tta_transforms",
    "dihedral",
    "inverse_dihedral",
    "tile_starts",
    "window_size",
    "blend_ramp",
    "predict_network",
    "resolve_device",
    "set_threads",
]

#: Test-time augmentation modes: ``none``, ``flips`` (4 views), ``d4`` (8 views).
TTA_MODES = ("none", "flips", "d4")


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


# ----------------------------------------------------------------------------- one network


@dataclass
class NetworkTimer:
    """Seconds spent in forward passes (synchronised on CUDA), their count and the pixels
    they saw (batch x height x width of each input, padding and tile overlaps included).

    While ``stage`` is set (the ensemble predictor names the pass it is running: see
    :data:`~competition.predict.ensemble.PASSES`), every forward is also counted under that
    name in ``stages``, so a run can say which pass the network time went to.
    """

    seconds: float = 0.0
    n_forward: int = 0
    pixels: int = 0
    stage: str = ""
    stages: dict[str, "NetworkTimer"] = field(default_factory=dict)

    def add(self, seconds: float, pixels: int) -> None:
        """Count one forward pass (and under the current ``stage``, when set)."""
        self.seconds += seconds
        self.n_forward += 1
        self.pixels += int(pixels)
        if self.stage:
            self.stages.setdefault(self.stage, NetworkTimer()).add(seconds, pixels)

    def absorb(self, other: "NetworkTimer") -> None:
        """Add ``other``'s counts (and its stages') to these: the sum over predictors that
        ran side by side (:mod:`competition.predict.streams`)."""
        self.seconds += other.seconds
        self.n_forward += other.n_forward
        self.pixels += other.pixels
        for name, timer in other.stages.items():
            self.stages.setdefault(name, NetworkTimer()).absorb(timer)

    def stages_in(self, order: Sequence[str] = ()) -> list[tuple[str, "NetworkTimer"]]:
        """The ``stages``, the names in ``order`` first, in that order, then the others as
        they first ran."""
        rank = {name: i for i, name in enumerate(order)}
        return sorted(self.stages.items(), key=lambda item: rank.get(item[0], len(rank)))

    def by_stage(self, order: Sequence[str] = ()) -> dict[str, dict[str, float]]:
        """``stage -> {seconds, forwards, megapixels}`` (rounded, for records), in
        :meth:`stages_in` order."""
        return {name: {"seconds": round(t.seconds, 3), "forwards": t.n_forward, "megapixels": round(t.pixels / 1e6, 3)}
                for name, t in self.stages_in(order)}


def predict_network(
    net,
    x: np.ndarray,
    *,
    tta: str = "none",
    tiling: Tiling = Tiling(),
    device: torch.device | str | None = None,
    timer: NetworkTimer | None = None,
    margin: int = 16,
    precision: str = "auto",
    views: tuple[int, ...] | None = None,
) -> np.ndarray:
    """Probabilities of one network on one normalised image, tiled and with TTA.

    The image is reflect-padded by ``margin`` on every side and to a multiple of 32
    (:func:`~competition.predict.preprocess.pad_for_network`); when a padded side
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
        net: the network (an ``nn.Module``, run by
            :class:`~competition.predict.engines.TorchEngine` in eval mode; ``net(x)`` maps
            N×3×H×W to N×C×H×W logits for H, W multiples of 32), or an engine of
            :mod:`competition.predict.engines` (batch -> probabilities).
        x: 3×H×W float32 normalised input (:func:`competition.predict.preprocess.normalise`).
        tta: one of :data:`TTA_MODES`.
        tiling: window size, overlap, the whole-image limit and the batch size.
        device: default: the network's device (``nn.Module`` only).
        timer: accumulates the forward-pass seconds, when given.
        margin: the member's training margin (its crops' ``pad``).
        precision: the member's ``precision`` (``auto``, ``bf16``, ``fp32``; ``nn.Module`` only).
        views: the dihedral transforms to average instead of ``tta``'s (a subset of them: the
            caller that already holds the identity view of ``flips`` asks for the other three
            and weighs the two means itself, see :meth:`EnsemblePredictor.predict`).

    Returns:
        C×H×W float32 probabilities.

    Shapes: x (3, H, W) float32 -> probs (C, H, W) float32.
    """
    if x.ndim != 3:
        raise ValueError(f"predict_network expects a 3×H×W input, got shape {x.shape}")
    if isinstance(net, nn.Module):
        from competition.predict.engines import TorchEngine

        net = TorchEngine(net, device, precision)
    transforms = tta_transforms(tta)
    if views is not None:
        views = tuple(int(k) for k in views)
        if not views or any(k not in range(8) for k in views) or len(set(views)) != len(views):
            raise ValueError(f"views must be distinct dihedral transforms 0..7, got {views}")
        transforms = views
    _, height, width = x.shape
    padded, (top, left) = pad_for_network(np.asarray(x, dtype=np.float32), margin)
    _, hp, wp = padded.shape
    windows = _windows(hp, wp, tiling)
    source = torch.from_numpy(np.ascontiguousarray(padded))
    acc: np.ndarray | None = None
    # One job per (window, view); odd views swap H and W, so batch by shape.
    jobs = [(w, k) for w in windows for k in transforms]
    by_shape: dict[tuple[int, int], list[tuple[_Window, int]]] = {}
    for w, k in jobs:
        shape = (w.height, w.width) if k % 2 == 0 else (w.width, w.height)
        by_shape.setdefault(shape, []).append((w, k))
    n_views = len(transforms)
    # Each window's weight over the views, computed once; a whole image's is a constant (the
    # same float32 value in every pixel, so multiplying by the scalar gives the same sums).
    whole = len(windows) == 1
    scaled = {id(w): np.float32(1.0) / np.float32(n_views) if whole else w.weight / n_views for w in windows}
    for group in by_shape.values():
        for start in range(0, len(group), tiling.batch_size):
            chunk = group[start : start + tiling.batch_size]
            batch = torch.stack(
                [dihedral(source[:, w.top : w.top + w.height, w.left : w.left + w.width], k) for w, k in chunk]
            )
            probs = _forward(net, batch, timer)
            for (w, k), p in zip(chunk, probs):
                p = inverse_dihedral(p, k).numpy()
                if acc is None:
                    acc = np.zeros((p.shape[0], hp, wp), dtype=np.float32)
                acc[:, w.top : w.top + w.height, w.left : w.left + w.width] += p * scaled[id(w)]
    assert acc is not None
    inner = (slice(top, top + height), slice(left, left + width))
    if whole:  # the summed weights are all 1: dividing by them changes nothing
        return np.ascontiguousarray(acc[:, inner[0], inner[1]], dtype=np.float32)
    weight_sum = np.zeros((hp, wp), dtype=np.float32)
    for w in windows:
        weight_sum[w.top : w.top + w.height, w.left : w.left + w.width] += w.weight
    out = acc[:, inner[0], inner[1]] / weight_sum[None, inner[0], inner[1]]
    return np.ascontiguousarray(out, dtype=np.float32)


def _forward(engine, batch: torch.Tensor, timer: NetworkTimer | None) -> torch.Tensor:
    """The engine's probabilities for a batch (CPU float32), timed."""
    t0 = time.perf_counter()
    probs = engine(batch)
    if timer is not None:
        timer.add(time.perf_counter() - t0, batch.shape[0] * batch.shape[-2] * batch.shape[-1])
    return probs
