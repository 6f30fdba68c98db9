"""Submissions: writing, validation (every problem found), scoring and the leaderboard."""

from __future__ import annotations

import csv
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from competition import leaderboard
from competition.errors import UserError
from competition.rle import encode
from competition.scoring import InvalidSubmission, format_report, score_submission
from competition.solution import read_solution, write_solution
from competition.submission import read_sample_ids, validate_submission, write_submission

REPO = Path(__file__).resolve().parents[1]


def labels_fixture() -> dict[str, np.ndarray]:
    a = np.zeros((20, 30), np.int32)
    a[2:8, 2:8] = 1
    a[10:18, 5:20] = 2
    b = np.zeros((25, 17), np.int32)
    b[0:5, 0:5] = 4
    c = np.zeros((12, 12), np.int32)  # no object
    return {"img_a": a, "img_b": b, "img_c": c}


def write_rows(path: Path, rows, header=("ImageId", "EncodedPixels")) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_write_submission_rows_and_empty_image(tmp_path):
    labels = labels_fixture()
    path = write_submission(tmp_path / "sub.csv", labels)
    rows = list(csv.reader(path.open()))
    assert rows[0] == ["ImageId", "EncodedPixels"]
    assert [r[0] for r in rows[1:]] == ["img_a", "img_a", "img_b", "img_c"]
    assert rows[-1] == ["img_c", ""]


def test_write_submission_never_overwrites(tmp_path):
    path = write_submission(tmp_path / "sub.csv", labels_fixture())
    before = path.read_bytes()
    with pytest.raises(UserError, match="already exists"):
        write_submission(path, {"x": np.ones((2, 2), np.int32)})
    assert path.read_bytes() == before


def test_write_submission_fills_missing_ids_in_given_order(tmp_path):
    labels = labels_fixture()
    path = write_submission(tmp_path / "sub.csv", {"img_b": labels["img_b"]}, ["img_z", "img_b"])
    rows = list(csv.reader(path.open()))[1:]
    assert rows == [["img_z", ""], ["img_b", encode(labels["img_b"] == 4)]]


def test_write_submission_leaves_no_temp_file_on_error(tmp_path):
    with pytest.raises(ValueError):
        write_submission(tmp_path / "sub.csv", {"a": np.zeros((2, 2, 2), np.int32)})
    assert list(tmp_path.iterdir()) == []


def test_valid_submission_has_no_problems(tmp_path):
    labels = labels_fixture()
    path = write_submission(tmp_path / "sub.csv", labels)
    shapes = {k: v.shape for k, v in labels.items()}
    sub, problems = validate_submission(path, required_ids=list(labels), shapes=shapes)
    assert problems == []
    assert len(sub.rles["img_a"]) == 2


def test_validation_reports_every_problem_with_its_image(tmp_path):
    path = write_rows(
        tmp_path / "bad.csv",
        [
            ("img_a", "1 3 2 2"),  # overlapping runs within one object
            ("img_a", "1 5"),
            ("img_a", "3 4"),  # shares pixels 3..5 with the previous object
            ("img_b", "420 10"),  # past the 25x17=425 pixels
            ("img_b", "5 x"),
            ("img_x", "1 1"),  # not a test image
        ],
    )
    shapes = {"img_a": (20, 30), "img_b": (25, 17), "img_c": (12, 12)}
    _, problems = validate_submission(path, required_ids=["img_a", "img_b", "img_c"], shapes=shapes)
    text = [str(p) for p in problems]
    assert any(t.startswith("img_a: line 2: overlapping runs") for t in text)
    assert "img_a: 3 pixels belong to more than one object" in text
    assert any(t.startswith("img_b: line 5") and "past the image" in t for t in text)
    assert any(t.startswith("img_b: line 6: not an integer") for t in text)
    assert "img_c: missing from the submission" in text
    assert "img_x: not an image of this test set" in text
    assert len(problems) == 6


