"""From per-pixel probabilities to non-overlapping nucleus instances (marker-controlled watershed).

The chain, each step a small function usable on its own:

1. :func:`foreground_mask`: ``body > body_threshold``.
2. :func:`seed_markers`: seed score ``body - boundary - gap`` (clipped at 0), seeds are its
   connected components above ``seed_threshold`` inside the foreground, small ones dropped.
   The boundary and gap channels cut a touching pair's blob into one core per nucleus. With
   the body channel alone the seed score is a distance transform of the foreground mask,
   scaled to 1 at the deepest point of each foreground component (see :func:`seed_score`).
3. :func:`watershed_instances`: watershed from the seeds on a landscape
   (:attr:`PostprocessParams.watershed_on`) limited to the foreground mask; foreground
   components without a seed become instances of their own; objects under ``min_size`` are
   removed (:func:`remove_small_objects`); holes are filled per object
   (:func:`fill_holes_per_object`); ids are made consecutive.

Everything returns a label image (H×W int32, 0 = background), so instances never overlap.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from competition.targets import CHANNELS

log = logging.getLogger(__name__)

__all__ = [
    "WATERSHED_LANDSCAPES",
    "PostprocessParams",
    "foreground_mask",
    "seed_score",
    "seed_markers",
    "watershed_instances",
    "watershed_raw",
    "finish_instances",
    "fill_holes_per_object",
    "remove_small_objects",
    "relabel_consecutive",
]

WATERSHED_LANDSCAPES = ("body", "seed", "distance")
"""Landscapes the watershed can flood: the negative body probability, the negative seed score,
or the negative distance to the background of the foreground mask."""

_FULL = np.ones((3, 3), dtype=bool)  # 8-connectivity: nuclei are 8-connected objects


@dataclass(frozen=True)
class PostprocessParams:
    """Parameters of :func:`watershed_instances` (the fields tuned by
    :func:`competition.tuning.tune_postprocess`).

    Attributes:
        body_threshold: foreground mask = body probability > this.
        seed_threshold: seeds = seed score > this (score = body - boundary - gap, clipped at
            0; with the body channel alone, the per-component scaled distance transform).
        min_seed_size: seeds (4-connected components) smaller than this many pixels are
            dropped.
        min_size: instances smaller than this many pixels are removed.
        fill_holes: fill the holes of each instance (a hole shared by two instances stays).
        watershed_on: the landscape flooded from the seeds, one of
            :data:`WATERSHED_LANDSCAPES`: ``"seed"`` (the default: negative seed score, whose
            valley along the boundary and gap bands puts the split line between touching
            nuclei), ``"body"`` (negative body probability, nearly flat across a contact) or
            ``"distance"`` (negative distance transform of the foreground mask: shape only).
            On probabilities made from 80 real training labels (targets blurred, noise added)
            ``"seed"`` scored 0.5 to 1.5 points above ``"body"`` and ``"distance"``; tuning
            picks per image type.
        seed_dilation: grow each seed by this many pixels (within the foreground) before the
            watershed; 0 keeps them as they are.
        grow: after the holes are filled, grow each instance into the background by up to
            this many pixels (Euclidean; ``skimage.segmentation.expand_labels``: a pixel goes
            to the nearest instance, never to two, and instances never grow into each
            other); 0 keeps the outlines. A number, not only whole pixels: counted in the
            network's pixels (``size_units = "network"``) it is divided by each image's resize
            factor (:meth:`at_scale`). On condition-out
            fold 0 the stained images' annotated nuclei are larger than the network's (the
            median matched object has 0.88 of its true area; fluorescence 1.04).
    """

    body_threshold: float = 0.5
    seed_threshold: float = 0.5
    min_seed_size: int = 8
    min_size: int = 16
    fill_holes: bool = True
    watershed_on: str = "seed"
    seed_dilation: int = 0
    grow: float = 0.0

    def __post_init__(self) -> None:
        for name, hi, number, bounds in (("body_threshold", 1.0, "a number in [0, 1]", "in [0, 1]"),
                                         ("seed_threshold", 1.0, "a number in [0, 1]", "in [0, 1]"),
                                         ("grow", math.inf, "a number of pixels >= 0", "a finite number >= 0")):
            value = getattr(self, name)
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
                raise ValueError(f"{name} must be {number}, got {value!r}")
            if not (math.isfinite(float(value)) and 0.0 <= float(value) <= hi):
                raise ValueError(f"{name} must be {bounds}, got {value!r}")
            object.__setattr__(self, name, float(value))
        for name in ("min_seed_size", "min_size", "seed_dilation"):
            value = getattr(self, name)
            whole = isinstance(value, (int, np.integer)) or (
                isinstance(value, (float, np.floating)) and float(value).is_integer()
            )
            if isinstance(value, (bool, np.bool_)) or not whole or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
            object.__setattr__(self, name, int(value))
        if not isinstance(self.fill_holes, (bool, np.bool_)):
            raise ValueError(f"fill_holes must be true or false, got {self.fill_holes!r}")
        object.__setattr__(self, "fill_holes", bool(self.fill_holes))
        if self.watershed_on not in WATERSHED_LANDSCAPES:
            raise ValueError(
                f"watershed_on must be one of {list(WATERSHED_LANDSCAPES)}, got {self.watershed_on!r}"
            )

    def at_scale(self, factor: float) -> PostprocessParams:
        """These parameters, counted in the pixels of a network that saw the image resized by
        ``factor``, for its probabilities at the image's own size: the areas
        (``min_seed_size``, ``min_size``) divided by ``factor`` squared and ``seed_dilation``
        by ``factor``, rounded; ``grow`` divided by ``factor``, not rounded. Factor 1 returns
        the parameters themselves.

        Raises:
            ValueError: a factor that is not a positive finite number.
        """
        factor = float(factor)
        if not math.isfinite(factor) or factor <= 0:
            raise ValueError(f"a resize factor must be a positive number, got {factor!r}")
        if factor == 1.0:
            return self
        return dataclasses.replace(self, min_seed_size=round(self.min_seed_size / factor ** 2),
                                   min_size=round(self.min_size / factor ** 2),
                                   seed_dilation=round(self.seed_dilation / factor), grow=self.grow / factor)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of the fields, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> PostprocessParams:
        """Build from a mapping (e.g. a ``thresholds.json``); missing keys keep their defaults.

        Raises:
            ValueError: an unknown key (the message lists the valid names) or a bad value.
        """
        valid = cls.field_names()
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ValueError(f"unknown post-processing parameter(s) {unknown}; valid names: {list(valid)}")
        return cls(**dict(d))

    def to_dict(self) -> dict[str, Any]:
        """All fields as a JSON-ready dict (``from_dict(p.to_dict()) == p``)."""
        return dataclasses.asdict(self)


def _split_channels(probs: np.ndarray, channels: Sequence[str]) -> dict[str, np.ndarray]:
    """Name the planes of ``probs``; a C-channel array takes the first C names of ``channels``."""
    probs = np.asarray(probs)
    if probs.ndim == 2:
        probs = probs[None]
    if probs.ndim != 3:
        raise ValueError(f"probs must be C×H×W (or H×W for the body alone), got shape {probs.shape}")
    channels = tuple(channels)
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown:
        raise ValueError(f"unknown channel name(s) {unknown}; valid names: {list(CHANNELS)}")
    if probs.shape[0] > len(channels):
        raise ValueError(
            f"probs has {probs.shape[0]} channels but only {len(channels)} names: {list(channels)}"
        )
    names = channels[: probs.shape[0]]
    if "body" not in names:
        raise ValueError(f"probs needs a 'body' channel; its channels are {list(names)}")
    return {name: probs[i].astype(np.float32, copy=False) for i, name in enumerate(names)}


def foreground_mask(
    probs: np.ndarray, params: PostprocessParams = PostprocessParams(), channels: Sequence[str] = CHANNELS
) -> np.ndarray:
    """The pixels that belong to some nucleus: ``body > params.body_threshold``.

    Args:
        probs: C×H×W probabilities in ``channels`` order (or H×W body probabilities).
        params: only ``body_threshold`` is used.
        channels: the channel names of ``probs`` (its first C names are used).

    Returns:
        H×W bool mask.

    Shapes: probs (C, H, W) float -> mask (H, W) bool.
    """
    return _split_channels(probs, channels)["body"] > params.body_threshold


def seed_score(
    probs: np.ndarray, channels: Sequence[str] = CHANNELS, mask: np.ndarray | None = None
) -> np.ndarray:
    """How much each pixel looks like a nucleus core: high inside, low at edges and contacts.

    With a boundary and/or gap channel: ``clip(body - boundary - gap, 0, 1)`` (a missing
    channel counts as 0). With the body channel alone: the Euclidean distance transform of
    ``mask`` (the foreground), divided by its maximum within each 8-connected foreground
    component, so every component peaks at 1 and a touching pair's neck scores low.

    Args:
        probs: C×H×W probabilities in ``channels`` order (or H×W body probabilities).
        channels: the channel names of ``probs`` (its first C names are used).
        mask: H×W bool foreground; needed with the body channel alone.

    Returns:
        H×W float32 score in [0, 1].

    Shapes: probs (C, H, W) float, mask (H, W) bool -> (H, W) float32.
    """
    planes = _split_channels(probs, channels)
    if "boundary" in planes or "gap" in planes:
        score = planes["body"].copy()
        for name in ("boundary", "gap"):
            if name in planes:
                score -= planes[name]
        return np.clip(score, 0.0, 1.0)
    if mask is None:
        raise ValueError("seed_score needs the foreground mask when probs has the body channel only")
    distance, components, n = _component_distance(mask)
    peak = np.ones(n + 1, dtype=np.float32)
    if n:
        np.maximum.at(peak, components.ravel(), distance.ravel())  # peak >= 1 inside components
    return distance / peak[components]


def _component_distance(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Euclidean distance of each foreground pixel to the nearest background pixel.

    Computed on the bounding box (plus a 1-pixel margin) of each 8-connected component of
    ``mask``, pixels outside the component counting as background, the image edge not (as in
    ``scipy.ndimage.distance_transform_edt`` of the whole mask, which it matches on random
    masks; it could only differ where another component's pixel is nearer than every
    background pixel), and several times faster on sparse images (17 ms instead of 85 ms on
    1024×1024 with 200 nuclei).

    Returns:
        ``(distance, components, n)``: the H×W float32 distance, the H×W int32 label image
        of the components and their number.

    Shapes: mask (H, W) bool -> (H, W) float32, (H, W) int32, int.
    """
    distance = np.zeros(mask.shape, dtype=np.float32)
    components, n = ndi.label(mask, structure=_FULL)
    if n == 0:
        return distance, components, n
    height, width = mask.shape
    for i, box in enumerate(ndi.find_objects(components), start=1):
        rows = slice(max(box[0].start - 1, 0), min(box[0].stop + 1, height))
        cols = slice(max(box[1].start - 1, 0), min(box[1].stop + 1, width))
        inside = components[rows, cols] == i
        if inside.all():  # the component fills the image: measure to the image edge
            d = ndi.distance_transform_edt(np.pad(inside, 1))[1:-1, 1:-1]
        else:  # the image edge is not background, as in the whole-image transform
            d = ndi.distance_transform_edt(inside)
        distance[rows, cols][inside] = d[inside]
    return distance, components, n


