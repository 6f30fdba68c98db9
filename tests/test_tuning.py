"""Tests of competition.tuning on small drawn sets with synthetic probabilities."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from competition.metric import score_image
from competition.postprocess import PostprocessParams, watershed_instances
from competition.targets import make_targets
from competition.tuning import DEFAULT_GRID, TuneResult, score_params, tune_postprocess


def drawn_label(seed, shape=(64, 72)):
    """A few non-overlapping disks and a touching pair."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    label = np.zeros(shape, np.int32)
    next_id = 1
    for _ in range(30):
        if next_id > 5:
            break
        cy, cx, r = rng.integers(8, shape[0] - 8), rng.integers(8, shape[1] - 8), rng.integers(4, 8)
        disk = (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
        if (ndi.binary_dilation(disk, iterations=2) & (label > 0)).any():
            continue
        label[disk] = next_id
        next_id += 1
    return label


def faint_samples(n=4, scale=0.4):
    """Probabilities whose body peaks at ``scale``: the default 0.5 threshold finds nothing."""
    rng = np.random.default_rng(0)
    samples = []
    for seed in range(n):
        label = drawn_label(seed)
        probs = np.stack([ndi.gaussian_filter(t, 0.7) for t in make_targets(label)]) * scale
        probs += rng.normal(0.0, 0.01, probs.shape)
        samples.append((np.clip(probs, 0.0, 1.0).astype(np.float32), label))
    return samples


SMALL_GRID = {"body_threshold": [0.5, 0.3, 0.2], "seed_threshold": [0.5, 0.2, 0.1], "min_size": [16, 0]}


def test_tuning_fixes_a_wrong_threshold():
    samples = faint_samples()
    result = tune_postprocess(samples, SMALL_GRID)
    assert result.score_before < 0.1
    assert result.score_after > result.score_before + 0.5
    assert result.params.body_threshold < 0.4


def test_score_before_and_after_are_the_real_scores():
    samples = faint_samples()
    result = tune_postprocess(samples, SMALL_GRID)
    assert result.score_before == pytest.approx(score_params(samples, PostprocessParams()))
    by_hand = np.mean([score_image(t, watershed_instances(p, result.params)).score for p, t in samples])
    assert result.score_after == pytest.approx(by_hand)


def test_tuning_is_deterministic():
    samples = faint_samples()
    first = tune_postprocess(samples, SMALL_GRID)
    second = tune_postprocess(samples, SMALL_GRID)
    assert first == second


def test_ties_keep_the_earlier_value():
    samples = faint_samples()  # disks without holes: fill_holes changes nothing
    base = PostprocessParams(body_threshold=0.2, seed_threshold=0.1)
    result = tune_postprocess(samples, {"fill_holes": [False, True]}, base)
    assert result.params.fill_holes is False
    assert result.history[0][2] == result.history[1][2]
    reverse = tune_postprocess(samples, {"fill_holes": [True, False]}, base)
    assert reverse.params.fill_holes is True


def test_history_lists_every_value_tried_in_order():
    samples = faint_samples()
    result = tune_postprocess(samples, {"min_size": [0, 16]}, n_rounds=1)
    assert [(name, value) for name, value, _ in result.history] == [("min_size", 0), ("min_size", 16)]


def test_stops_when_a_round_changes_nothing():
    samples = faint_samples()
    grid = {"body_threshold": [0.3, 0.2], "seed_threshold": [0.2, 0.1]}
    base = PostprocessParams(body_threshold=0.3, seed_threshold=0.2)
    result = tune_postprocess(samples, grid, base, n_rounds=5)
    assert result.params.body_threshold == 0.2  # round 1 changes it, round 2 changes nothing
    assert len(result.history) == 2 * 4


def test_off_grid_base_value_is_tried_too_so_the_score_never_drops():
    samples = faint_samples()
    base = PostprocessParams(body_threshold=0.25, seed_threshold=0.1)
    result = tune_postprocess(samples, {"body_threshold": [0.6, 0.7]}, base)
    assert result.params.body_threshold == 0.25
    assert result.score_after == result.score_before
    assert [v for _, v, _ in result.history] == [0.6, 0.7, 0.25]


def test_unknown_grid_key_lists_valid_names():
    with pytest.raises(ValueError, match="body_thresh.*valid names.*seed_threshold"):
        tune_postprocess(faint_samples(1), {"body_thresh": [0.3]})


def test_bad_grid_value_rejected_before_any_work():
    with pytest.raises(ValueError, match="watershed_on"):
        tune_postprocess(faint_samples(1), {"watershed_on": ["seed", "gradient"]})
    with pytest.raises(ValueError, match="non-empty"):
        tune_postprocess(faint_samples(1), {"min_size": []})


def test_needs_samples_and_matching_shapes():
    with pytest.raises(ValueError, match="at least one sample"):
        tune_postprocess([], SMALL_GRID)
    probs, label = faint_samples(1)[0]
    with pytest.raises(ValueError, match="sample 0"):
        tune_postprocess([(probs, label[:-1])], SMALL_GRID)


def test_default_grid_is_valid_and_read_only():
    for name, values in DEFAULT_GRID.items():
        for value in values:
            PostprocessParams(**{name: value})
    with pytest.raises(TypeError):
        DEFAULT_GRID["min_size"] = (0,)  # type: ignore[index]


def test_default_grid_runs_and_result_serialises():
    samples = faint_samples(2)
    result = tune_postprocess(samples, n_rounds=1)
    assert isinstance(result, TuneResult)
    assert result.score_after >= result.score_before
    d = result.to_dict()
    assert PostprocessParams.from_dict(d["params"]) == result.params
    assert d["n_images"] == 2
    assert len(d["history"]) == sum(len(v) for v in DEFAULT_GRID.values())


def test_tuning_grows_outlines_that_the_truth_draws_larger():
    # the network's nuclei 2 px tighter than the annotation: only growing mends the outlines
    from skimage.segmentation import expand_labels

    true = np.zeros((60, 60), np.int32)
    for n, (cy, cx) in enumerate([(15, 15), (15, 42), (42, 28)], 1):
        yy, xx = np.ogrid[:60, :60]
        true[(yy - cy) ** 2 + (xx - cx) ** 2 <= 64] = n
    tight = np.where((true > 0) & (expand_labels((true == 0).astype(np.int32), 2) == 0), 0.9, 0.05).astype(np.float32)[None]
    base = PostprocessParams(body_threshold=0.5, seed_threshold=0.5, min_seed_size=0, min_size=0)
    assert score_params([(tight, true)], base) < 0.8
    result = tune_postprocess([(tight, true)], {"grow": DEFAULT_GRID["grow"]}, base)
    assert result.params.grow == 2
    assert result.score_after == 1.0


def test_grow_keeps_its_place_in_the_descent_and_leads_the_default_grid():
    # min_size and fill_holes go last; grow, which trades against the body threshold, is
    # visited where the grid puts it: first in the default grid
    assert next(iter(DEFAULT_GRID)) == "grow"
    result = tune_postprocess(faint_samples(), {"min_size": [16], "grow": [0, 1], "body_threshold": [0.5]}, n_rounds=1)
    assert [name for name, _, _ in result.history] == ["grow", "grow", "body_threshold", "min_size"]