def test_validation_checks_header(tmp_path):
    path = write_rows(tmp_path / "h.csv", [("a", "1 1")], header=("Id", "Pixels"))
    _, problems = validate_submission(path)
    assert "expected 'ImageId,EncodedPixels'" in str(problems[0])


def test_validation_of_missing_file(tmp_path):
    _, problems = validate_submission(tmp_path / "nope.csv")
    assert "cannot read" in str(problems[0])


@pytest.mark.parametrize("content, problem", [
    (bytes(range(256)) * 4, r"not a text CSV: byte 0x80 at line 2 is not UTF-8"),
    (b"ImageId,EncodedPixels\nabc,1 1\n\x00\x00\x00", r"not a text CSV: a NUL byte at line 3"),
    (b"\x1f\x8b\x08\x00" + bytes(200), r"not a text CSV"),  # a gzip file named .csv
])
def test_validation_of_a_binary_file_names_it(tmp_path, content, problem):
    path = tmp_path / "binary.csv"
    path.write_bytes(content)
    _, problems = validate_submission(path)
    assert len(problems) == 1
    assert re.search(problem, str(problems[0]))
    assert "binary.csv" in str(problems[0])


def test_identical_rows_overlap(tmp_path):
    path = write_rows(tmp_path / "dup.csv", [("a", "1 4"), ("a", "1 4")])
    _, problems = validate_submission(path)
    assert [str(p) for p in problems] == ["a: 4 pixels belong to more than one object"]


def test_touching_objects_do_not_overlap(tmp_path):
    path = write_rows(tmp_path / "touch.csv", [("a", "1 4"), ("a", "5 4 20 2")])
    assert validate_submission(path)[1] == []


def test_sample_ids_read_in_order(tmp_path):
    path = write_rows(tmp_path / "sample.csv", [("b", "1 1"), ("a", "1 1")])
    assert read_sample_ids(path) == ["b", "a"]


def test_score_submission_perfect_and_ignored(tmp_path):
    labels = labels_fixture()
    solution = write_solution(labels, tmp_path / "solution.csv", {"img_a": "Public", "img_b": "Private", "img_c": "Ignored"})
    sub = write_submission(tmp_path / "sub.csv", labels)
    scored = score_submission(sub, solution)
    assert scored.score == 1.0
    assert [s.image_id for s in scored.result.images] == ["img_a", "img_b"]
    assert scored.groups() == {"private": 1.0, "public": 1.0}


def test_score_submission_partial(tmp_path):
    labels = labels_fixture()
    solution = write_solution(labels, tmp_path / "solution.csv")
    pred = dict(labels)
    pred["img_a"] = np.where(labels["img_a"] == 2, 0, labels["img_a"])  # miss one of two
    sub = write_submission(tmp_path / "sub.csv", pred)
    scored = score_submission(sub, solution, {"img_a": "fluorescence", "img_b": "histology", "img_c": "histology"})
    assert scored.score == pytest.approx((0.5 + 1 + 1) / 3)
    assert scored.groups()["fluorescence"] == pytest.approx(0.5)
    assert format_report(scored)[-1] == f"score {scored.score:.4f}"
    by_type = scored.errors_by_group()
    assert (by_type["fluorescence"].matched, by_type["fluorescence"].missed) == (1, 1)
    assert by_type["histology"].matched == by_type["histology"].n_true
    errors = [line for line in format_report(scored) if line.startswith("errors at IoU 0.5")]
    assert errors[0].startswith("errors at IoU 0.5, fluorescence: 2 true: 1 matched (mean IoU 1.000), 1 missed")
    assert len(errors) == 2


def test_score_rejects_invalid_submission(tmp_path):
    labels = labels_fixture()
    solution = write_solution(labels, tmp_path / "solution.csv")
    sub = write_rows(tmp_path / "sub.csv", [("img_a", "1 1")])
    with pytest.raises(InvalidSubmission) as info:
        score_submission(sub, solution)
    assert {p.image_id for p in info.value.problems} == {"img_b", "img_c"}


