"""Nucleus-size normalisation: show the network every image at one nucleus diameter.

Nuclei in stage1_train range from about 8 to 94 px across (median equivalent diameter per
image; 256×256 fluorescence ~14 px, 360×360 fluorescence ~47 px). A network trained on
small crops sees a whole small nucleus but only part of a big one, and it draws the border
of an 8 px nucleus to within a pixel or two, which costs IoU at the high thresholds. So a
member with ``nucleus_diameter = D`` is trained and run on images resized by
``s = D / d``, where ``d`` is the image's median nucleus diameter:

- training: ``d`` from the true label, times a random jitter (:func:`jitter_scale`), so the
  network tolerates an estimate that is off by that much;
- validation (checkpoint choice, out-of-fold maps for tuning): ``d`` from the true label;
- prediction: ``d`` from a first pass at the native scale (:func:`estimate_diameter` on its
  instances), then the image is predicted again at ``s`` and the probabilities are resized
  back to the original grid, so post-processing and encoding never see the scaled image.

Measured once on fold 0 (133 images) with the native-scale stage-1 cpu model, true ``d`` and
its tuned post-processing, before any training at one size: native 0.399, D = 24: 0.445,
D = 32: 0.448. ``make holdout`` measures the whole two-pass pipeline.

numpy and OpenCV only.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

#: the smallest and largest resize factor: beyond these the first-pass estimate is too
#: unreliable and the image too large or too small for the network.
MIN_SCALE = 0.25
MAX_SCALE = 3.0
#: largest side of a rescaled image (memory and time stay bounded on huge images).
MAX_SIDE = 3072


def median_diameter(label: np.ndarray, min_area: int = 1) -> float | None:
    """Equivalent diameter ``2·sqrt(area/π)`` of the median object area of a label image.

    Args:
        label: H×W integer label image, 0 = background.
        min_area: objects smaller than this are ignored (specks from a first pass).

    Returns:
        The diameter in pixels, or None when the image holds no object.
    """
    return diameter_of_areas(object_areas(label), min_area)


def object_areas(label: np.ndarray, cut_edges: tuple[bool, bool, bool, bool] = (False,) * 4) -> np.ndarray:
    """The pixel areas of a label image's objects (0 = background).

    Args:
        cut_edges: which of the top, bottom, left, right edges cut the objects (the label is
            a window of a larger image): objects touching those edges are left out, unless
            that would leave none.
    """
    label = np.asarray(label)
    areas = np.bincount(label.ravel().astype(np.int64))
    edges = [e for e, cut in zip((label[0], label[-1], label[:, 0], label[:, -1]), cut_edges) if cut]
    present = np.flatnonzero(areas[1:]) + 1
    if edges and present.size:
        cut = np.unique(np.concatenate(edges))
        whole = np.setdiff1d(present, cut)
        if whole.size:
            present = whole
    return areas[present]


def diameter_of_areas(areas: np.ndarray, min_area: int = 1) -> float | None:
    """Equivalent diameter ``2·sqrt(area/π)`` of the median of ``areas`` (those of at least
    ``min_area``), None when none is left."""
    areas = np.asarray(areas)
    areas = areas[areas >= max(1, int(min_area))]
    if areas.size == 0:
        return None
    return 2.0 * math.sqrt(float(np.median(areas)) / math.pi)


def scale_factor(diameter: float | None, target: float, *, lo: float = MIN_SCALE,
                 hi: float = MAX_SCALE) -> float:
    """``target / diameter`` clipped to [lo, hi]; 1 when the diameter is unknown or target 0."""
    if not target or diameter is None or not diameter > 0:
        return 1.0
    return float(np.clip(target / diameter, lo, hi))


def label_scale(label: np.ndarray, target: float) -> float:
    """The resize factor that brings a labelled image's median nucleus to ``target`` px."""
    return scale_factor(median_diameter(label), target)


def jitter_scale(rng: np.random.Generator, jitter: float) -> float:
    """A log-uniform factor in [1/jitter, jitter] (1 when ``jitter`` <= 1)."""
    if jitter <= 1.0:
        return 1.0
    return float(math.exp(rng.uniform(-math.log(jitter), math.log(jitter))))


def scaled_shape(height: int, width: int, s: float) -> tuple[int, int]:
    """The (height, width) of an image resized by ``s``, at least 1 px, longest side capped
    at :data:`MAX_SIDE`."""
    s = min(s, MAX_SIDE / max(height, width)) if max(height, width) * s > MAX_SIDE else s
    return max(1, round(height * s)), max(1, round(width * s))


def resize_image(image: np.ndarray, s: float) -> np.ndarray:
    """Resize an H×W×3 uint8 image by ``s`` (area averaging down, linear up); ``s == 1``
    returns the image itself."""
    if s == 1.0:
        return image
    h, w = image.shape[:2]
    nh, nw = scaled_shape(h, w, s)
    if (nh, nw) == (h, w):
        return image
    interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
    return cv2.resize(image, (nw, nh), interpolation=interp)


def resize_label(label: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize an H×W label image to ``height`` × ``width`` by nearest neighbour, pixel centres
    aligned as :func:`resize_image` aligns them."""
    rows = np.minimum(((np.arange(height) + 0.5) * label.shape[0] / height).astype(np.intp), label.shape[0] - 1)
    cols = np.minimum(((np.arange(width) + 0.5) * label.shape[1] / width).astype(np.intp), label.shape[1] - 1)
    return label[np.ix_(rows, cols)]


def resize_probs(probs: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize C×h×w probabilities (or logits) to C×height×width, bilinear per channel.

    Shapes: (C, h, w) float32 -> (C, height, width) float32.
    """
    probs = np.asarray(probs, dtype=np.float32)
    if probs.shape[1:] == (height, width):
        return probs
    interp = cv2.INTER_LINEAR if height >= probs.shape[1] else cv2.INTER_AREA
    return np.stack([cv2.resize(c, (width, height), interpolation=interp) for c in probs])


def scaled_window(image: np.ndarray, label: np.ndarray, s: float, top: int, left: int,
                  size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cut a ``size``×``size`` window at (top, left) of the image resized by ``s``, without
    resizing the whole image: one inverse affine warp per array, reflecting past the edges.

    Pixel (y, x) of the window samples the original image at ((top + y + 0.5) / s - 0.5,
    (left + x + 0.5) / s - 0.5), the same pixel-centre convention as ``cv2.resize``.

    Returns:
        (image window uint8 (linear), label window int32 (nearest), inside: uint8 1 where the
        pixel lies in the image).

    Shapes: image H×W×3, label H×W -> size×size×3, size×size, size×size.
    """
    h, w = label.shape
    inv = 1.0 / s
    m = np.array([[inv, 0.0, (left + 0.5) * inv - 0.5],
                  [0.0, inv, (top + 0.5) * inv - 0.5]], dtype=np.float64)
    flags = cv2.WARP_INVERSE_MAP
    out = (size, size)
    img = cv2.warpAffine(image, m, out, flags=flags | cv2.INTER_LINEAR,
                         borderMode=cv2.BORDER_REFLECT_101)
    lab = cv2.warpAffine(label.astype(np.float32), m, out, flags=flags | cv2.INTER_NEAREST,
                         borderMode=cv2.BORDER_REFLECT_101)
    inside = cv2.warpAffine(np.ones((h, w), np.uint8), m, out, flags=flags | cv2.INTER_NEAREST,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return img, lab.astype(np.int32), inside
