"""The expected score from a holdout calibration, and the cross-fitted tuning."""

from __future__ import annotations

import numpy as np
import pytest

from competition.errors import DataError
from competition.expected import expected_score, read_calibration, write_calibration


def calibration(n=40, seed=0):
    """Holdout images whose score falls with their distance to the training conditions."""
    rng = np.random.default_rng(seed)
    d = rng.uniform(0, 4, n)
    return [{"image_id": f"h{i}", "type": "fluorescence" if i % 4 else "histology",
             "score": float(np.clip(0.7 - 0.15 * d[i] + rng.normal(0, 0.02), 0, 1)), "distance": float(d[i])}
            for i in range(n)]


def test_test_images_far_from_training_expect_less(tmp_path):
    path = write_calibration(tmp_path / "cal.json", calibration(), key={"tta": "flips"})
    cal = read_calibration(path)
    near = expected_score({"a": "fluorescence", "b": "fluorescence"}, {"a": 0.2, "b": 0.3}, cal)
    far = expected_score({"a": "fluorescence", "b": "fluorescence"}, {"a": 3.5, "b": 3.8}, cal)
    assert near["score"] > far["score"] + 0.3
    assert near["interval"][0] <= near["score"] <= near["interval"][1]
    assert 0.55 < near["score"] < 0.72 and 0.05 < far["score"] < 0.25
    assert "kernel regression" in near["method"]


def test_beyond_the_farthest_holdout_image_nothing_is_extrapolated(tmp_path):
    cal = read_calibration(write_calibration(tmp_path / "c.json", calibration(), key={}))
    at_edge = expected_score({"a": "fluorescence"}, {"a": 4.0}, cal)["score"]
    beyond = expected_score({"a": "fluorescence"}, {"a": 40.0}, cal)["score"]
    assert beyond == pytest.approx(at_edge, abs=1e-3)


def test_a_type_with_few_holdout_images_borrows_from_all(tmp_path):
    rows = calibration()
    rows = [r for r in rows if r["type"] == "fluorescence"] + [{**rows[0], "type": "brightfield"}]
    cal = read_calibration(write_calibration(tmp_path / "c.json", rows, key={}))
    out = expected_score({"x": "brightfield"}, {"x": 1.0}, cal)
    assert out["by_type"]["brightfield"] == pytest.approx(0.55, abs=0.05)


@pytest.mark.parametrize("text", ["", "{}", '{"rows": [{"score": "x"}]}'])
def test_a_bad_calibration_file_names_itself(tmp_path, text):
    path = tmp_path / "bad.json"
    path.write_text(text)
    with pytest.raises(DataError, match="bad.json"):
        read_calibration(path)


def test_crossfit_scores_each_part_with_parameters_tuned_without_it(monkeypatch):
    from competition import tuning
    from competition.ensemble_tuning import condition_parts, crossfit_postprocess
    from competition.postprocess import PostprocessParams

    rng = np.random.default_rng(0)
    samples, conditions = {}, {}
    for i in range(9):
        label = np.zeros((32, 32), np.int32)
        label[8:20, 8:20] = 1
        probs = np.zeros((3, 32, 32), np.float32)
        probs[0] = (label > 0) * rng.uniform(0.6, 0.9)
        samples[f"i{i}"] = (probs, label)
        conditions[f"i{i}"] = f"c{i % 3}"
    parts = condition_parts(samples, conditions, 3)
    assert len(set(parts.values())) == 3
    for c in ("c0", "c1", "c2"):
        assert len({parts[i] for i in samples if conditions[i] == c}) == 1  # conditions stay whole
    seen = []
    real = tuning.tune_postprocess

    def spy(train, *a, **k):
        seen.append({id(p) for p, _ in train})
        return real(train, *a, **k)

    monkeypatch.setattr(tuning, "tune_postprocess", spy)
    out = crossfit_postprocess(samples, conditions, {"body_threshold": (0.5, 0.7)}, PostprocessParams(),
                               channels=("body", "boundary", "gap"))
    assert out["n_parts"] == 3 and len(out["params"]) == 3
    for p, used in enumerate(seen):
        held = {id(samples[i][0]) for i, q in out["parts"].items() if q == p}
        assert not used & held
    assert 0.0 <= out["score"] <= 1.0


def test_scores_by_condition_biggest_first():
    from competition.calibration import scores_by_condition

    out = scores_by_condition({"a": 0.2, "b": 0.4, "c": 1.0, "d": 0.5}, {"a": "x", "b": "x", "c": "y"})
    assert list(out) == ["x", "unknown", "y"]
    assert out["x"] == {"score": 0.3, "n_images": 2}
    assert out["unknown"]["n_images"] == 1