def test_solution_round_trip(tmp_path):
    labels = labels_fixture()
    path = write_solution(labels, tmp_path / "solution.csv", "Private")
    back = read_solution(path)
    assert list(back) == list(labels)
    assert back["img_c"].rles == ()
    assert back["img_b"].usage == "Private"
    for image_id, label in labels.items():
        assert np.array_equal(back[image_id].label() > 0, label > 0)


def test_leaderboard_appends_and_sorts(tmp_path):
    board = tmp_path / "lb.csv"
    sub = write_rows(tmp_path / "s.csv", [])
    for score in (0.3, 0.5, 0.4):
        leaderboard.append_row(sub, "sol.csv", n_images=3, score=score, interval=(0.1, 0.9), groups={"histology": 0.2}, path=board)
    rows = leaderboard.read_rows(board)
    assert [r["score"] for r in rows] == ["0.3000", "0.5000", "0.4000"]
    assert rows[0]["histology"] == "0.2000"
    table = leaderboard.format_rows(rows).splitlines()
    assert table[1].startswith("0.5000")
    assert table[3].startswith("0.3000")


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, "-m", "competition", *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=120)


@pytest.mark.slow
def test_cli_score_validate_and_leaderboard(tmp_path):
    labels = labels_fixture()
    solution = write_solution(labels, tmp_path / "solution.csv")
    sub = write_submission(tmp_path / "sub.csv", labels)
    board = tmp_path / "lb.csv"

    done = run_cli("score", sub, solution, "--leaderboard", board, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == "score 1.0000"
    assert leaderboard.read_rows(board)[0]["score"] == "1.0000"

    done = run_cli("validate", sub, "--solution", solution, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.startswith("valid:")

    bad = write_rows(tmp_path / "bad.csv", [("img_a", "1 2 2 2")])
    done = run_cli("validate", bad, "--solution", solution, cwd=tmp_path)
    assert done.returncode == 1
    assert "problem img_b: missing from the submission" in done.stdout

    done = run_cli("score", bad, solution, "--leaderboard", board, cwd=tmp_path)
    assert done.returncode == 2
    assert "error:" in done.stderr and "not a valid submission" in done.stderr
    assert len(leaderboard.read_rows(board)) == 1

    done = run_cli("leaderboard", "--path", board, cwd=tmp_path)
    assert done.returncode == 0
    assert "1.0000" in done.stdout


@pytest.mark.slow
def test_cli_make_solution_from_a_fold_scores_like_the_leaderboard(tmp_path):
    from competition.data.io import load_split
    from competition.synth import generate_dataset

    data = generate_dataset(tmp_path / "data", n_train=6, n_test=3, seed=3)
    train = load_split(data.train_dir)[0]
    folds = tmp_path / "folds.csv"
    folds.write_text("ImageId,type,fold\n" + "".join(f"{s.image_id},fluorescence,{i % 2}\n" for i, s in enumerate(train)))

    done = run_cli("make-solution", data.train_dir, tmp_path / "fold1.csv", "--ids", folds, "--fold", 1, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    solution = read_solution(tmp_path / "fold1.csv")
    fold1 = {s.image_id: s.label for i, s in enumerate(train) if i % 2 == 1}
    assert set(solution) == set(fold1)
    for image_id, label in fold1.items():
        assert solution[image_id].label().max() == len(np.unique(label)) - 1

    # the fold's own labels, submitted, score 1.0 against it
    sub = write_submission(tmp_path / "sub.csv", fold1)
    done = run_cli("score", sub, tmp_path / "fold1.csv", "--no-record", cwd=tmp_path)
    assert done.stdout.strip().splitlines()[-1] == "score 1.0000"

    done = run_cli("make-solution", data.train_dir, tmp_path / "fold1.csv", "--ids", folds, "--fold", 1, cwd=tmp_path)
    assert done.returncode == 2
    assert "exists" in done.stderr