def seed_markers(
    probs: np.ndarray,
    params: PostprocessParams = PostprocessParams(),
    channels: Sequence[str] = CHANNELS,
    *,
    mask: np.ndarray | None = None,
) -> np.ndarray:
    """The watershed's seeds: connected components of ``seed_score > seed_threshold``.

    Seeds lie inside the foreground mask; seeds under ``params.min_seed_size`` pixels are
    dropped (sizes by ``np.bincount``); ``params.seed_dilation`` grows them within the mask.

    Args:
        probs: C×H×W probabilities in ``channels`` order (or H×W body probabilities).
        params: ``body_threshold``, ``seed_threshold``, ``min_seed_size``, ``seed_dilation``.
        channels: the channel names of ``probs`` (its first C names are used).
        mask: the foreground mask when already computed (else :func:`foreground_mask`).

    Returns:
        H×W int32 label image of seeds, ids 1..N consecutive.

    Shapes: probs (C, H, W) float -> label (H, W) int32.
    """
    if mask is None:
        mask = foreground_mask(probs, params, channels)
    return _seeds_from_score(seed_score(probs, channels, mask), mask, params)


def _seeds_from_score(score: np.ndarray, mask: np.ndarray, params: PostprocessParams) -> np.ndarray:
    seeds, _ = ndi.label((score > params.seed_threshold) & mask)  # 4-connected: splits more
    seeds = relabel_consecutive(remove_small_objects(seeds, params.min_seed_size))
    if params.seed_dilation > 0 and seeds.any():
        grown = ndi.grey_dilation(seeds, footprint=_disk(params.seed_dilation))
        seeds = np.where((seeds == 0) & mask, grown, seeds).astype(np.int32)
    return seeds


