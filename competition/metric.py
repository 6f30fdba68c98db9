"""The competition's score, computed exactly.

Per image: for each threshold t in 0.50, 0.55, ..., 0.95, a predicted object matches a true
object when their IoU > t (strictly); the image scores TP / (TP + FP + FN) averaged over the
ten thresholds. The leaderboard score is the mean over images.

The IoU of every true/predicted pair comes from one pass over the pixels (a contingency of the
two label images). Thresholds are compared in integers, ``20 * intersection > k * union`` for
t = k / 20, so an IoU of exactly 0.5 is not a hit, with no floating-point doubt. Because
t >= 0.5, a true object can overlap at most one predicted object with IoU > t, so counting the
pairs above t counts the matches.

:func:`error_counts` says where an image's score is lost at one threshold: the true objects
missed, merged with a neighbour, split or poorly outlined, and the predictions on the background.

Empty images: with no true and no predicted object, every threshold scores 1 (nothing to find,
nothing wrongly found); with no true object and any prediction, 0; with true objects and no
prediction, 0.

>>> import numpy as np
>>> truth = np.zeros((4, 6), int); truth[:2, :2] = 1; truth[2:, 3:] = 2
>>> score_image(truth, truth).score
1.0
>>> score_image(truth, np.zeros_like(truth)).score
0.0
>>> half = truth.copy(); half[2:, 5] = 0  # object 2 keeps 4 of its 6 pixels: IoU 2/3
>>> score_image(truth, half).tp
(2, 2, 2, 2, 1, 1, 1, 1, 1, 1)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

THRESHOLD_STEPS = tuple(range(10, 20))  # t = k / 20
THRESHOLDS = tuple(k / 20 for k in THRESHOLD_STEPS)


@dataclass(frozen=True)
class ImageScore:
    """The score of one image, with the counts behind it.

    Attributes:
        image_id: the image's id ("" when scored alone).
        tp, fp, fn: counts per threshold, in :data:`THRESHOLDS` order.
        n_true, n_pred: numbers of true and predicted objects.
    """

    image_id: str
    tp: tuple[int, ...]
    fp: tuple[int, ...]
    fn: tuple[int, ...]
    n_true: int
    n_pred: int

    @property
    def per_threshold(self) -> tuple[float, ...]:
        """TP / (TP + FP + FN) per threshold; 1.0 where the denominator is 0."""
        return tuple(
            1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)
            for tp, fp, fn in zip(self.tp, self.fp, self.fn)
        )

    @property
    def score(self) -> float:
        """Mean of :attr:`per_threshold`."""
        return float(np.mean(self.per_threshold))


@dataclass(frozen=True)
class ScoreResult:
    """Scores of a set of images.

    Attributes:
        images: one :class:`ImageScore` per image, in input order.
    """

    images: tuple[ImageScore, ...]

    @property
    def score(self) -> float:
        """Mean image score (the leaderboard number); 0.0 for no image."""
        return float(np.mean([s.score for s in self.images])) if self.images else 0.0

    @property
    def per_threshold(self) -> tuple[float, ...]:
        """Mean over images of the per-threshold score."""
        if not self.images:
            return tuple(0.0 for _ in THRESHOLDS)
        return tuple(np.mean([s.per_threshold for s in self.images], axis=0).tolist())

    def subset(self, image_ids: Iterable[str]) -> ScoreResult:
        """The result restricted to ``image_ids`` (input order kept)."""
        wanted = set(image_ids)
        return ScoreResult(tuple(s for s in self.images if s.image_id in wanted))

    def by_group(self, groups: Mapping[str, str]) -> dict[str, float]:
        """Mean score per group (e.g. image type), from ImageId -> group; sorted by group.

        Images missing from ``groups`` fall in the group ``"unknown"``.
        """
        scores: dict[str, list[float]] = {}
        for s in self.images:
            scores.setdefault(groups.get(s.image_id, "unknown"), []).append(s.score)
        return {g: float(np.mean(v)) for g, v in sorted(scores.items())}

    def bootstrap_interval(
        self, *, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
    ) -> tuple[float, float]:
        """Percentile bootstrap interval of the mean score, resampling images.

        Tells a real improvement from noise: on 65 images the interval is several points wide.
        """
        scores = np.array([s.score for s in self.images])
        if len(scores) == 0:
            return (0.0, 0.0)
        rng = np.random.default_rng(seed)
        means = scores[rng.integers(0, len(scores), size=(n_resamples, len(scores)))].mean(axis=1)
        alpha = (1.0 - confidence) / 2
        low, high = np.quantile(means, [alpha, 1.0 - alpha])
        return float(low), float(high)


def _consecutive(label: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel to 0..N (0 kept as background) in O(pixels); returns (flat labels, N)."""
    flat = np.asarray(label).ravel()
    if flat.size == 0:
        return flat.astype(np.int64), 0
    if flat.min() < 0:
        raise ValueError("label images must not hold negative ids")
    present = np.bincount(flat.astype(np.int64)) > 0
    present[0] = False
    lut = np.zeros(len(present), dtype=np.int64)
    n = int(present.sum())
    lut[present] = np.arange(1, n + 1)
    return lut[flat], n


