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


def _dihedral() -> list:
    """The 8 symmetries of the square, each equally likely."""
    return [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5), A.RandomRotate90(p=0.5)]


def _blur_or_noise(max_noise_std: float, p: float = 0.3):
    return A.OneOf([A.GaussianBlur(blur_limit=(3, 5), p=1.0),
                    A.GaussNoise(std_range=(0.01, max_noise_std), p=1.0)], p=p)


def _none() -> list:
    return []


def _light() -> list:
    return [
        *_dihedral(),
        A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=0.3),
    ]


def _strong() -> list:
    return [
        *_dihedral(),
        A.Affine(scale=(0.75, 1.33), rotate=(-30, 30), shear=(-5, 5),
                 interpolation=cv2.INTER_LINEAR, mask_interpolation=cv2.INTER_NEAREST,
                 border_mode=_REFLECT, p=0.5),
        A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.2, p=0.5),
        A.RandomGamma(gamma_limit=(80, 125), p=0.3),
        _blur_or_noise(0.05),
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


class StainJitter(A.ImageOnlyTransform):
    """Haematoxylin-eosin colour jitter: each HED channel (``skimage.color.rgb2hed``) scaled
    by a factor in ``[1 - alpha, 1 + alpha]`` and shifted by up to ``beta``, back to RGB.

    Shapes: image H×W×3 uint8 -> H×W×3 uint8.
    """

    def __init__(self, alpha: float = 0.3, beta: float = 0.02, p: float = 0.5) -> None:
        super().__init__(p=p)
        self.alpha, self.beta = float(alpha), float(beta)

    def get_params(self) -> dict:
        r = self.random_generator
        return {"scale": r.uniform(1 - self.alpha, 1 + self.alpha, 3),
                "shift": r.uniform(-self.beta, self.beta, 3)}

    def apply(self, img: np.ndarray, scale=None, shift=None, **params) -> np.ndarray:
        from skimage.color import hed2rgb, rgb2hed

        hed = rgb2hed(img[..., :3])
        rgb = hed2rgb(hed * scale + shift)
        return np.clip(rgb * 255.0 + 0.5, 0, 255).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("alpha", "beta")


def _bright_level(img: np.ndarray, gamma: float) -> np.ndarray:
    """The crop's grey level stretched between its 1st and 99.5th percentiles to [0, 1]
    (1: brightest, the nuclei of a fluorescence crop), raised to ``gamma``.

    Shapes: img H×W×3 uint8 -> H×W float32.
    """
    grey = img[..., :3].astype(np.float32).mean(axis=2)
    lo, hi = np.percentile(grey, (1, 99.5))
    return np.clip((grey - lo) / max(hi - lo, 1.0), 0, 1) ** gamma