def _disk(radius: int) -> np.ndarray:
    yy, xx = np.mgrid[-radius : radius + 1, -radius : radius + 1]
    return yy * yy + xx * xx <= radius * radius


def _landscape(
    probs: np.ndarray, params: PostprocessParams, channels: Sequence[str], mask: np.ndarray, score: np.ndarray
) -> np.ndarray:
    """The surface the watershed floods (low = flooded first), chosen by ``params.watershed_on``."""
    if params.watershed_on == "body":
        return -_split_channels(probs, channels)["body"]
    if params.watershed_on == "seed":
        return -score
    return -_component_distance(mask)[0]


def watershed_raw(
    probs: np.ndarray, params: PostprocessParams = PostprocessParams(), channels: Sequence[str] = CHANNELS
) -> np.ndarray:
    """The watershed part of :func:`watershed_instances`, before size filter and hole filling.

    Seeds are flooded over the landscape inside the foreground mask (8-connected); each
    foreground component that holds no seed becomes one more instance. Depends only on
    ``body_threshold``, ``seed_threshold``, ``min_seed_size``, ``seed_dilation`` and
    ``watershed_on``; :func:`finish_instances` applies the rest (tuning caches this split).

    Returns:
        H×W int32 label image (ids not necessarily consecutive).

    Shapes: probs (C, H, W) float -> label (H, W) int32.
    """
    mask = foreground_mask(probs, params, channels)
    if not mask.any():
        return np.zeros(mask.shape, dtype=np.int32)
    score = seed_score(probs, channels, mask)
    seeds = _seeds_from_score(score, mask, params)
    n_seeds = int(seeds.max())
    if n_seeds:
        landscape = _landscape(probs, params, channels, mask, score)
        label = watershed(landscape, seeds, mask=mask, connectivity=2)
        label = label.astype(np.int32, copy=False)
    else:
        label = np.zeros(mask.shape, dtype=np.int32)
    orphans, n_orphans = ndi.label(mask & (label == 0), structure=_FULL)
    if n_orphans:
        label = np.where(orphans > 0, orphans + n_seeds, label).astype(np.int32)
    return label


