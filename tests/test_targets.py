"""Tests of competition.targets: body, boundary and gap channels of drawn label images."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage as ndi

from competition.targets import CHANNELS, make_targets


def disk(shape, center, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def touching_pair(shape=(40, 64)):
    """Two disks of radius 10 whose union is cut by the column x = 31: a straight contact."""
    union = disk(shape, (20, 21), 10) | disk(shape, (20, 41), 10)
    label = np.zeros(shape, np.int32)
    xx = np.arange(shape[1])[None, :].repeat(shape[0], 0)
    label[union & (xx < 31)] = 1
    label[union & (xx >= 31)] = 2
    return label


def distance_to(label, object_id):
    """Euclidean distance of every pixel to the nearest pixel of one object."""
    return ndi.distance_transform_edt(label != object_id)


def brute_targets(label, boundary_width, gap_width):
    """Pixel-by-pixel reference: look at every pixel of a disk around each pixel."""
    height, width = label.shape
    pad = max(boundary_width, gap_width)
    padded = np.pad(label, pad, mode="edge")
    out = np.zeros((3, height, width), np.float32)
    for i in range(height):
        for j in range(width):
            own = label[i, j]
            for channel, radius in ((1, boundary_width), (2, gap_width)):
                values = {
                    padded[i + pad + dy, j + pad + dx]
                    for dy in range(-radius, radius + 1)
                    for dx in range(-radius, radius + 1)
                    if dy * dy + dx * dx <= radius * radius
                }
                if channel == 1 and own > 0 and values != {own}:
                    out[1, i, j] = 1
                if channel == 2 and len(values - {0}) >= 2:
                    out[2, i, j] = 1
            out[0, i, j] = own > 0
    return out


def test_channel_order_is_fixed():
    assert CHANNELS == ("body", "boundary", "gap")


def test_body_is_label_foreground():
    label = touching_pair()
    targets = make_targets(label)
    np.testing.assert_array_equal(targets[0], (label > 0).astype(np.float32))


def test_output_dtype_values_and_shape_on_odd_shape():
    label = np.zeros((67, 93), np.int32)
    label[disk(label.shape, (30, 40), 12)] = 3
    label[disk(label.shape, (30, 64), 12) & (label == 0)] = 7
    targets = make_targets(label)
    assert targets.shape == (3, 67, 93)
    assert targets.dtype == np.float32
    assert set(np.unique(targets).tolist()) == {0.0, 1.0}


def test_gap_is_exactly_near_the_contact():
    label = touching_pair()
    gap = make_targets(label, ("gap",), gap_width=2)[0].astype(bool)
    near_both = (distance_to(label, 1) <= 2) & (distance_to(label, 2) <= 2)
    np.testing.assert_array_equal(gap, near_both)
    assert gap[20, 30] and gap[20, 31]  # the contact pixels themselves
    cols = np.flatnonzero(gap.any(axis=0))
    assert cols.min() >= 28 and cols.max() <= 33  # nothing far from the contact column


def test_gap_is_zero_for_separate_objects():
    label = np.zeros((40, 64), np.int32)
    label[disk(label.shape, (20, 15), 8)] = 1
    label[disk(label.shape, (20, 45), 8)] = 2  # 14 px apart
    assert not make_targets(label, ("gap",)).any()


def test_gap_covers_a_thin_background_valley():
    label = np.zeros((20, 30), np.int32)
    label[5:15, 3:14] = 1
    label[5:15, 16:27] = 2  # two columns of background between them
    gap = make_targets(label, ("gap",), gap_width=2)[0].astype(bool)
    assert gap[10, 14] and gap[10, 15]


def test_boundary_lies_inside_each_object_on_both_sides_of_a_contact():
    label = touching_pair()
    boundary = make_targets(label, ("boundary",), boundary_width=2)[0].astype(bool)
    assert not (boundary & (label == 0)).any()
    for object_id in (1, 2):
        inside = label == object_id
        expected = inside & (ndi.distance_transform_edt(inside) <= 2)
        np.testing.assert_array_equal(boundary & inside, expected)
    assert boundary[20, 30] and boundary[20, 31]  # each side of the contact
    assert not boundary[20, 21] and not boundary[20, 41]  # the centres


def test_boundary_width_sets_band_width():
    label = np.zeros((41, 41), np.int32)
    label[disk(label.shape, (20, 20), 15)] = 1
    for width in (1, 2, 3):
        boundary = make_targets(label, ("boundary",), boundary_width=width)[0].astype(bool)
        row = boundary[20, :20]  # from the left edge of the disk to the centre
        assert row[5 : 5 + width].all()
        assert not row[5 + width :].any()


def test_zero_objects_give_zeros():
    targets = make_targets(np.zeros((67, 93), np.int32))
    assert targets.shape == (3, 67, 93)
    assert not targets.any()


def test_empty_image_shape():
    assert make_targets(np.zeros((0, 5), np.int32)).shape == (3, 0, 5)


def test_object_cut_by_image_edge_has_no_boundary_along_the_edge():
    label = np.zeros((30, 30), np.int32)
    label[disk(label.shape, (0, 15), 10)] = 1  # half a disk, cut by the top edge
    boundary = make_targets(label, ("boundary",))[0].astype(bool)
    assert not boundary[0, 10:21].any()  # along the cut, away from the disk's own edge
    assert boundary[10, 15] and boundary[9, 15]  # the round edge has its band
    assert not boundary[5, 15]


def test_objects_touching_across_the_image_edge_get_a_gap():
    label = np.zeros((20, 20), np.int32)
    label[0:6, 0:10] = 1
    label[0:6, 10:20] = 2
    gap = make_targets(label, ("gap",))[0].astype(bool)
    assert gap[0, 9] and gap[0, 10]
    assert not gap[0, 0]


def test_channel_subset_and_order():
    label = touching_pair()
    full = make_targets(label)
    part = make_targets(label, ("gap", "body"))
    np.testing.assert_array_equal(part[0], full[2])
    np.testing.assert_array_equal(part[1], full[0])


def test_unknown_channel_lists_valid_names():
    with pytest.raises(ValueError, match="body.*boundary.*gap"):
        make_targets(np.zeros((4, 4), np.int32), ("body", "edges"))


def test_repeated_channel_rejected():
    with pytest.raises(ValueError, match="repeated"):
        make_targets(np.zeros((4, 4), np.int32), ("body", "body"))


def test_bad_width_rejected():
    with pytest.raises(ValueError, match="boundary_width"):
        make_targets(np.zeros((4, 4), np.int32), boundary_width=0)


def test_non_2d_label_rejected():
    with pytest.raises(ValueError, match="2-D"):
        make_targets(np.zeros((2, 4, 4), np.int32))


def test_large_and_sparse_ids_behave_like_small_ones():
    label = touching_pair()
    relabelled = np.where(label == 1, 70_000, np.where(label == 2, 5, 0)).astype(np.int64)
    np.testing.assert_array_equal(make_targets(relabelled), make_targets(label))


@pytest.mark.parametrize("seed", range(12))
def test_matches_brute_force_on_random_labels(seed):
    rng = np.random.default_rng(seed)
    height, width = rng.integers(5, 26, size=2)
    label = np.zeros((height, width), np.int32)
    for _ in range(rng.integers(0, 7)):
        center = rng.integers(0, height), rng.integers(0, width)
        label[disk((height, width), center, rng.integers(1, 7))] = rng.integers(1, 300)
    boundary_width, gap_width = (int(w) for w in rng.integers(1, 5, size=2))
    fast = make_targets(label, boundary_width=boundary_width, gap_width=gap_width)
    np.testing.assert_array_equal(fast, brute_targets(label, boundary_width, gap_width))