def test_each_type_reports_the_holdout_evidence_it_rests_on(tmp_path):
    from competition.submit import support_lines

    cal = read_calibration(write_calibration(tmp_path / "c.json", calibration(n=80), key={}))
    out = expected_score({"a": "fluorescence", "b": "fluorescence", "c": "histology", "d": "histology"},
                         {"a": 2.0, "b": 2.1, "c": 9.0, "d": 12.0}, cal)
    fluo, histo = out["support"]["fluorescence"], out["support"]["histology"]
    assert (fluo["n_test"], fluo["n_holdout"], fluo["holdout_of"], fluo["beyond_farthest"]) == (2, 60, "fluorescence", 0)
    assert (histo["n_test"], histo["n_holdout"], histo["beyond_farthest"]) == (2, 20, 2)
    # mid-range test images weigh many holdout images; those beyond the farthest, a few at the edge
    assert fluo["effective_holdout"] > 10 > histo["effective_holdout"] >= 1
    for kind in ("fluorescence", "histology"):
        lo, hi = out["by_type_interval"][kind]
        assert lo <= out["by_type"][kind] <= hi
    # the few images at the edge make the far type's own interval the wider one
    width = {k: hi - lo for k, (lo, hi) in out["by_type_interval"].items()}
    assert width["histology"] > width["fluorescence"]
    lines = support_lines(out)
    assert len(lines) == 2 and "THIN" not in lines[0]
    assert histo["effective_holdout"] < 5 and "THIN" in lines[1] and "2 test image(s) lie beyond" in lines[1]


def test_a_type_that_borrows_every_holdout_image_says_so(tmp_path):
    rows = [r for r in calibration() if r["type"] == "fluorescence"]
    cal = read_calibration(write_calibration(tmp_path / "c.json", rows, key={}))
    support = expected_score({"x": "brightfield"}, {"x": 1.0}, cal)["support"]["brightfield"]
    assert support["n_holdout"] == len(rows) and support["holdout_of"].startswith("all types")


def test_the_calibrations_of_several_folds_pool(tmp_path):
    """Files made for this submission's settings pool their rows; others are left out with a
    note; an image held out twice is refused rather than counted twice."""
    from types import SimpleNamespace

    from competition.calibration import calibration_key, expected_for, pooled_calibration

    record = {"ensemble": {"all": {"members": [{"member": "all/a", "weight": 1.0}]}}, "tta": "flips",
              "size_passes": 2, "recipe": "r"}
    key = calibration_key(record)
    rows = calibration(n=60)
    f0 = write_calibration(tmp_path / "calibration-f0.json", rows[:25], key=key)
    f3 = write_calibration(tmp_path / "calibration-f3.json", rows[25:], key=key)
    stale = write_calibration(tmp_path / "calibration-f1.json", calibration(n=5, seed=1),
                              key=calibration_key({**record, "tta": "none"}))
    broken = tmp_path / "calibration-f2.json"
    broken.write_text("{")
    pooled, notes = pooled_calibration([f0, stale, f3, broken], key)
    assert [r["image_id"] for r in pooled["rows"]] == [r["image_id"] for r in rows]
    assert pooled["sources"] == {str(f0): 25, str(f3): 35}
    assert len(notes) == 2 and "calibration-f1.json was made with other members, TTA" in notes[0]
    assert "calibration-f2.json is not a calibration file" in notes[1]

    types = {f"t{i}": "fluorescence" if i % 3 else "histology" for i in range(9)}
    distances = {f"t{i}": 0.4 * i for i in range(9)}
    pred = SimpleNamespace(routing={i: {"type": t} for i, t in types.items()})
    whole = expected_score(types, distances, {"rows": rows})
    both = expected_for([f0, stale, f3, broken], key, pred, distances)
    assert both["score"] == whole["score"] and both["by_type"] == whole["by_type"]
    assert both["n_holdout"] == 60 and both["calibration_rows"] == {str(f0): 25, str(f3): 35}
    assert both["calibration"] == [str(f0), str(f3)] and len(both["calibration_left_out"]) == 2
    one = expected_for(f0, key, pred, distances)
    assert one["n_holdout"] == 25 and one["calibration"] == str(f0) and "calibration_rows" not in one
    assert one["score"] != both["score"]
    assert expected_for([stale], key, pred, distances)["score"] is None

    again = write_calibration(tmp_path / "copy-of-f0.json", rows[:3], key=key)
    with pytest.raises(DataError, match=r"image h0 is in two holdout calibrations, .*calibration-f0.json and .*copy-of-f0"):
        pooled_calibration([f0, again], key)
    refused = expected_for([f0, again], key, pred, distances)
    assert refused["score"] is None and "two holdout calibrations" in refused["note"]