def finish_instances(label: np.ndarray, params: PostprocessParams = PostprocessParams()) -> np.ndarray:
    """The end of :func:`watershed_instances`: remove small objects, fill holes, grow the
    instances by ``params.grow`` pixels into the background, relabel.

    Small objects go first, so a speck inside a nucleus's hole does not stop the fill.

    Shapes: label (H, W) int -> label (H, W) int32, ids 1..N.
    """
    label = remove_small_objects(label, params.min_size)
    if params.fill_holes:
        label = fill_holes_per_object(label)
    if params.grow >= 1.0:  # under one pixel no background pixel is near enough to change
        from skimage.segmentation import expand_labels

        label = expand_labels(label, distance=params.grow)
    return relabel_consecutive(label)


def watershed_instances(
    probs: np.ndarray, params: PostprocessParams = PostprocessParams(), channels: Sequence[str] = CHANNELS
) -> np.ndarray:
    """Turn a network's probabilities into nucleus instances.

    Seeds (:func:`seed_markers`) are flooded by a marker-controlled watershed
    (``skimage.segmentation.watershed``, 8-connected) over the landscape chosen by
    ``params.watershed_on``, limited to the foreground mask (:func:`foreground_mask`). A
    foreground component that holds no seed is kept as one instance of its own, so nuclei
    without a seed are not lost. Then instances under ``params.min_size`` pixels are removed,
    holes are filled per instance (a hole between two nuclei stays background) and ids are
    made consecutive.

    Channels: ``probs`` holds the first C names of ``channels`` (default :data:`CHANNELS`:
    body, boundary, gap). With 2 channels (body, boundary) the gap term is 0. With the body
    alone (1 channel, or an H×W array) the seeds come from the distance transform of the
    foreground mask (see :func:`seed_score`), which splits touching nuclei only where their
    union has a neck.

    Args:
        probs: C×H×W float probabilities in [0, 1].
        params: the thresholds; see :class:`PostprocessParams`.
        channels: the channel names of ``probs``.

    Returns:
        H×W int32 label image, 0 = background, instances 1..N (non-overlapping by
        construction).

    Shapes: probs (C, H, W) float -> label (H, W) int32.
    """
    return finish_instances(watershed_raw(probs, params, channels), params)


