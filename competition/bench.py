"""Speed figures for ``make bench``: each fast path against a simple reference on the same inputs.

- metric: scoring 65 images (the size of the stage-1 test set) with :func:`score_image` against
  a straightforward per-object implementation (loop over true objects, IoU against every
  predicted object with boolean masks);
- RLE: encoding and decoding every object of those images against naive per-pixel loops.

The stage-1 test labels are held back, so the 65 images are drawn (seeded) from the labelled
training split, restricted to the test set's sizes (at most 696 px wide); predictions are the
true labels perturbed (shifted, eroded, some objects dropped or merged) so the IoUs spread over
the thresholds as real predictions do. Without real data the synthetic set is used.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from competition.metric import THRESHOLD_STEPS, score_image
from competition.rle import decode, encode, label_to_rles, rles_to_label

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Timing:
    """One benchmark line: fast and reference seconds on the same work."""

    name: str
    fast_s: float
    reference_s: float
    units: int
    unit: str

    @property
    def speedup(self) -> float:
        return self.reference_s / self.fast_s if self.fast_s > 0 else float("inf")

    def line(self) -> str:
        return (
            f"{self.name:<28} fast {self.fast_s * 1e3:9.1f} ms  reference {self.reference_s * 1e3:10.1f} ms  "
            f"x{self.speedup:8.1f}  ({self.units} {self.unit})"
        )


def reference_score(true_label: np.ndarray, pred_label: np.ndarray) -> float:
    """Per-object reference: for each true object, IoU with every predicted object."""
    true_ids = [i for i in np.unique(true_label) if i != 0]
    pred_ids = [i for i in np.unique(pred_label) if i != 0]
    pred_masks = [pred_label == p for p in pred_ids]
    iou = np.zeros((len(true_ids), len(pred_ids)))
    for a, t in enumerate(true_ids):
        tm = true_label == t
        for b, pm in enumerate(pred_masks):
            inter = np.logical_and(tm, pm).sum()
            if inter:
                iou[a, b] = inter / np.logical_or(tm, pm).sum()
    scores = []
    for k in THRESHOLD_STEPS:
        tp = int((iou > k / 20).sum())
        denom = len(true_ids) + len(pred_ids) - tp
        scores.append(1.0 if denom == 0 else tp / denom)
    return float(np.mean(scores))


def naive_encode(mask: np.ndarray) -> str:
    """Per-pixel loop over the column-major pixels."""
    runs: list[int] = []
    height, width = mask.shape
    inside = False
    position = 0
    for col in range(width):
        for row in range(height):
            position += 1
            if mask[row, col]:
                if not inside:
                    runs += [position, 0]
                    inside = True
                runs[-1] += 1
            else:
                inside = False
    return " ".join(map(str, runs))


def naive_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Per-pixel loop: set each pixel of each run."""
    height, width = shape
    mask = np.zeros(shape, dtype=bool)
    values = [int(v) for v in rle.split()]
    for start, length in zip(values[0::2], values[1::2]):
        for position in range(start - 1, start - 1 + length):
            mask[position % height, position // height] = True
    return mask


def perturb(label: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A plausible prediction: shifted, eroded or dilated, some objects dropped, a few merged."""
    shift = rng.integers(-2, 3, size=2)
    pred = np.roll(label, tuple(shift), axis=(0, 1))
    ids = np.unique(pred)[1:]
    if len(ids):
        dropped = rng.choice(ids, size=max(1, len(ids) // 10), replace=False)
        pred[np.isin(pred, dropped)] = 0
    if rng.random() < 0.5:
        pred = ndi.grey_erosion(pred, size=(3, 3)) * (ndi.grey_dilation(pred, size=(3, 3)) == pred)
    else:
        grown = ndi.grey_dilation(pred, size=(3, 3))
        pred = np.where(pred == 0, grown, pred)
    if len(ids) > 4 and rng.random() < 0.5:
        a, b = rng.choice(ids, size=2, replace=False)
        pred[pred == b] = a
    return pred.astype(np.int32)


def _time(fn: Callable[[], object], repeat: int = 3) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def bench_metric(pairs: list[tuple[np.ndarray, np.ndarray]]) -> Timing:
    """Score all pairs with the fast metric and the per-object reference; check they agree."""
    fast = [score_image(t, p).score for t, p in pairs]
    start = time.perf_counter()
    ref = [reference_score(t, p) for t, p in pairs]
    ref_s = time.perf_counter() - start
    if not np.allclose(fast, ref, atol=1e-12):
        raise AssertionError("fast metric and reference disagree")
    fast_s = _time(lambda: [score_image(t, p) for t, p in pairs])
    return Timing("metric: score 65 images", fast_s, ref_s, len(pairs), "images")


def bench_rle(labels: list[np.ndarray], max_reference_masks: int = 300) -> list[Timing]:
    """Encode/decode every object; the naive loops run on the first ``max_reference_masks``
    objects and are scaled to all objects (they take minutes otherwise); the line says so."""
    masks = [(label == i) for label in labels for i in np.unique(label)[1:]]
    rles = [encode(m) for m in masks]
    sub = list(range(min(len(masks), max_reference_masks)))
    scale = len(masks) / max(len(sub), 1)
    enc_fast = _time(lambda: [encode(m) for m in masks])
    start = time.perf_counter()
    naive = [naive_encode(masks[i]) for i in sub]
    enc_ref = (time.perf_counter() - start) * scale
    if naive != [rles[i] for i in sub]:
        raise AssertionError("fast and naive RLE encodings disagree")
    dec_fast = _time(lambda: [decode(r, m.shape) for r, m in zip(rles, masks)])
    start = time.perf_counter()
    for i in sub:
        naive_decode(rles[i], masks[i].shape)
    dec_ref = (time.perf_counter() - start) * scale
    note = f"masks; reference timed on {len(sub)} and scaled"
    # Whole images: every object of an image into one label image (what scoring does).
    per_image = [(label_to_rles(label), label.shape) for label in labels]
    img_fast = _time(lambda: [rles_to_label(r, shape) for r, shape in per_image])
    n_ref = max(1, round(len(per_image) * len(sub) / max(len(masks), 1)))
    start = time.perf_counter()
    for rles, shape in per_image[:n_ref]:
        naive_label(rles, shape)
    img_ref = (time.perf_counter() - start) * len(per_image) / n_ref
    return [
        Timing("rle: encode every mask", enc_fast, enc_ref, len(masks), note),
        Timing("rle: decode every mask", dec_fast, dec_ref, len(masks), note),
        Timing("rle: decode every image", img_fast, img_ref, len(per_image),
               f"label images; reference timed on {n_ref} and scaled"),
    ]


def naive_label(rles: list[str], shape: tuple[int, int]) -> np.ndarray:
    """Per-pixel loop: write each object's pixels into one label image."""
    label = np.zeros(shape, dtype=np.int32)
    for i, rle in enumerate(rles, start=1):
        label[naive_decode(rle, shape)] = i
    return label


def benchmark_pairs(labels: list[np.ndarray], seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [(label, perturb(label, rng)) for label in labels]