class StainRecolour(A.ImageOnlyTransform):
    """A fluorescence crop painted as stained brightfield: its grey level (bright nuclei)
    blends a light background colour into a dark nucleus colour, both drawn around
    haematoxylin-purple on eosin-pink, plus low-frequency eosin texture.

    The result is dark-on-light: the dataset re-decides the inversion after augmentation,
    so the network sees it as it sees real stained images.

    Shapes: image H×W×3 uint8 -> H×W×3 uint8.
    """

    def get_params(self) -> dict:
        r = self.random_generator
        background = np.array([235, 205, 225]) + r.uniform(-25, 20, 3)
        nucleus = np.array([90, 60, 140]) + r.uniform(-50, 50, 3)
        return {"background": background, "nucleus": nucleus,
                "texture": r.uniform(0.0, 0.25), "texture_seed": int(r.integers(2**31)),
                "gamma": r.uniform(0.6, 1.4)}

    def apply(self, img: np.ndarray, background=None, nucleus=None, texture=0.0,
              texture_seed=0, gamma=1.0, **params) -> np.ndarray:
        g = _bright_level(img, gamma)
        if texture > 0:
            noise = np.random.default_rng(texture_seed).random(
                (max(1, g.shape[0] // 16), max(1, g.shape[1] // 16))).astype(np.float32)
            noise = cv2.resize(noise, (g.shape[1], g.shape[0]), interpolation=cv2.INTER_CUBIC)
            g = np.clip(g + texture * (noise - 0.5) * (1 - g), 0, 1)
        out = background[None, None] * (1 - g[..., None]) + nucleus[None, None] * g[..., None]
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ()


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], cell: int) -> np.ndarray:
    """Uniform noise on a grid of ``cell`` px, cubic-resized to ``shape``: values about [0, 1]."""
    h, w = shape
    coarse = rng.random((max(2, h // cell), max(2, w // cell))).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


class TissueRender(A.ImageOnlyTransform):
    """A fluorescence crop rendered as H&E-stained tissue by the Beer-Lambert law.

    The crop's stretched grey level (bright nuclei) becomes haematoxylin density, with a
    chromatin texture; eosin fills low-frequency "cytoplasm" patches that cover a random
    share of the crop (always around the nuclei), with a little haematoxylin of its own;
    light from a white-to-yellowish illuminant passes both: ``I = I0 * 10 ** -(H vH + E vE)``,
    the stain vectors jittered. Unlike :class:`StainRecolour` (two colours blended), nuclei
    here can sit on dark pink tissue with little contrast, as in the test set's H&E tissue.

    The result is dark-on-light unless tissue covers most of the crop (as in dense real
    tissue); the dataset re-decides the inversion after augmentation, as prediction would.

    ``faint`` widens the draws toward the test set's dense H&E tissue, where nuclei sit in
    purplish, textured cytoplasm with little contrast: the nucleus's haematoxylin from 0.2
    (0.45 otherwise), the tissue's up to 0.6 (0.3) with a cellular texture of its own
    (smooth noise at 12 px, amplitude drawn in [0, 0.6]), and eosin up to 0.9 (0.55). Without
    it no extra number is drawn, so crops are those of the transform before it existed.

    With probability ``red_cells`` the crop also gets red blood cells, painted off the
    nuclei as dense discs without haematoxylin that absorb green and blue (red, not eosin's
    pink), some in clumps, some with a pale centre, and left as background in the label:
    red cells are the classic false positive of H&E tissue, and training shows none. At 0
    (the default) no extra number is drawn, so crops are those of the transform without them.

    Shapes: image H×W×3 uint8 -> H×W×3 uint8.
    """

    def __init__(self, red_cells: float = 0.0, faint: bool = False, p: float = 0.5) -> None:
        super().__init__(p=p)
        if not 0 <= red_cells <= 1:
            raise ValueError(f"red_cells is a probability in [0, 1], got {red_cells}")
        self.red_cells = float(red_cells)
        self.faint = bool(faint)

    def get_params(self) -> dict:
        r = self.random_generator
        low_h, top_h, top_e = (0.2, 0.6, 0.9) if self.faint else (0.45, 0.3, 0.55)
        params = {"light": np.array([246.0, 243.0, 236.0]) + r.uniform(-18, 8, 3) * [0.3, 0.5, 1.0],
                  "h_nucleus": r.uniform(low_h, 1.5), "h_tissue": r.uniform(0.03, top_h),
                  "e_tissue": r.uniform(0.05, top_e), "cover": r.uniform(0.0, 1.0),
                  "chromatin": r.uniform(0.0, 0.5), "gamma": r.uniform(0.6, 1.4),
                  "vectors": r.normal(0.0, 0.05, (2, 3)), "seed": int(r.integers(2**31))}
        if self.red_cells > 0:
            params["n_red"] = int(r.integers(1, 13)) if r.random() < self.red_cells else 0
        if self.faint:
            params["texture"] = r.uniform(0.0, 0.6)
        return params

    def apply(self, img: np.ndarray, light=None, h_nucleus=1.0, h_tissue=0.0, e_tissue=0.3,
              cover=0.5, chromatin=0.0, gamma=1.0, vectors=None, seed=0, n_red=0, texture=0.0,
              **params) -> np.ndarray:
        g = _bright_level(img, gamma)
        rng = np.random.default_rng(seed)
        shape = g.shape
        field = _smooth_noise(rng, shape, 48)
        tissue = np.clip((field - np.quantile(field, 1.0 - cover)) / 0.08 + 0.5, 0, 1)
        around = cv2.GaussianBlur(g, (0, 0), 6.0)
        tissue = np.maximum(tissue, np.clip(3.0 * around, 0, 1))
        fine = _smooth_noise(rng, shape, 3)
        chrom = 1.0 + chromatin * (fine - 0.5) * 2.0
        if texture:  # faint only: the plain rendering draws no extra number and stays as it was
            tissue = tissue * (1.0 + texture * (_smooth_noise(rng, shape, 12) - 0.5) * 2.0)
        h = h_tissue * tissue + h_nucleus * g * chrom
        e = e_tissue * tissue * (0.8 + 0.4 * _smooth_noise(rng, shape, 8))
        from skimage.color import rgb_from_hed  # Ruifrok-Johnston: haematoxylin, eosin, DAB rows

        v = np.abs(rgb_from_hed[:2] + vectors)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        od = h[..., None] * v[0] + e[..., None] * v[1]
        if n_red:  # red cells absorb blue as well as green: red-orange, not eosin's pink
            red = red_cell_density(rng, around, n_red) * np.clip(1.0 - 2.5 * g, 0, 1)  # not on nuclei
            v_red = np.abs(np.array([0.03, 0.62, 0.78]) + rng.normal(0.0, 0.06, 3))
            od = od + red[..., None] * (v_red / np.linalg.norm(v_red))
        out = light[None, None] * np.power(10.0, -od)
        return np.clip(out + 0.5, 0, 255).astype(np.uint8)

    def get_transform_init_args_names(self) -> tuple[str, ...]:
        return ("red_cells", "faint")


def red_cell_density(rng: np.random.Generator, nuclei: np.ndarray, n: int) -> np.ndarray:
    """Optical density of ``n`` red blood cells placed off the nuclei (times the red-cell stain
    vector of :class:`TissueRender`).

    Each cell is an ellipse of 4-12 px mean radius (the training crops' nuclei are about
    28 px across, ±60%), axis ratio up to 1.3, density 0.5-1.3 with a soft edge and, for
    some, a paler centre (the biconcave disc); half of them are put against the cell before
    (clumps, as in vessels and haemorrhage). A centre is drawn up to 20 times until it lies
    where ``nuclei`` (the blurred nucleus level, 0..1) is under 0.15; cells that find no
    such place are left out.

    Shapes: nuclei H×W float -> H×W float32.
    """
    h, w = nuclei.shape
    out = np.zeros((h, w), np.float32)
    prev = None
    for _ in range(n):
        radius = rng.uniform(4.0, 12.0)
        ratio, angle = rng.uniform(1.0, 1.3), rng.uniform(0, np.pi)
        density, pallor = rng.uniform(0.5, 1.3), rng.uniform(0.0, 0.6)
        clump = prev is not None and rng.random() < 0.5
        for _try in range(20):
            if clump:
                turn = rng.uniform(0, 2 * np.pi)
                cy = prev[0] + 1.8 * radius * np.sin(turn)
                cx = prev[1] + 1.8 * radius * np.cos(turn)
            else:
                cy, cx = rng.uniform(0, h), rng.uniform(0, w)
            iy, ix = int(np.clip(cy, 0, h - 1)), int(np.clip(cx, 0, w - 1))
            if nuclei[iy, ix] < 0.15:
                break
        else:
            continue
        # the cell lies within its long semi-axis, radius * sqrt(ratio), of its centre
        # (a clumped cell's centre may lie off the crop: then only its part inside is drawn)
        reach = int(np.ceil(radius * np.sqrt(ratio))) + 1
        y0, y1 = max(0, int(np.floor(cy)) - reach), min(h, int(np.floor(cy)) + reach + 1)
        x0, x1 = max(0, int(np.floor(cx)) - reach), min(w, int(np.floor(cx)) + reach + 1)
        if y0 < y1 and x0 < x1:
            yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
            dy, dx = yy - cy, xx - cx
            u = (dy * np.cos(angle) + dx * np.sin(angle)) / (radius * np.sqrt(ratio))
            v = (-dy * np.sin(angle) + dx * np.cos(angle)) * np.sqrt(ratio) / radius
            r2 = u * u + v * v
            disc = np.clip((1.0 - np.sqrt(r2)) / 0.15, 0, 1)  # soft edge, about 15% of the radius
            out[y0:y1, x0:x1] += density * disc * (1.0 - pallor * np.exp(-r2 / 0.18))
        prev = (cy, cx)
    return out


def _photometric_invariant() -> list:
    """What should not matter for finding nuclei: channel order, colour, gamma, contrast,
    blur, noise."""
    return [
        A.ChannelShuffle(p=0.3),
        A.ToGray(p=0.15),
        A.RandomBrightnessContrast(brightness_limit=0.25, contrast_limit=0.3, p=0.5),
        A.RandomGamma(gamma_limit=(60, 160), p=0.4),
        _blur_or_noise(0.06),
    ]


def _small_affine(p: float, **scaling) -> A.Affine:
    """Small rotations and shears (labels moved nearest, borders reflected), plus ``scaling``
    (Affine's ``scale``/``keep_ratio``) where given."""
    return A.Affine(**scaling, rotate=(-20, 20), shear=(-5, 5), interpolation=cv2.INTER_LINEAR,
                    mask_interpolation=cv2.INTER_NEAREST, border_mode=_REFLECT, p=p)


def _invariant() -> list:
    """Geometry, scale aside (the member's nucleus-size jitter does scale), and
    :func:`_photometric_invariant`."""
    return [
        *_dihedral(),
        _small_affine(p=0.3),
        *_photometric_invariant(),
    ]


def _tissue() -> list:
    """:func:`_invariant`, its affine also stretching x and y apart (elongated nuclei, as in
    the spindle-shaped nuclei of stained tissue)."""
    return [
        *_dihedral(),
        _small_affine(p=0.4, scale={"x": (0.7, 1.4), "y": (0.7, 1.4)}, keep_ratio=False),
        *_photometric_invariant(),
    ]


def _colour_invariant() -> list:
    return [StainJitter(alpha=0.3, beta=0.03, p=0.6),
            A.HueSaturationValue(hue_shift_limit=20, sat_shift_limit=30, val_shift_limit=15,
                                 p=0.4)]


def _recolour_invariant() -> list:
    return [StainRecolour(p=0.25)]


def _recolour_tissue() -> list:
    return [A.OneOf([StainRecolour(p=1.0), TissueRender(p=1.0)], p=0.35)]


def _recolour_tissue_red() -> list:
    """:func:`_recolour_tissue`, the rendered H&E crops with red blood cells in 60% of them."""
    return [A.OneOf([StainRecolour(p=1.0), TissueRender(red_cells=0.6, p=1.0)], p=0.35)]


def _recolour_tissue_faint() -> list:
    """:func:`_recolour_tissue`, the rendered H&E crops drawn toward dense, low-contrast
    tissue (``TissueRender(faint=True)``)."""
    return [A.OneOf([StainRecolour(p=1.0), TissueRender(faint=True, p=1.0)], p=0.35)]


#: strength -> factory of the transform list for every image type.
PIPELINES: dict[str, Callable[[], list]] = {
    "none": _none,
    "light": _light,
    "strong": _strong,
    "invariant": _invariant,
    "tissue": _tissue,
    "tissue-red": _tissue,
    "tissue-faint": _tissue,
}
#: strength -> factory of the extra colour transforms for histology images.
HISTOLOGY_COLOUR: dict[str, Callable[[], list]] = {
    "none": _none,
    "light": _colour_light,
    "strong": _colour_strong,
    "invariant": _colour_invariant,
    "tissue": _colour_invariant,
    "tissue-red": _colour_invariant,
    "tissue-faint": _colour_invariant,
}
#: strength -> factory of the transforms that only fluorescence images get: stain-like
#: recolouring (applied before the common list, so it is jittered like a real stain).
FLUORESCENCE_COLOUR: dict[str, Callable[[], list]] = {
    "none": _none,
    "light": _none,
    "strong": _none,
    "invariant": _recolour_invariant,
    "tissue": _recolour_tissue,
    "tissue-red": _recolour_tissue_red,
    "tissue-faint": _recolour_tissue_faint,
}


def build_pipeline(strength: str, image_type: str | None = None) -> A.Compose:
    """The Compose for one strength; histology images also get the colour transforms,
    fluorescence images the recolouring of :data:`FLUORESCENCE_COLOUR`.

    Args:
        strength: a key of :data:`PIPELINES`.
        image_type: the sample's image type; ``"histology"`` adds :data:`HISTOLOGY_COLOUR`.
    """
    if strength not in PIPELINES:
        raise KeyError(f"unknown augmentation {strength!r}; valid: {', '.join(PIPELINES)}")
    transforms = PIPELINES[strength]()
    if image_type == "histology":
        transforms += HISTOLOGY_COLOUR[strength]()
    elif image_type == "fluorescence":
        transforms = FLUORESCENCE_COLOUR[strength]() + transforms
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


def paste_nuclei(image: np.ndarray, label: np.ndarray, inside: np.ndarray, rng: np.random.Generator,
                 *, max_copies: int = 6, touching: float = 0.5) -> tuple[np.ndarray, np.ndarray]:
    """Copies of a window's own nuclei pasted into it (the first-place team's "nuclei copied
    into crops"; touching copies teach the borders between nuclei).

    Up to ``max_copies`` nuclei that lie wholly inside the window and its image (``inside``)
    are copied, pixels and shape, to random places wholly inside too; with probability
    ``touching`` a copy is put against a random existing nucleus (centres 0.9 of two of the
    copy's mean radii apart, in a random direction), else anywhere. A copy covers what lies under it: it
    gets a new id, and the pixels it covers are taken from the nuclei there (an object left
    with no pixel disappears). Same window scale, so the copies have the window's nucleus
    size and look.

    Args:
        image: S×S×3 uint8.
        label: S×S int32 instance label (0 background).
        inside: S×S uint8, 1 where the window holds image pixels (not padding).
        rng: the per-sample generator.

    Returns:
        (image, label), new arrays; the inputs unchanged when the window has no whole
        nucleus.

    Shapes: image (S, S, 3) uint8, label (S, S) int32 -> the same.
    """
    from scipy import ndimage as ndi

    n_ids = int(label.max())
    if n_ids == 0 or max_copies < 1:
        return image, label
    height, width = label.shape
    boxes = ndi.find_objects(label)
    whole = []
    for i, box in enumerate(boxes, 1):
        if box is None:
            continue
        ys, xs = box
        if ys.start == 0 or xs.start == 0 or ys.stop == height or xs.stop == width:
            continue  # cut by the window edge: its copy would carry a straight edge
        if not inside[box].all():
            continue
        whole.append((i, box))
    if not whole:
        return image, label
    image, label = image.copy(), label.copy()
    centres = ndi.center_of_mass(label > 0, label, [j for j, _ in whole])
    next_id = n_ids + 1
    for _ in range(int(rng.integers(1, max_copies + 1))):
        i, (ys, xs) = whole[int(rng.integers(len(whole)))]
        shape = label[ys, xs] == i
        pixels = image[ys, xs]
        h, w = shape.shape
        if h >= height - 1 or w >= width - 1:
            continue
        if rng.random() < touching:
            cy, cx = centres[int(rng.integers(len(centres)))]
            angle = rng.uniform(0, 2 * np.pi)
            dist = 0.9 * (h + w) / 2  # two radii of this size, a little less: touching
            top = int(round(cy + dist * np.sin(angle) - h / 2))
            left = int(round(cx + dist * np.cos(angle) - w / 2))
        else:
            top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        top, left = min(max(top, 1), height - h - 1), min(max(left, 1), width - w - 1)
        region = (slice(top, top + h), slice(left, left + w))
        if not inside[region][shape].all():
            continue
        image[region][shape] = pixels[shape]
        label[region][shape] = next_id
        next_id += 1
    return image, label
