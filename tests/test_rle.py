"""RLE: known vectors, round trips, and every validation error."""

from __future__ import annotations

import numpy as np
import pytest

from competition.errors import RLEError
from competition.rle import decode, encode, label_to_rles, parse, rles_to_label


def naive_encode(mask: np.ndarray) -> str:
    """Per-pixel reference: walk the column-major pixels one by one."""
    out, run_start, prev = [], 0, False
    pixels = [bool(mask[r, c]) for c in range(mask.shape[1]) for r in range(mask.shape[0])]
    for i, on in enumerate(pixels + [False], start=1):
        if on and not prev:
            run_start = i
        if prev and not on:
            out += [run_start, i - run_start]
        prev = on
    return " ".join(map(str, out))


def test_known_vector_column_major():
    # 3 rows x 2 columns; pixel numbers are 1 2 3 down column 0, then 4 5 6.
    mask = np.array([[1, 0], [1, 1], [0, 1]], dtype=bool)
    assert encode(mask) == "1 2 5 2"


def test_known_vector_decode():
    expected = np.array([[0, 1, 0], [1, 1, 0]], dtype=bool)
    assert np.array_equal(decode("2 3", (2, 3)), expected)


def test_empty_mask_encodes_to_empty_string():
    assert encode(np.zeros((5, 4), bool)) == ""


def test_full_mask():
    assert encode(np.ones((4, 5), bool)) == "1 20"


def test_empty_string_decodes_to_empty_mask():
    assert not decode("", (3, 3)).any()


@pytest.mark.parametrize("shape", [(67, 93), (1, 1), (1, 50), (50, 1), (256, 256)])
def test_round_trip_random_masks(shape):
    rng = np.random.default_rng(sum(shape))
    for density in (0.05, 0.5, 0.95):
        mask = rng.random(shape) < density
        assert np.array_equal(decode(encode(mask), shape), mask)


def test_encode_matches_naive_reference():
    rng = np.random.default_rng(1)
    for _ in range(20):
        shape = tuple(rng.integers(1, 40, size=2))
        mask = rng.random(shape) < rng.random()
        assert encode(mask) == naive_encode(mask)


def test_label_round_trip_odd_shape():
    rng = np.random.default_rng(2)
    label = rng.integers(0, 6, size=(67, 93)).astype(np.int32)
    rles = label_to_rles(label)
    back = rles_to_label(rles, label.shape)
    # ids come back in increasing order of the original ids: the same partition, same ids.
    assert np.array_equal(back, label)


def test_label_to_rles_skips_missing_ids_and_matches_encode():
    label = np.zeros((10, 12), np.int32)
    label[1:3, 1:3] = 7
    label[5:9, 4:6] = 3
    rles = label_to_rles(label)
    assert rles == [encode(label == 3), encode(label == 7)]


def test_label_to_rles_empty_label():
    assert label_to_rles(np.zeros((8, 8), np.int32)) == []


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ("1 2 3", "odd number"),
        ("1 x", "not an integer"),
        ("0 3", "non-positive start"),
        ("-1 3", "non-positive start"),
        ("4 0", "non-positive length"),
        ("10 2 3 2", "not sorted"),
        ("3 2 3 1", "not sorted"),
        ("1 5 4 2", "overlapping"),
        ("22 5", "past the image"),
    ],
)
def test_decode_errors(rle, message):
    with pytest.raises(RLEError, match=message):
        decode(rle, (5, 5))


def test_adjacent_runs_are_valid():
    starts, lengths = parse("1 2 3 2", 25)
    assert starts.tolist() == [1, 3]
    assert lengths.tolist() == [2, 2]


def test_run_ending_on_last_pixel_is_valid():
    assert decode("24 2", (5, 5))[-1, -1]


def test_rles_to_label_rejects_overlap():
    with pytest.raises(RLEError, match="object 2 overlaps object 1"):
        rles_to_label(["1 5", "3 2"], (5, 5))


def test_rles_to_label_overlap_allowed_keeps_first():
    label = rles_to_label(["1 5", "3 4"], (5, 5), allow_overlap=True)
    assert label.ravel(order="F")[:8].tolist() == [1, 1, 1, 1, 1, 2, 0, 0]


def test_rles_to_label_names_the_bad_object():
    with pytest.raises(RLEError, match="object 2: odd number"):
        rles_to_label(["1 5", "7 1 9"], (5, 5))
