"""The HTML report: written, self-contained, with scores when a solution is given."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from test_submit import make_dataset

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def drawn(tmp_path_factory) -> dict:
    """Drawn data and a submission predicting each test label with one object dropped."""
    from competition.submission import write_submission

    root = tmp_path_factory.mktemp("report")
    data = make_dataset(root / "data", n_test_per_type=2)
    labels = {}
    for image_id, (_, label) in data["test"].items():
        pred = label.copy()
        pred[pred == pred.max()] = 0
        labels[image_id] = pred
    sub = write_submission(root / "sub.csv", labels)
    return {"root": root, "data": root / "data", "sub": sub, "test": data["test"]}


def image_sources(index: Path) -> list[str]:
    return re.findall(r'<img src="([^"]+)"', index.read_text())


def test_report_with_solution_has_scores_and_every_image_it_references(drawn, tmp_path):
    from competition.report import TRUE_COLOUR, build_report

    index = build_report(drawn["sub"], solution=drawn["data"] / "stage1_solution.csv",
                         data_dir=drawn["data"] / "stage1_test", out_dir=tmp_path / "r", n_examples=1)
    assert index == tmp_path / "r" / "index.html"
    sources = image_sources(index)
    assert "histogram.png" in sources
    assert len(sources) == 1 + 3 * 2  # worst and best of each of the 3 types
    for src in sources:
        assert (index.parent / src).is_file(), src
    text = index.read_text()
    for kind in ("fluorescence", "histology", "brightfield"):
        assert f"type {kind}" in text
    assert "score <b>" in text
    # each test image lost one nucleus: per type, 2 missed (nothing predicted there), no other error
    assert "Where the score is lost (IoU 0.5)" in text
    for kind in ("fluorescence", "histology", "brightfield"):
        row = re.search(rf"<tr><td>{kind}</td>((?:<td>[^<]*</td>)+)</tr>", text.split("Where the score is lost")[1])
        true, matched, iou, missed, merged, split, outline, pred, background, on_nuclei = re.findall(r"<td>([^<]*)</td>", row.group(1))
        assert int(true) - int(matched) == int(missed) == 2
        assert (merged, split, outline, background, on_nuclei) == ("0", "0", "0", "0", "0")
        assert int(pred) == int(matched) and iou == "1.000"
    from PIL import Image

    overlay = np.asarray(Image.open(index.parent / next(s for s in sources if s.startswith("overlay-"))))
    assert (overlay == TRUE_COLOUR).all(axis=2).any()


def test_report_without_solution_shows_object_counts(drawn, tmp_path):
    from competition.report import build_report

    index = build_report(drawn["sub"], data_dir=drawn["data"] / "stage1_test", out_dir=tmp_path / "r")
    text = index.read_text()
    assert "no solution given" in text
    assert "score <b>" not in text
    assert all((index.parent / s).is_file() for s in image_sources(index))
    assert len(image_sources(index)) == 1 + 6  # every test image once (types of 2 < 2 * 3 examples)


def test_overlay_draws_contours_in_two_colours():
    from competition.report import PRED_COLOUR, TRUE_COLOUR, contour_mask, overlay

    label = np.zeros((300, 300), np.int32)
    label[100:150, 100:150] = 1
    edge = contour_mask(label)
    assert edge.sum() == 4 * 49
    assert not edge[110:140, 110:140].any()
    shifted = np.roll(label, 20, axis=1)
    out = overlay(None, label, shifted)
    assert out.shape == (300, 300, 3)
    assert (out[100, 100] == PRED_COLOUR).all()
    assert (out[100, 169] == TRUE_COLOUR).all()


def test_report_cli_by_subprocess(drawn, tmp_path):
    out = subprocess.run([sys.executable, "-m", "competition", "report", str(drawn["sub"]), "--solution",
                          str(drawn["data"] / "stage1_solution.csv"), "--out", str(tmp_path / "r")],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    index = tmp_path / "r" / "index.html"
    assert out.stdout.strip() == f"report {index}"
    assert all((index.parent / s).is_file() for s in image_sources(index))