def intersections(true_label: np.ndarray, pred_label: np.ndarray):
    """Overlap of every true/predicted pair, from one pass over the pixels.

    Returns:
        ``(true_idx, pred_idx, inter, true_area, pred_area)``: for each overlapping pair
        (0-indexed object numbers after consecutive relabelling) its intersection in pixels,
        and the areas of all true and all predicted objects.

    Shapes: (H, W) int, (H, W) int -> arrays of length n_pairs, n_true, n_pred.
    """
    if true_label.shape != pred_label.shape:
        raise ValueError(f"label shapes differ: true {true_label.shape}, predicted {pred_label.shape}")
    t, n_true = _consecutive(true_label)
    p, n_pred = _consecutive(pred_label)
    true_area = np.bincount(t, minlength=n_true + 1)[1:]
    pred_area = np.bincount(p, minlength=n_pred + 1)[1:]
    both = (t > 0) & (p > 0)
    codes = t[both] * (n_pred + 1) + p[both]
    if (n_true + 1) * (n_pred + 1) <= 4 * max(codes.size, 1) + 1_000_000:
        counts = np.bincount(codes, minlength=(n_true + 1) * (n_pred + 1))
        pairs = np.flatnonzero(counts)
        inter = counts[pairs]
    else:  # many objects, few overlapping pixels: stay sparse
        pairs, inter = np.unique(codes, return_counts=True)
    return pairs // (n_pred + 1) - 1, pairs % (n_pred + 1) - 1, inter, true_area, pred_area


def score_image(true_label: np.ndarray, pred_label: np.ndarray, image_id: str = "") -> ImageScore:
    """Score one image.

    Args:
        true_label: H×W int label image of the true nuclei (0 = background).
        pred_label: H×W int label image of the predicted nuclei; ids need not be consecutive.
        image_id: carried into the result.

    Returns:
        :class:`ImageScore` with TP/FP/FN per threshold.

    Shapes: (H, W), (H, W) -> ImageScore.
    """
    return _score_overlaps(intersections(true_label, pred_label), image_id)


def score_image_and_errors(true_label: np.ndarray, pred_label: np.ndarray, image_id: str = "",
                           threshold: float = 0.5) -> tuple[ImageScore, ErrorCounts]:
    """:func:`score_image` and :func:`error_counts` from one pass over the pixels."""
    overlaps = intersections(true_label, pred_label)
    return _score_overlaps(overlaps, image_id), _error_counts(overlaps, threshold)


def _score_overlaps(overlaps, image_id: str) -> ImageScore:
    ti, pi, inter, true_area, pred_area = overlaps
    union = true_area[ti] + pred_area[pi] - inter
    n_true, n_pred = len(true_area), len(pred_area)
    steps = np.array(THRESHOLD_STEPS)
    # hits[k] = number of pairs with IoU > k/20, i.e. 20 * inter > k * union.
    tp = (20 * inter[None, :] > steps[:, None] * union[None, :]).sum(axis=1)
    tp = tuple(int(x) for x in tp)
    return ImageScore(
        image_id=image_id,
        tp=tp,
        fp=tuple(n_pred - x for x in tp),
        fn=tuple(n_true - x for x in tp),
        n_true=n_true,
        n_pred=n_pred,
    )


