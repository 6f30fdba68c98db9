"""What every image goes through before a network, in training and prediction alike.

RGB uint8 -> (optional) inversion of dark-on-light images -> ImageNet normalisation ->
float32 CHW; before the forward pass, reflection padding by the training margin on every
side and up to a multiple of the encoders' output stride (:func:`pad_for_network`).
Training imports this module; it never imports training.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "STRIDE", "LIGHT_BACKGROUND_THRESHOLD",
           "DEFAULT_MARGIN", "is_dark_on_light", "normalise", "invert_for", "margin_of",
           "pad_for_network"]

#: ImageNet statistics (never ask smp: ``get_preprocessing_params`` downloads).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Input sides must be multiples of this (the encoders' output stride).
STRIDE = 32
#: An image is dark-on-light (brightfield, stained histology) when its median grey level,
#: on a 0..255 scale, is above this.
LIGHT_BACKGROUND_THRESHOLD = 127.0
#: The reflection margin of training crops (a member's ``pad``) when a config lacks it.
DEFAULT_MARGIN = 16


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


def margin_of(config: Mapping[str, Any]) -> int:
    """A member's training margin (its crops' reflection ``pad``, which the loss ignores)."""
    member = config.get("member") or {}
    return int(member.get("pad", DEFAULT_MARGIN))


def pad_for_network(x: np.ndarray, margin: int, stride: int = STRIDE
                    ) -> tuple[np.ndarray, tuple[int, int]]:
    """Reflect-pad a C×H×W array by ``margin`` on every side, then at the bottom/right up to
    multiples of ``stride``.

    Training crops carry a ``margin``-wide reflected border that the loss ignores, so the
    network never learns to predict there; padding every side by it keeps each image
    border out of that zone (padding only the bottom/right put the top and left borders in
    it, and the network invented thin objects along them).

    Returns:
        (padded array, (top, left)): the original sits at
        ``[:, top:top + H, left:left + W]``.
    """
    _, h, w = x.shape
    ph, pw = (-(h + 2 * margin)) % stride, (-(w + 2 * margin)) % stride
    widths = ((0, 0), (margin, margin + ph), (margin, margin + pw))
    if any(a or b for a, b in widths):
        x = np.pad(x, widths, mode="reflect" if h > 1 and w > 1 else "edge")
    return x, (margin, margin)
