"""Trained members in memory, and one member's probabilities on one image's own grid.

:func:`predict_scaled` is the function that turns (member, image) into probabilities:
training's validation and out-of-fold maps, tuning, holdout, submit, report and bench all
reach the network through it (the ensemble through :class:`~competition.predict.ensemble.EnsemblePredictor`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from competition.predict.forward import NetworkTimer, Tiling, predict_network
from competition.predict.preprocess import (IMAGENET_MEAN, IMAGENET_STD, equalise_input, input_norm_of,
                                           invert_for, margin_of, normalise)

__all__ = ["LoadedMember", "predict_member", "predict_scaled"]


@dataclass
class LoadedMember:
    """A trained member in memory.

    Attributes:
        key: its folder relative to the recipe folder (``"<type>/<name>"``).
        folder: the member folder.
        model: the network (eval mode, on the predictor's device).
        config: the member's ``config.json`` dict (``channels``, ``mean``, ``std``,
            ``invert``, ...).
        engine: what runs its forward passes (:mod:`competition.predict.engines`); None:
            ``model`` in PyTorch with the member's precision.
    """

    key: str
    folder: Path
    model: nn.Module
    config: dict
    engine: Any = None

    @property
    def channels(self) -> tuple[str, ...]:
        return tuple(self.config.get("channels", ()))

    @property
    def precision(self) -> str:
        """The member's ``precision`` (``auto`` for members trained before it existed)."""
        return str((self.config.get("member") or {}).get("precision", "auto"))

    @property
    def nucleus_diameter(self) -> float:
        """The diameter the member was trained at (0: native scale)."""
        return float((self.config.get("member") or {}).get("nucleus_diameter", 0.0) or 0.0)

    @property
    def scale_jitter(self) -> float:
        """The member's training scale jitter: it saw nuclei from ``nucleus_diameter /
        scale_jitter`` to ``nucleus_diameter * scale_jitter`` px across (1: none)."""
        return max(1.0, float((self.config.get("member") or {}).get("scale_jitter", 1.0) or 1.0))


def predict_member(
    member: LoadedMember,
    image: np.ndarray,
    *,
    tta: str = "none",
    tiling: Tiling = Tiling(),
    device: torch.device | str | None = None,
    timer: NetworkTimer | None = None,
    views: tuple[int, ...] | None = None,
) -> np.ndarray:
    """One member's probabilities for one image: equalise (the member's ``input_norm``) and
    normalise (with the member's invert decision), both measured on the whole image
    as given, then :func:`~competition.predict.forward.predict_network`
    with the member's training margin, precision and engine.

    Shapes: image (H, W, 3) uint8 -> probs (C, H, W) float32.
    """
    config = member.config
    invert = invert_for(image, config)
    x = normalise(equalise_input(image, input_norm_of(config)), invert,
                  config.get("mean", IMAGENET_MEAN), config.get("std", IMAGENET_STD))
    net = member.model if member.engine is None else member.engine
    return predict_network(net, x, tta=tta, tiling=tiling, device=device, timer=timer,
                           margin=margin_of(config), precision=member.precision, views=views)


def predict_scaled(
    member: LoadedMember,
    image: np.ndarray,
    scale: float,
    *,
    tta: str = "none",
    tiling: Tiling = Tiling(),
    device: torch.device | str | None = None,
    timer: NetworkTimer | None = None,
    views: tuple[int, ...] | None = None,
) -> np.ndarray:
    """:func:`predict_member` on the image resized by ``scale``, probabilities resized back to
    the image's own grid (bilinear).

    Shapes: image (H, W, 3) uint8 -> probs (C, H, W) float32.
    """
    if scale == 1.0:
        return predict_member(member, image, tta=tta, tiling=tiling, device=device, timer=timer, views=views)
    from competition.scale import resize_image, resize_probs

    probs = predict_member(member, resize_image(image, scale), tta=tta, tiling=tiling, device=device, timer=timer,
                           views=views)
    return resize_probs(probs, image.shape[0], image.shape[1])