def score_images(pairs: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> ScoreResult:
    """Score many images: ``pairs`` yields ``(image_id, true_label, pred_label)``."""
    return ScoreResult(tuple(score_image(t, p, image_id) for image_id, t, p in pairs))


COVERED_FRACTION = 0.2
"""In :func:`error_counts`, the share of an object's area that counts as covered by the other
side: a true nucleus less covered than this by predictions is missed, and a prediction less
covered by true nuclei lies on the background."""


@dataclass(frozen=True)
class ErrorCounts:
    """Where one image's score is lost at one IoU threshold (:func:`error_counts`).

    Attributes:
        n_true, n_pred: numbers of true and predicted objects.
        matched: true objects matched by a prediction (IoU > threshold): the true positives.
        missed: unmatched true objects that predictions cover less than
            :data:`COVERED_FRACTION` of.
        merged: unmatched true objects whose largest overlapping prediction covers at least
            :data:`COVERED_FRACTION` of two or more true objects (joined with a neighbour).
        split: unmatched true objects that two or more predictions each cover at least
            :data:`COVERED_FRACTION` of (cut into pieces).
        outline: the other unmatched true objects: one prediction covers them, with too
            little overlap (too small, too large or shifted).
        background: unmatched predictions of which true objects cover less than
            :data:`COVERED_FRACTION`: invented objects.
        on_nuclei: the other unmatched predictions (pieces of split nuclei, merged blobs,
            poor outlines).
        matched_iou: the sum of the matched pairs' IoUs: over ``matched``, how well the found
            nuclei are outlined, which is what the thresholds above 0.5 pay for.

    ``matched + missed + merged + split + outline == n_true`` and
    ``matched + background + on_nuclei == n_pred``. Counts add up over images with ``+``.
    """

    n_true: int = 0
    n_pred: int = 0
    matched: int = 0
    missed: int = 0
    merged: int = 0
    split: int = 0
    outline: int = 0
    background: int = 0
    on_nuclei: int = 0
    matched_iou: float = 0.0

    def __add__(self, other: ErrorCounts) -> ErrorCounts:
        return ErrorCounts(*(a + b for a, b in zip(dataclasses.astuple(self), dataclasses.astuple(other))))

    @property
    def mean_iou(self) -> float | None:
        """The mean IoU of the matched pairs (None when nothing matched)."""
        return self.matched_iou / self.matched if self.matched else None

    def describe(self) -> str:
        """One line: the true objects by outcome, then the unmatched predictions."""
        mean_iou = f" (mean IoU {self.mean_iou:.3f})" if self.matched else ""
        return (f"{self.n_true} true: {self.matched} matched{mean_iou}, {self.missed} missed, {self.merged} merged, "
                f"{self.split} split, {self.outline} outline; {self.n_pred} predicted: "
                f"{self.n_pred - self.matched} unmatched ({self.background} on background, {self.on_nuclei} on nuclei)")


def error_counts(true_label: np.ndarray, pred_label: np.ndarray, threshold: float = 0.5) -> ErrorCounts:
    """Sort an image's unmatched true and predicted objects by cause at one IoU threshold.

    Tells which failure costs the score: nuclei not found at all, joined with a neighbour,
    cut into pieces, or found with a poor outline, and predictions on the background. A match
    is IoU > ``threshold``, as in :func:`score_image`; the causes are decided in the order of
    :class:`ErrorCounts`'s fields (missed, then merged, then split, else outline).

    Args:
        true_label, pred_label: H×W int label images (0 = background).
        threshold: the IoU a match must exceed, in [0.5, 1) (so matches are one to one).

    Returns:
        :class:`ErrorCounts`.

    Raises:
        ValueError: a threshold outside [0.5, 1), or label images of different shapes.

    Shapes: (H, W), (H, W) -> ErrorCounts.

    >>> truth = np.zeros((8, 20), int); truth[2:6, 1:5] = 1; truth[2:6, 6:10] = 2; truth[2:6, 13:17] = 3
    >>> pred = np.zeros_like(truth); pred[2:6, 1:10] = 1  # nuclei 1 and 2 joined; 3 not found
    >>> c = error_counts(truth, pred)
    >>> (c.matched, c.missed, c.merged, c.on_nuclei)
    (0, 1, 2, 1)
    """
    return _error_counts(intersections(true_label, pred_label), threshold)


def _error_counts(overlaps, threshold: float) -> ErrorCounts:
    if not 0.5 <= threshold < 1.0:
        raise ValueError(f"threshold must lie in [0.5, 1), got {threshold}")
    ti, pi, inter, true_area, pred_area = overlaps
    n_true, n_pred = len(true_area), len(pred_area)
    union = true_area[ti] + pred_area[pi] - inter
    hit = inter > threshold * union
    true_matched = np.zeros(n_true, bool)
    pred_matched = np.zeros(n_pred, bool)
    true_matched[ti[hit]] = True
    pred_matched[pi[hit]] = True
    # a pair "covers" its true object, or its prediction, by COVERED_FRACTION of that one's area
    covers_true = inter >= COVERED_FRACTION * true_area[ti]
    covered = np.bincount(ti, weights=inter, minlength=n_true)
    pieces = np.bincount(ti[covers_true], minlength=n_true)
    true_per_pred = np.bincount(pi[covers_true], minlength=n_pred)  # true objects each prediction covers
    largest = np.full(n_true, -1)  # each true object's largest overlapping prediction
    order = np.lexsort((inter, ti))  # by true object, then overlap: the last of each run is its largest
    last = np.r_[ti[order][1:] != ti[order][:-1], True] if len(order) else np.zeros(0, bool)
    largest[ti[order][last]] = pi[order][last]
    missed = merged = split = outline = 0
    for t in np.flatnonzero(~true_matched):
        if covered[t] < COVERED_FRACTION * true_area[t]:
            missed += 1
        elif largest[t] >= 0 and true_per_pred[largest[t]] >= 2:
            merged += 1
        elif pieces[t] >= 2:
            split += 1
        else:
            outline += 1
    on_truth = np.bincount(pi, weights=inter, minlength=n_pred)
    background = int(np.sum(~pred_matched & (on_truth < COVERED_FRACTION * pred_area)))
    return ErrorCounts(
        n_true=n_true,
        n_pred=n_pred,
        matched=int(true_matched.sum()),
        missed=missed,
        merged=merged,
        split=split,
        outline=outline,
        background=background,
        on_nuclei=int(n_pred - pred_matched.sum()) - background,
        matched_iou=float(np.sum(inter[hit] / union[hit])),
    )