def remove_small_objects(label: np.ndarray, min_size: int) -> np.ndarray:
    """Set objects with fewer than ``min_size`` pixels to background (ids are kept).

    Sizes come from ``np.bincount`` over the label image (one pass; an object split into
    several pieces counts all its pixels).

    Args:
        label: H×W non-negative integer label image.
        min_size: smallest size kept, in pixels; 0 or 1 keeps everything.

    Returns:
        H×W int32 label image.

    Shapes: label (H, W) int -> label (H, W) int32.
    """
    label = np.asarray(label)
    if min_size <= 1 or label.size == 0:
        return label.astype(np.int32, copy=False)
    sizes = np.bincount(label.ravel())
    small = sizes < min_size
    small[0] = False
    if not small.any():
        return label.astype(np.int32, copy=False)
    return np.where(small[label], 0, label).astype(np.int32)


def fill_holes_per_object(label: np.ndarray) -> np.ndarray:
    """Fill each object's holes with its own id; a hole bordered by two objects stays.

    A hole is a 4-connected background region that does not touch the image edge; it is
    filled when all its (4-)neighbouring object pixels belong to one object. One labelling of
    the background and one ``np.unique`` over neighbouring pairs, whatever the number of
    objects.

    Args:
        label: H×W non-negative integer label image.

    Returns:
        H×W int32 label image.

    Shapes: label (H, W) int -> label (H, W) int32.
    """
    label = np.asarray(label).astype(np.int32, copy=False)
    if label.size == 0 or not label.any():
        return label
    holes, n_holes = ndi.label(label == 0)  # 4-connected: the complement of 8-connected objects
    if n_holes == 0:
        return label
    # Background regions touching the image edge are not holes.
    edge = np.zeros(n_holes + 1, dtype=bool)
    for side in (holes[0], holes[-1], holes[:, 0], holes[:, -1]):
        edge[side] = True
    # Codes of the pairs (background region, 4-neighbouring object id), both directions of both axes.
    base = int(label.max()) + 1
    neighbours = (
        (holes[:-1], label[1:]),
        (holes[1:], label[:-1]),
        (holes[:, :-1], label[:, 1:]),
        (holes[:, 1:], label[:, :-1]),
    )
    codes = []
    for region_side, object_side in neighbours:
        touch = (region_side > 0) & (object_side > 0)
        codes.append(region_side[touch].astype(np.int64) * base + object_side[touch])
    codes = np.unique(np.concatenate(codes))
    region, owner = codes // base, codes % base
    n_owners = np.bincount(region, minlength=n_holes + 1)
    fill = np.zeros(n_holes + 1, dtype=np.int32)
    single = (n_owners[region] == 1) & ~edge[region]
    fill[region[single]] = owner[single]
    fill[0] = 0
    return np.where(label == 0, fill[holes], label).astype(np.int32)


def relabel_consecutive(label: np.ndarray) -> np.ndarray:
    """Renumber the objects 1..N in increasing order of their old ids (0 stays 0).

    Shapes: label (H, W) int -> label (H, W) int32.
    """
    label = np.asarray(label)
    if label.size == 0:
        return label.astype(np.int32)
    present = np.bincount(label.ravel()) > 0
    present[0] = False
    n = int(present.sum())
    if n == len(present) - 1:  # already 1..N
        return label.astype(np.int32, copy=False)
    lut = np.zeros(len(present), dtype=np.int32)
    lut[present] = np.arange(1, n + 1, dtype=np.int32)
    return lut[label]
