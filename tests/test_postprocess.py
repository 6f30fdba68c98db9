"""Tests of competition.postprocess on drawn nuclei and probabilities made from their targets."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage as ndi

from competition.postprocess import (
    WATERSHED_LANDSCAPES,
    PostprocessParams,
    _component_distance,
    fill_holes_per_object,
    finish_instances,
    foreground_mask,
    relabel_consecutive,
    remove_small_objects,
    seed_markers,
    seed_score,
    watershed_instances,
    watershed_raw,
)
from competition.targets import make_targets


def disk(shape, center, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def ellipse(shape, center, radii, angle):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    y, x = yy - center[0], xx - center[1]
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * x + s * y, -s * x + c * y
    return (u / radii[1]) ** 2 + (v / radii[0]) ** 2 <= 1


def scene(shape=(67, 93)):
    """Separate disks, an ellipse, a touching pair (a straight contact) and a disk cut by the edge."""
    label = np.zeros(shape, np.int32)
    label[disk(shape, (15, 15), 9)] = 1
    label[ellipse(shape, (50, 18), (7, 13), 0.5)] = 2
    pair = disk(shape, (20, 50), 9) | disk(shape, (20, 66), 9)
    xx = np.arange(shape[1])[None, :].repeat(shape[0], 0)
    label[pair & (xx <= 58)] = 3
    label[pair & (xx > 58)] = 4
    label[disk(shape, (52, 60), 8)] = 5
    label[disk(shape, (60, 92), 8)] = 6  # cut by the right and bottom edges
    return label


def synth_probs(label, *, sigma=1.0, noise=0.05, seed=0, scale=1.0):
    """Targets blurred a little, times ``scale``, plus Gaussian noise, clipped to [0, 1]."""
    rng = np.random.default_rng(seed)
    targets = make_targets(label)
    probs = np.stack([ndi.gaussian_filter(t, sigma) for t in targets]) * scale
    probs += rng.normal(0.0, noise, probs.shape)
    return np.clip(probs, 0.0, 1.0).astype(np.float32)


def best_iou_per_true(true_label, pred_label):
    ious = []
    for i in range(1, int(true_label.max()) + 1):
        t = true_label == i
        ids = np.unique(pred_label[t])
        ids = ids[ids > 0]
        best = 0.0
        for j in ids:
            p = pred_label == j
            best = max(best, (t & p).sum() / (t | p).sum())
        ious.append(best)
    return ious


def assert_recovers(true_label, pred_label, iou=0.8):
    assert int(pred_label.max()) == int(true_label.max())
    ious = best_iou_per_true(true_label, pred_label)
    assert min(ious) > iou, ious


def assert_consecutive(label):
    assert label.dtype == np.int32
    np.testing.assert_array_equal(np.unique(label), np.arange(int(label.max()) + 1))


# --- params --------------------------------------------------------------------------------


def test_params_round_trip():
    params = PostprocessParams(body_threshold=0.4, min_size=3, watershed_on="body")
    assert PostprocessParams.from_dict(params.to_dict()) == params


def test_from_dict_rejects_unknown_keys_listing_valid_names():
    with pytest.raises(ValueError, match="body_thresh.*valid names.*body_threshold"):
        PostprocessParams.from_dict({"body_thresh": 0.4})


def test_from_dict_keeps_defaults_for_missing_keys():
    assert PostprocessParams.from_dict({"min_size": 5}) == PostprocessParams(min_size=5)


@pytest.mark.parametrize(
    "bad",
    [
        {"watershed_on": "gradient"},
        {"body_threshold": 1.5},
        {"seed_threshold": -0.1},
        {"min_size": -1},
        {"min_seed_size": 2.5},
        {"fill_holes": "yes"},
        {"body_threshold": True},
        {"min_size": None},
        {"min_size": "16"},
        {"body_threshold": "0.5"},
        {"grow": -1},
        {"grow": True},
        {"grow": float("nan")},
        {"grow": "1"},
    ],
)
def test_params_validate_values(bad):
    with pytest.raises(ValueError):
        PostprocessParams(**bad)


def test_watershed_on_error_lists_choices():
    with pytest.raises(ValueError, match="body.*seed.*distance"):
        PostprocessParams(watershed_on="gradient")


def test_params_are_frozen_and_hashable():
    params = PostprocessParams()
    with pytest.raises(dataclasses.FrozenInstanceError):
        params.min_size = 3  # type: ignore[misc]
    assert {params: 1}[PostprocessParams()] == 1


# --- the whole chain --------------------------------------------------------------------


def test_recovers_drawn_instances_with_three_channels():
    label = scene()
    pred = watershed_instances(synth_probs(label))
    assert_recovers(label, pred)
    assert_consecutive(pred)


def test_touching_pair_is_split_in_two():
    label = scene()
    pred = watershed_instances(synth_probs(label))
    pair_ids = np.unique(pred[(label == 3) | (label == 4)])
    assert len(pair_ids[pair_ids > 0]) == 2
    assert pred[20, 50] != pred[20, 66]


def test_body_alone_merges_the_pair_without_seeds_from_other_channels():
    """The counter-check: without boundary/gap, thresholding the body keeps one blob."""
    label = scene()
    mask = foreground_mask(synth_probs(label))
    components, _ = ndi.label(mask)
    assert components[20, 50] == components[20, 66]


@pytest.mark.parametrize("landscape", WATERSHED_LANDSCAPES)
def test_every_landscape_recovers_the_scene(landscape):
    label = scene()
    pred = watershed_instances(synth_probs(label), PostprocessParams(watershed_on=landscape))
    assert_recovers(label, pred)


def test_two_channels_body_and_boundary():
    label = scene()
    pred = watershed_instances(synth_probs(label)[:2])
    assert_recovers(label, pred)


def test_one_channel_splits_a_pair_with_a_neck_by_distance():
    shape = (40, 70)
    label = np.zeros(shape, np.int32)
    label[disk(shape, (20, 20), 12)] = 1
    label[disk(shape, (20, 44), 12) & (label == 0)] = 2  # overlapping disks: a neck between them
    label[disk(shape, (8, 62), 5)] = 3
    probs = synth_probs(label)[:1]
    pred = watershed_instances(probs)
    assert_recovers(label, pred)
    np.testing.assert_array_equal(watershed_instances(probs[0]), pred)  # H×W body alone


def test_no_overlap_and_consecutive_ids_on_noisy_input():
    rng = np.random.default_rng(3)
    probs = ndi.gaussian_filter(rng.random((3, 80, 90)), (0, 2, 2)).astype(np.float32)
    probs = (probs - probs.min()) / (probs.max() - probs.min())
    pred = watershed_instances(probs, PostprocessParams(min_size=0, min_seed_size=0))
    assert pred.shape == (80, 90)
    assert pred.max() > 3
    assert_consecutive(pred)


def test_empty_probabilities_give_no_instance():
    pred = watershed_instances(np.zeros((3, 67, 93), np.float32))
    assert pred.shape == (67, 93)
    assert not pred.any()


def test_component_without_seed_is_kept():
    label = np.zeros((40, 40), np.int32)
    label[disk(label.shape, (20, 20), 8)] = 1
    probs = np.zeros((3, 40, 40), np.float32)
    probs[0][label > 0] = 0.9
    probs[1][label > 0] = 0.9  # all boundary: seed score 0 everywhere
    assert not seed_markers(probs).any()
    pred = watershed_instances(probs)
    np.testing.assert_array_equal(pred, label)


def test_min_size_removes_small_objects_in_the_chain():
    label = scene()
    label[3:6, 40:43] = 9  # 9 pixels
    probs = synth_probs(label, sigma=0.5, noise=0.0)
    kept = watershed_instances(probs, PostprocessParams(min_size=0, min_seed_size=0))
    removed = watershed_instances(probs, PostprocessParams(min_size=16, min_seed_size=0))
    assert kept[4, 41] > 0
    assert removed[4, 41] == 0
    assert removed.max() == kept.max() - 1


def test_holes_filled_per_nucleus_in_the_chain():
    shape = (40, 70)
    label = np.zeros(shape, np.int32)
    label[disk(shape, (20, 15), 11) & ~disk(shape, (20, 15), 3)] = 1  # a ring nucleus
    # Two nuclei enclosing a hole between them (a disk cut in half, centre empty).
    ring = disk(shape, (20, 50), 11) & ~disk(shape, (20, 50), 3)
    xx = np.arange(shape[1])[None, :].repeat(shape[0], 0)
    label[ring & (xx < 50)] = 2
    label[ring & (xx >= 50)] = 3
    probs = np.zeros((3, *shape), np.float32)
    probs[0] = label > 0
    probs[1] = make_targets(label, ("boundary",), boundary_width=1)[0]
    filled = watershed_instances(probs, PostprocessParams(min_seed_size=0))
    assert filled[20, 15] > 0 and filled[20, 15] == filled[20, 5]  # the ring's hole is filled
    assert filled[20, 50] == 0  # the hole between two nuclei stays background
    unfilled = watershed_instances(probs, PostprocessParams(min_seed_size=0, fill_holes=False))
    assert unfilled[20, 15] == 0


# --- the pieces ---------------------------------------------------------------------------


def test_foreground_mask_thresholds_body():
    probs = np.zeros((3, 2, 2), np.float32)
    probs[0] = [[0.2, 0.5], [0.51, 0.9]]
    np.testing.assert_array_equal(foreground_mask(probs), [[False, False], [True, True]])


def test_seed_score_subtracts_boundary_and_gap_and_clips():
    probs = np.array([[[0.9]], [[0.3]], [[0.2]]], np.float32)
    assert seed_score(probs)[0, 0] == pytest.approx(0.4)
    assert seed_score(probs[:2])[0, 0] == pytest.approx(0.6)
    probs[2] = 0.9
    assert seed_score(probs)[0, 0] == 0.0


def test_seed_score_body_alone_peaks_at_one_per_component():
    mask = np.zeros((30, 50), bool)
    mask[disk(mask.shape, (15, 12), 10)] = True
    mask[disk(mask.shape, (15, 40), 4)] = True
    score = seed_score(mask[None].astype(np.float32), mask=mask)
    assert score[15, 12] == pytest.approx(1.0)
    assert score[15, 40] == pytest.approx(1.0)
    assert score[0, 0] == 0.0
    with pytest.raises(ValueError, match="mask"):
        seed_score(mask[None].astype(np.float32))


def test_seed_markers_drop_small_seeds():
    probs = np.zeros((3, 20, 30), np.float32)
    probs[0, 2:12, 2:12] = 1.0  # a 100-pixel seed
    probs[0, 15:17, 20:22] = 1.0  # a 4-pixel seed
    assert seed_markers(probs, PostprocessParams(min_seed_size=0)).max() == 2
    seeds = seed_markers(probs, PostprocessParams(min_seed_size=5))
    assert seeds.max() == 1
    assert seeds[5, 5] == 1


def test_seed_dilation_grows_seeds_inside_the_mask():
    probs = np.zeros((3, 20, 20), np.float32)
    probs[0, 5:15, 5:15] = 0.8
    probs[1, 5:15, 5:15] = 0.5
    probs[1, 8:12, 8:12] = 0.0  # seed score 0.8 in the centre only
    small = seed_markers(probs, PostprocessParams(min_seed_size=0))
    grown = seed_markers(probs, PostprocessParams(min_seed_size=0, seed_dilation=2))
    assert small.sum() == 16
    assert grown.sum() > small.sum()
    assert not grown[probs[0] <= 0.5].any()


def test_channels_validation():
    with pytest.raises(ValueError, match="4 channels"):
        watershed_instances(np.zeros((4, 5, 5), np.float32))
    with pytest.raises(ValueError, match="'body'"):
        watershed_instances(np.zeros((1, 5, 5), np.float32), channels=("gap",))
    with pytest.raises(ValueError, match="valid names"):
        watershed_instances(np.zeros((1, 5, 5), np.float32), channels=("nucleus",))


def test_channels_in_another_order():
    label = scene()
    probs = synth_probs(label)
    reordered = probs[[2, 0, 1]]
    np.testing.assert_array_equal(
        watershed_instances(reordered, channels=("gap", "body", "boundary")), watershed_instances(probs)
    )


def test_raw_then_finish_equals_the_chain():
    probs = synth_probs(scene())
    params = PostprocessParams(min_size=40, fill_holes=False)
    np.testing.assert_array_equal(
        finish_instances(watershed_raw(probs, params), params), watershed_instances(probs, params)
    )


def test_remove_small_objects_keeps_exactly_min_size():
    label = np.zeros((10, 10), np.int32)
    label[0, :4] = 1  # 4 pixels
    label[2, :5] = 2  # 5 pixels
    label[4, :3] = 7  # 3 pixels
    out = remove_small_objects(label, 4)
    assert sorted(np.unique(out).tolist()) == [0, 1, 2]
    np.testing.assert_array_equal(remove_small_objects(label, 0), label)


def test_relabel_consecutive_keeps_order():
    label = np.array([[0, 5, 5], [9, 0, 2]])
    np.testing.assert_array_equal(relabel_consecutive(label), [[0, 2, 2], [3, 0, 1]])


def test_fill_holes_per_object_fills_own_holes_only():
    label = np.zeros((12, 24), np.int32)
    label[1:8, 1:8] = 1
    label[3:5, 3:5] = 0  # a hole in object 1
    label[1:8, 10:14] = 2
    label[1:8, 15:19] = 3
    label[1:8, 14] = 0
    label[1, 14] = 2
    label[7, 14] = 3  # a background slot closed by objects 2 and 3
    label[9:12, 20:24] = 4
    label[10, 23] = 0  # a notch at the image edge: not a hole
    out = fill_holes_per_object(label)
    assert (out[3:5, 3:5] == 1).all()
    assert (out[2:7, 14] == 0).all()
    assert out[10, 23] == 0
    np.testing.assert_array_equal(out[label > 0], label[label > 0])


def test_fill_holes_keeps_a_nucleus_inside_another_ones_hole():
    label = np.zeros((15, 15), np.int32)
    label[disk(label.shape, (7, 7), 7)] = 1
    label[disk(label.shape, (7, 7), 4)] = 0
    label[disk(label.shape, (7, 7), 1)] = 2
    out = fill_holes_per_object(label)
    assert out[7, 7] == 2
    assert out[7, 4] == 0  # the ring's hole touches two nuclei: left alone


def brute_fill_holes(label):
    """Loop over background regions: fill each enclosed one whose neighbours are one object."""
    out = label.copy()
    regions, n = ndi.label(label == 0)
    cross = ndi.generate_binary_structure(2, 1)
    for r in range(1, n + 1):
        region = regions == r
        if region[0].any() or region[-1].any() or region[:, 0].any() or region[:, -1].any():
            continue
        ring = ndi.binary_dilation(region, cross) & ~region
        owners = np.unique(label[ring])
        if len(owners) == 1 and owners[0] > 0:
            out[region] = owners[0]
    return out


@pytest.mark.parametrize("seed", range(8))
def test_fill_holes_matches_brute_force(seed):
    rng = np.random.default_rng(seed)
    label, _ = ndi.label(ndi.gaussian_filter(rng.random((40, 50)), 1.5) > 0.5)
    label = label.astype(np.int32)
    # Punch holes and draw rings so that there are holes to fill.
    label[rng.random(label.shape) < 0.08] = 0
    np.testing.assert_array_equal(fill_holes_per_object(label), brute_fill_holes(label))


def test_fill_holes_agrees_with_binary_fill_holes_for_one_object():
    rng = np.random.default_rng(0)
    mask = ndi.gaussian_filter(rng.random((40, 50)), 2) > 0.48
    label = mask.astype(np.int32)
    np.testing.assert_array_equal(fill_holes_per_object(label) > 0, ndi.binary_fill_holes(mask))


@pytest.mark.parametrize("seed", range(4))
def test_component_distance_matches_whole_image_transform(seed):
    rng = np.random.default_rng(seed)
    mask = ndi.gaussian_filter(rng.random((50, 60)), 2) > 0.5
    distance, components, n = _component_distance(mask)
    np.testing.assert_allclose(distance, ndi.distance_transform_edt(mask), atol=1e-5)
    assert n == ndi.label(mask, np.ones((3, 3)))[1]


def test_grow_expands_instances_into_the_background_only():
    label = np.zeros((20, 30), np.int32)
    label[5:10, 5:10] = 1
    label[5:10, 12:17] = 2  # two pixels of background between 1 and 2
    base = PostprocessParams(min_size=0, fill_holes=False)
    assert np.array_equal(finish_instances(label, base), label)
    assert np.array_equal(finish_instances(label, dataclasses.replace(base, grow=0.9)), label), "under a pixel: no change"
    grown = finish_instances(label, dataclasses.replace(base, grow=1))
    assert (grown == 1).sum() == 25 + 4 * 5 and (grown == 2).sum() == 25 + 4 * 5  # the 4-neighbour ring, no corners
    assert np.array_equal(grown[label > 0], label[label > 0]), "no instance loses or swaps a pixel"
    wide = finish_instances(label, dataclasses.replace(base, grow=3))
    assert set(np.unique(wide[7, 10:12])) == {1, 2}, "the gap is shared, each pixel to its nearest instance"
    assert (wide[label == 1] == 1).all() and (wide[label == 2] == 2).all()
    assert PostprocessParams.from_dict({}).grow == 0.0


def test_grow_runs_after_the_size_filter_in_the_chain():
    # a 4-pixel speck is removed by min_size before growing could lift it over the limit
    probs = np.zeros((3, 24, 24), np.float32)
    probs[0, 4:6, 4:6] = probs[0, 10:18, 10:18] = 0.9
    out = watershed_instances(probs, PostprocessParams(body_threshold=0.5, seed_threshold=0.5, min_seed_size=0,
                                                       min_size=16, grow=2))
    assert out.max() == 1 and out[4:6, 4:6].max() == 0
    assert (out == 1).sum() > 64
