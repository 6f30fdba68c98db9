"""The competition metric: exact thresholds, invariances, and a brute-force cross-check."""

from __future__ import annotations

import dataclasses
from fractions import Fraction

import numpy as np
import pytest

from competition.metric import THRESHOLDS, ScoreResult, score_image, score_images


def brute_force_score(true_label: np.ndarray, pred_label: np.ndarray) -> float:
    """Reference: loop over object pairs, exact fractions, greedy one-to-one matching."""
    true_ids = [i for i in np.unique(true_label) if i]
    pred_ids = [i for i in np.unique(pred_label) if i]
    ious = {}
    for t in true_ids:
        tm = true_label == t
        for p in pred_ids:
            pm = pred_label == p
            ious[t, p] = Fraction(int((tm & pm).sum()), int((tm | pm).sum()))
    total = Fraction(0)
    for k in range(10, 20):
        threshold = Fraction(k, 20)
        used, tp = set(), 0
        for t in true_ids:
            match = next((p for p in pred_ids if p not in used and ious[t, p] > threshold), None)
            if match is not None:
                used.add(match)
                tp += 1
        fp, fn = len(pred_ids) - tp, len(true_ids) - tp
        total += Fraction(1) if tp + fp + fn == 0 else Fraction(tp, tp + fp + fn)
    return float(total / 10)


def disk(shape, center, radius):
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def rect_label(shape, boxes):
    label = np.zeros(shape, np.int32)
    for i, (r0, r1, c0, c1) in enumerate(boxes, start=1):
        label[r0:r1, c0:c1] = i
    return label


def test_identical_labels_score_one():
    label = rect_label((40, 50), [(2, 10, 2, 10), (20, 30, 5, 25), (12, 18, 30, 45)])
    assert score_image(label, label).score == 1.0


def test_permuted_prediction_ids_change_nothing():
    rng = np.random.default_rng(0)
    true = rect_label((40, 50), [(2, 10, 2, 10), (20, 30, 5, 25), (12, 18, 30, 45)])
    pred = rect_label((40, 50), [(3, 10, 2, 11), (20, 29, 5, 20), (12, 18, 32, 45)])
    perm = np.concatenate(([0], rng.permutation(np.arange(1, 4)) * 17 + 5))
    assert score_image(true, perm[pred]).score == score_image(true, pred).score


def test_true_and_pred_swap_symmetric():
    true = rect_label((30, 30), [(0, 10, 0, 10), (15, 25, 15, 25)])
    pred = rect_label((30, 30), [(0, 10, 2, 10), (16, 25, 15, 25), (26, 29, 0, 3)])
    forward, backward = score_image(true, pred), score_image(pred, true)
    assert forward.tp == backward.tp
    assert forward.fp == backward.fn


@pytest.mark.parametrize("k", range(10, 20))
def test_threshold_tie_is_not_a_hit(k):
    # IoU exactly k/20: true object of 20 pixels, prediction covering k of them and nothing else.
    true = np.zeros((1, 20), np.int32)
    true[0, :] = 1
    pred = np.zeros((1, 20), np.int32)
    pred[0, :k] = 1
    result = score_image(true, pred)
    # IoU = k/20 exactly: a hit at every threshold strictly below it, not at k/20 itself.
    assert result.tp == tuple(1 if j < k else 0 for j in range(10, 20))


@pytest.mark.parametrize("k", range(10, 20))
def test_one_pixel_more_crosses_the_threshold(k):
    # 40-pixel object, k*2+1 pixels predicted: IoU = (2k+1)/40 just above k/20.
    true = np.ones((1, 40), np.int32)
    pred = np.zeros((1, 40), np.int32)
    pred[0, : 2 * k + 1] = 1
    assert score_image(true, pred).tp[k - 10] == 1


@pytest.mark.parametrize("shift", range(0, 12))
def test_shifted_disks_match_brute_force(shift):
    shape = (64, 64)
    true = disk(shape, (32, 32), 10).astype(np.int32)
    pred = disk(shape, (32, 32 + shift), 10).astype(np.int32)
    assert score_image(true, pred).score == pytest.approx(brute_force_score(true, pred), abs=1e-12)


def test_shifted_disk_score_follows_iou():
    shape = (64, 64)
    true = disk(shape, (32, 32), 10)
    pred = disk(shape, (32, 36), 10)
    iou = (true & pred).sum() / (true | pred).sum()
    expected = np.mean([1.0 if iou > t else 0.0 for t in THRESHOLDS])
    assert score_image(true.astype(int), pred.astype(int)).score == pytest.approx(expected)


