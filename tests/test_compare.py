"""Two submissions of one test set compared (``report --against``): agreement per image, the
least agreeing images shown with both sets of contours."""

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
def pair(tmp_path_factory) -> dict:
    """Drawn test images and two submissions: the true labels, and the true labels with the
    objects of one histology image cut to every other one."""
    from competition.submission import write_submission

    root = tmp_path_factory.mktemp("compare")
    data = make_dataset(root / "data", n_test_per_type=2)
    first = {i: label for i, (_, label) in data["test"].items()}
    changed = next(i for i, (kind, _) in data["test"].items() if kind == "histology")
    second = dict(first)
    cut = first[changed].copy()
    cut[(cut % 2 == 0) & (cut > 0)] = 0
    second[changed] = cut
    return {"data": data, "split": root / "data" / "stage1_test", "changed": changed,
            "n_objects": int(first[changed].max()), "n_kept": int(len(np.unique(cut)) - 1),
            "first": write_submission(root / "first.csv", first),
            "second": write_submission(root / "second.csv", second)}


def table_rows(text: str) -> list[list[str]]:
    return [re.findall(r"<td>(.*?)</td>", row) for row in re.findall(r"<tr>(<td>.*?)</tr>", text)]


def test_comparison_puts_the_changed_image_first_with_its_counts_and_both_contours(pair, tmp_path):
    from PIL import Image

    from competition.compare import OTHER_COLOUR, build_comparison
    from competition.report import PRED_COLOUR

    index = build_comparison(pair["first"], pair["second"], data_dir=pair["split"], out_dir=tmp_path / "c",
                             n_examples=1)
    text = index.read_text()
    histology = text.split("<h2>histology")[1].split("</table>")[0]
    (row,) = table_rows(histology)
    image_id, agreement, n_first, n_second, both, only_first, only_second, cell = row
    assert pair["changed"] in image_id
    n, kept = pair["n_objects"], pair["n_kept"]
    assert (int(n_first), int(n_second), int(both), int(only_first), int(only_second)) == (n, kept, kept, n - kept, 0)
    # every kept object matches exactly: TP = kept, FP = 0, FN = n - kept at every threshold
    assert float(agreement) == pytest.approx(kept / n, abs=1e-4)
    panel = np.asarray(Image.open(index.parent / re.search(r'src="([^"]+)"', cell).group(1)))
    half = panel.shape[1] // 2
    assert (panel[:, :half] == PRED_COLOUR).all(axis=2).any() and not (panel[:, :half] == OTHER_COLOUR).all(axis=2).any()
    assert (panel[:, half:] == OTHER_COLOUR).all(axis=2).any() and not (panel[:, half:] == PRED_COLOUR).all(axis=2).any()
    # the other types agree everywhere
    summary = text.split("<h2>")[0]
    for kind in ("fluorescence", "brightfield"):
        (cells,) = [r for r in table_rows(summary) if r[0] == kind]
        assert cells[2] == "1.0000" and cells[3] == cells[4] == cells[5]


def test_agreement_is_symmetric_and_one_with_itself(pair, tmp_path):
    from competition.compare import build_comparison

    def overall(a, b, name):
        text = build_comparison(a, b, data_dir=pair["split"], out_dir=tmp_path / name).read_text()
        return float(re.search(r"over \d+ images: <b>([0-9.]+)</b>", text).group(1))

    assert overall(pair["first"], pair["first"], "same") == 1.0
    forward, backward = overall(pair["first"], pair["second"], "ab"), overall(pair["second"], pair["first"], "ba")
    assert forward == backward < 1.0


def test_submissions_of_different_images_are_refused(pair, tmp_path):
    from competition.compare import build_comparison
    from competition.errors import UserError
    from competition.submission import write_submission

    fewer = {i: label for i, (_, label) in list(pair["data"]["test"].items())[1:]}
    other = write_submission(tmp_path / "fewer.csv", fewer)
    with pytest.raises(UserError, match="cover different images"):
        build_comparison(pair["first"], other, data_dir=pair["split"], out_dir=tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_report_against_by_subprocess(pair, tmp_path):
    args = [sys.executable, "-m", "competition", "report", str(pair["first"]), "--against", str(pair["second"]),
            "--data", str(pair["split"]), "--out", str(tmp_path / "c")]
    out = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"comparison {tmp_path / 'c' / 'index.html'}"
    refused = subprocess.run(args + ["--solution", str(pair["split"].parent / "stage1_solution.csv")], cwd=REPO,
                             capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--against compares two submissions" in refused.stderr
