"""The foundation on the real competition data (skipped when ../shared/dsb2018 is absent)."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from competition.rle import label_to_rles, rles_to_label
from competition.scoring import score_submission
from competition.solution import write_solution
from competition.submission import validate_submission, write_submission

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


@pytest.fixture(scope="module")
def train_labels(real_data):
    from competition.data.io import load_split

    samples, skipped = load_split(real_data / "stage1_train")
    assert skipped == []
    return {s.image_id: s.label for s in samples}


def test_every_training_image_is_labelled(train_labels):
    assert len(train_labels) == 664
    assert all(label.max() > 0 for label in train_labels.values())


def test_rle_round_trip_of_every_training_mask(train_labels):
    n_objects = 0
    for image_id, label in train_labels.items():
        rles = label_to_rles(label)
        n_objects += len(rles)
        back = rles_to_label(rles, label.shape)
        # label_to_rles orders objects by id, so ids come back relabelled 1..N in that order
        ids = np.unique(label)[1:]
        lut = np.zeros(label.max() + 1, np.int32)
        lut[ids] = np.arange(1, len(ids) + 1)
        assert np.array_equal(back, lut[label]), image_id
    assert n_objects > 28000


def test_training_labels_score_one_against_themselves(train_labels, tmp_path):
    solution = write_solution(train_labels, tmp_path / "solution.csv")
    submission = write_submission(tmp_path / "submission.csv", train_labels)
    _, problems = validate_submission(submission, required_ids=list(train_labels), shapes={k: v.shape for k, v in train_labels.items()})
    assert problems == []
    scored = score_submission(submission, solution)
    assert len(scored.result.images) == 664
    assert scored.score == 1.0


def test_sample_submission_validates_against_test_images(real_data):
    done = subprocess.run(
        [
            sys.executable, "-m", "competition", "validate",
            str(real_data / "stage1_sample_submission.csv"),
            "--sample", str(real_data / "stage1_sample_submission.csv"),
            "--data", str(real_data / "stage1_test"),
        ],
        capture_output=True, text=True, timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "valid:" in done.stdout and "65 images" in done.stdout