def random_labels(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A true and a predicted label image of overlapping rectangles, odd shapes; half the time
    the prediction is a noisy copy of the truth (some objects cut or thinned)."""
    shape = tuple(int(x) for x in rng.integers(8, 40, size=2))
    true = np.zeros(shape, np.int32)
    pred = np.zeros(shape, np.int32)
    for label, n in ((true, rng.integers(0, 6)), (pred, rng.integers(0, 7))):
        for i in range(1, n + 1):
            r, c = rng.integers(0, shape[0]), rng.integers(0, shape[1])
            h, w = rng.integers(2, 12, size=2)
            label[r : r + h, c : c + w] = i
    if rng.random() < 0.5:
        pred = true.copy()
        pred[rng.random(shape) < 0.1] = 0
    return true, pred


def test_fast_equals_brute_force_on_random_labels():
    rng = np.random.default_rng(42)
    for _ in range(60):
        true, pred = random_labels(rng)
        assert score_image(true, pred).score == pytest.approx(brute_force_score(true, pred), abs=1e-12)


def test_empty_truth_and_empty_prediction_scores_one():
    empty = np.zeros((10, 10), np.int32)
    assert score_image(empty, empty).score == 1.0


def test_empty_truth_with_prediction_scores_zero():
    empty = np.zeros((10, 10), np.int32)
    pred = rect_label((10, 10), [(0, 3, 0, 3)])
    result = score_image(empty, pred)
    assert result.score == 0.0
    assert result.fp == (1,) * 10


def test_missing_prediction_scores_zero():
    true = rect_label((10, 10), [(0, 3, 0, 3), (5, 8, 5, 8)])
    result = score_image(true, np.zeros_like(true))
    assert result.score == 0.0
    assert result.fn == (2,) * 10


def test_counts_per_threshold():
    true = rect_label((20, 20), [(0, 10, 0, 10), (12, 20, 12, 20)])
    pred = true.copy()
    pred[0:10, 0:3] = 0  # object 1: IoU 0.7
    pred[0:2, 15:17] = 5  # a false positive
    result = score_image(true, pred)
    assert result.tp == (2, 2, 2, 2, 1, 1, 1, 1, 1, 1)
    assert result.fp == (1, 1, 1, 1, 2, 2, 2, 2, 2, 2)
    assert result.fn == (0, 0, 0, 0, 1, 1, 1, 1, 1, 1)


def test_shape_mismatch_raises():
    with pytest.raises(ValueError, match="shapes differ"):
        score_image(np.zeros((3, 4), int), np.zeros((4, 3), int))


def test_many_objects_sparse_path_agrees_with_dense():
    # ~4000 single-pixel predictions against a few true objects uses the sparse branch.
    rng = np.random.default_rng(3)
    true = rect_label((200, 200), [(10, 40, 10, 40), (100, 130, 100, 150)])
    pred = np.zeros((200, 200), np.int32)
    pred.ravel()[rng.choice(40000, 4000, replace=False)] = np.arange(1, 4001)
    pred[10:40, 10:40] = 5000
    assert score_image(true, pred).score == pytest.approx(brute_force_score(true, pred))


def test_dataset_mean_groups_and_interval():
    a = rect_label((10, 10), [(0, 5, 0, 5)])
    result = score_images([("a", a, a), ("b", a, np.zeros_like(a)), ("c", a, a)])
    assert result.score == pytest.approx(2 / 3)
    assert result.by_group({"a": "x", "b": "y", "c": "x"}) == {"x": 1.0, "y": 0.0}
    low, high = result.bootstrap_interval(n_resamples=500)
    assert 0.0 <= low < result.score < high <= 1.0


def test_empty_result():
    assert ScoreResult(()).score == 0.0


# --- error_counts: where the score is lost ---------------------------------------------------

from competition.metric import COVERED_FRACTION, ErrorCounts, error_counts  # noqa: E402


def brute_force_errors(true_label: np.ndarray, pred_label: np.ndarray, threshold: float = 0.5) -> ErrorCounts:
    """Reference: the rules of :class:`ErrorCounts` object by object, with masks."""
    true_ids = [i for i in np.unique(true_label) if i]
    pred_ids = [i for i in np.unique(pred_label) if i]
    area_t = {t: int((true_label == t).sum()) for t in true_ids}
    area_p = {p: int((pred_label == p).sum()) for p in pred_ids}
    inter = {(t, p): int(((true_label == t) & (pred_label == p)).sum()) for t in true_ids for p in pred_ids}
    iou = {k: Fraction(v, area_t[k[0]] + area_p[k[1]] - v) for k, v in inter.items()}
    hit_t = {t for t in true_ids if any(iou[t, p] > threshold for p in pred_ids)}
    hit_p = {p for p in pred_ids if any(iou[t, p] > threshold for t in true_ids)}
    counts = dict(missed=0, merged=0, split=0, outline=0)
    for t in sorted(set(true_ids) - hit_t):
        overlaps = {p: inter[t, p] for p in pred_ids if inter[t, p]}
        if sum(overlaps.values()) < COVERED_FRACTION * area_t[t]:
            counts["missed"] += 1
            continue
        largest = max(overlaps, key=lambda p: overlaps[p])
        neighbours = [u for u in true_ids if inter[u, largest] >= COVERED_FRACTION * area_t[u]]
        if len(neighbours) >= 2:
            counts["merged"] += 1
        elif sum(1 for v in overlaps.values() if v >= COVERED_FRACTION * area_t[t]) >= 2:
            counts["split"] += 1
        else:
            counts["outline"] += 1
    unmatched = [p for p in pred_ids if p not in hit_p]
    background = sum(1 for p in unmatched if sum(inter[t, p] for t in true_ids) < COVERED_FRACTION * area_p[p])
    return ErrorCounts(n_true=len(true_ids), n_pred=len(pred_ids), matched=len(hit_t), background=background,
                       on_nuclei=len(unmatched) - background,
                       matched_iou=float(sum(iou[t, p] for t in true_ids for p in pred_ids if iou[t, p] > threshold)),
                       **counts)


def _rect(label, r, c, h, w, value):
    label[r : r + h, c : c + w] = value


def test_error_counts_each_cause():
    true = np.zeros((30, 60), np.int32)
    pred = np.zeros_like(true)
    _rect(true, 2, 2, 6, 6, 1); _rect(pred, 2, 2, 6, 6, 1)  # found exactly
    _rect(true, 2, 12, 6, 6, 2)  # not found
    _rect(true, 2, 20, 6, 6, 3); _rect(true, 2, 26, 6, 6, 4); _rect(pred, 2, 20, 6, 12, 2)  # 3 and 4 joined
    _rect(true, 12, 2, 8, 8, 5); _rect(pred, 12, 2, 8, 4, 3); _rect(pred, 12, 6, 8, 4, 4)  # 5 cut in halves
    _rect(true, 12, 20, 10, 10, 6); _rect(pred, 14, 22, 6, 6, 5)  # 6 outlined far too small (IoU 0.36)
    _rect(pred, 24, 40, 5, 5, 6)  # invented
    c = error_counts(true, pred)
    assert (c.matched, c.missed, c.merged, c.split, c.outline) == (1, 1, 2, 1, 1)
    assert (c.n_true, c.n_pred, c.background, c.on_nuclei) == (6, 6, 1, 4)
    assert c.matched_iou == pytest.approx(1.0)


def test_error_counts_add_up_and_match_brute_force_on_random_labels():
    rng = np.random.default_rng(7)
    for _ in range(60):
        true, pred = random_labels(rng)
        for threshold in (0.5, 0.75):
            c = error_counts(true, pred, threshold)
            ref = brute_force_errors(true, pred, threshold)
            assert dataclasses.replace(c, matched_iou=0.0) == dataclasses.replace(ref, matched_iou=0.0)
            assert c.matched_iou == pytest.approx(ref.matched_iou, abs=1e-12)
            assert c.matched + c.missed + c.merged + c.split + c.outline == c.n_true
            assert c.matched + c.background + c.on_nuclei == c.n_pred
            assert c.matched == score_image(true, pred).tp[int(round(threshold * 20)) - 10]


def test_error_counts_sum_over_images_and_refuse_low_thresholds():
    a = ErrorCounts(n_true=3, n_pred=2, matched=2, missed=1, background=0, matched_iou=1.5)
    b = ErrorCounts(n_true=1, n_pred=2, matched=1, background=1, matched_iou=0.75)
    assert a + b == ErrorCounts(n_true=4, n_pred=4, matched=3, missed=1, background=1, matched_iou=2.25)
    assert "mean IoU 0.750" in (a + b).describe()
    with pytest.raises(ValueError, match="threshold"):
        error_counts(np.zeros((4, 4), int), np.zeros((4, 4), int), 0.4)
