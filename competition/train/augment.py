"""Augmentation pipelines (albumentations 2.0.8), one table for the whole project.

:data:`PIPELINES` maps an augmentation strength (the recipe's ``augment``) to a factory of
the transform list; :data:`HISTOLOGY_COLOUR` adds colour jitter that only histology
(stained) images get. Geometric transforms move the *label* image (nearest interpolation)
and the loss-region mask; targets are computed afterwards from the moved label.

albumentations' own seeding is not used (its worker seeding is broken in 2.0.8): every
call gets its generators from :func:`augment`'s ``rng``, so a sample is a pure function of
(seed, epoch, index).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

import albumentations as A
import cv2
import numpy as np

log = logging.getLogger(__name__)

_REFLECT = cv2.BORDER_REFLECT_101


def _none() -> list:
    return []


def _light() -> list:
    return [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.3),
    ]


def _strong() -> list:
    return [
        A.HorizontalFlip(p=0.5),
        A.VerticalFlip(p=0.5),
        A.RandomRotate90(p=0.5),
        A.Affine(scale=(0.75, 1.33), rotate=(-30, 30), shear=(-5, 5),
                 interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                 border_mode=_REFLECT, p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        A.RandomGamma(gamma_limit=(80, 125), p=0.3),
        A.OneOf([
            A.GaussianBlur(blur_limit=(3, 5), p=1.0),
            A.GaussNoise(std_range=(0.01, 0.05), p=1.0),
        ], p=0.3),
    ]


def _colour_light() -> list:
    return [A.HueSaturationValue(hue_shift_limit=8, sat_shift_limit=15, val_shift_limit=8,
                                 p=0.3)]


def _colour_strong() -> list:
    return [
        A.OneOf([
            A.HueSaturationValue(hue_shift_limit=20, sat_shift_limit=30, val_shift_limit=20,
                                 p=1.0),
            A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.3, hue=0.05, p=1.0),
        ], p=0.6),
    ]


#: strength -> factory of the transform list for every image type.
PIPELINES: dict[str, Callable[[], list]] = {
    "none": _none,
    "light": _light,
    "strong": _strong,
}
#: strength -> factory of the extra colour transforms for histology images.
HISTOLOGY_COLOUR: dict[str, Callable[[], list]] = {
    "none": _none,
    "light": _colour_light,
    "strong": _colour_strong,
}


def build_pipeline(strength: str, image_type: str | None = None) -> A.Compose:
    """The Compose for one strength; histology images also get the colour transforms.

    Args:
        strength: a key of :data:`PIPELINES`.
        image_type: the sample's image type; ``"histology"`` adds :data:`HISTOLOGY_COLOUR`.
    """
    if strength not in PIPELINES:
        raise KeyError(f"unknown augmentation {strength!r}; valid: {', '.join(PIPELINES)}")
    transforms = PIPELINES[strength]()
    if image_type == "histology":
        transforms += HISTOLOGY_COLOUR[strength]()
    return A.Compose(transforms, seed=0)


def augment(
    pipeline: A.Compose, image: np.ndarray, masks: list[np.ndarray], rng: np.random.Generator
) -> tuple[np.ndarray, list[np.ndarray]]:
    """Apply ``pipeline`` to an image and its masks with randomness drawn from ``rng``.

    Args:
        pipeline: from :func:`build_pipeline`.
        image: H×W×3 uint8.
        masks: H×W arrays moved with the image (nearest): the int32 ``label`` and uint8
            loss-region masks. int32 labels go through as int32.
        rng: the per-sample generator.

    Returns:
        (image, masks) with the same dtypes and H×W shapes.

    Shapes:
        image H×W×3 uint8 -> H×W×3 uint8; each mask H×W -> H×W.
    """
    if not pipeline.transforms:
        return image, masks
    seed = int(rng.integers(2**63 - 1))
    pipeline.set_random_state(np.random.default_rng(seed), random.Random(seed))
    dtypes = [m.dtype for m in masks]
    # cv2 warps cannot handle int32; float32 holds label ids exactly up to 2**24.
    moved = [m.astype(np.float32) if m.dtype == np.int32 else m for m in masks]
    out = pipeline(image=image, masks=moved)
    out_masks = [np.asarray(m).astype(d, copy=False) for m, d in zip(out["masks"], dtypes)]
    return out["image"], out_masks
