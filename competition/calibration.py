"""What a scored holdout run tells about a submission: the nucleus-size estimate against the
truth, the calibration of :mod:`competition.expected` (per image: type, score, distance to
the training conditions) and the expected score of a test submission from it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from competition.errors import DataError, UserError

log = logging.getLogger(__name__)

__all__ = ["size_check", "calibration_key", "conditions_of", "scores_by_condition", "condition_distances",
           "pooled_calibration", "expected_for"]


def size_check(routing: Mapping[str, Any], solution: Path) -> dict[str, Any] | None:
    """The nucleus-size estimates of a scored run against the true median diameters:
    the share within ±25%, and the worst ratio (estimate / truth, or its inverse)."""
    from competition.scale import median_diameter
    from competition.solution import read_solution

    truth = read_solution(solution)
    ratios = {}
    for image_id, r in routing.items():
        estimate = r.get("nucleus_diameter_estimate")
        if "scales" not in r or image_id not in truth:
            continue
        true = median_diameter(truth[image_id].label())
        if true is None:
            continue
        ratios[image_id] = (estimate / true) if estimate else 0.0
    if not ratios:
        return None
    off = {i: max(v, 1 / v) if v > 0 else float("inf") for i, v in ratios.items()}
    worst = max(off, key=off.get)
    return {"n_images": len(ratios),
            "within_25pct": round(sum(1 for v in ratios.values() if 0.75 <= v <= 1.25) / len(ratios), 4),
            "off_by_2x_or_more": sum(1 for v in off.values() if v >= 2.0),
            "worst": {"image_id": worst, "ratio": round(ratios[worst], 3)}}


def _default_sizing() -> dict[str, Any]:
    """The resizing of records made before a setting was recorded: the predictor's defaults
    of that time (a size pass's factors were never kept: no rescale tolerance; the survey's
    closest view won, and it had no enlarged view; the final pass shrank images all the way to
    the members' diameter)."""
    return {"nucleus_px": None, "max_upscale": 3.0, "size_max_pixels": None, "rescale_tolerance": 0.0,
            "upscale_max_pixels": None, "survey_range": 1.0, "survey_upscale": 0.0, "survey_rule": "fit",
            "shrink_range": 1.0}


def calibration_key(record: Mapping[str, Any]) -> dict[str, Any]:
    """What must match between a holdout run and a submission for the holdout to speak for
    it: the members (with weights), the tuning records' source, TTA, size passes, survey
    factors, resizing and colour views (the engine is left out: engines agree within their
    tolerance). Colour views enter the key only where some type has them, so a calibration
    written before they existed still speaks for a submission without them."""
    sizing = {**_default_sizing(), **(record.get("sizing") or {})}
    members = {t: [(m["member"], m["weight"]) for m in e.get("members", [])] for t, e in record["ensemble"].items()}
    key = {"members": members, "tta": record["tta"], "size_passes": record["size_passes"],
           "survey_factors": [float(f) for f in record.get("survey_factors", (1.0, 0.5, 0.25))],
           "sizing": sizing, "recipe": record["recipe"]}
    views = {t: list(e["colour_views"]) for t, e in record["ensemble"].items() if e.get("colour_views")}
    if views:
        key["colour_views"] = views
    return key


def _member_folds(ensemble):
    """(members' folds file as a DataFrame or None, the ids their validation folds hold)."""
    from competition.data.folds import read_folds

    held: set[str] = set()
    frame = None
    for key in ensemble.routed_member_keys():
        config = json.loads((ensemble.member_folder(key) / "config.json").read_text())
        folds_file = config.get("folds_file")
        if folds_file and Path(folds_file).is_file():
            frame = read_folds(folds_file)
            held |= set(frame.loc[frame["fold"] == int(config.get("fold", 0)), "ImageId"])
    return frame, held


def conditions_of(ensemble) -> dict[str, str]:
    """ImageId -> imaging condition, from the members' condition-out folds file ({} when
    their folds are random or unknown)."""
    try:
        frame, _ = _member_folds(ensemble)
    except (OSError, ValueError, DataError):
        return {}
    if frame is None or "condition" not in frame.columns:
        return {}
    return dict(zip(frame["ImageId"], frame["condition"]))


def scores_by_condition(image_scores: Mapping[str, float], conditions: Mapping[str, str]) -> dict[str, dict]:
    """Condition -> {"score": mean, "n_images": n}, biggest conditions first."""
    groups: dict[str, list[float]] = {}
    for image_id, score in image_scores.items():
        groups.setdefault(conditions.get(image_id, "unknown"), []).append(float(score))
    order = sorted(groups, key=lambda c: (-len(groups[c]), c))
    return {c: {"score": round(sum(groups[c]) / len(groups[c]), 4), "n_images": len(groups[c])} for c in order}


def _training_features(ensemble) -> list:
    """Features of the images the routed members trained on (their split, minus their
    validation folds)."""
    from competition.data.conditions import image_features
    from competition.data.io import list_samples, read_image
    from competition.data.types import classify_image
    from competition.oof import training_split_dir

    frame, held = _member_folds(ensemble)
    types = {} if frame is None else dict(zip(frame["ImageId"], frame["type"]))  # the folds file has them
    split = training_split_dir(ensemble)
    feats = []
    for sample in list_samples(split):
        if sample.image_id not in held:
            image = read_image(sample.image_path)
            kind = types.get(sample.image_id) or classify_image(image)
            feats.append(image_features(sample.image_id, image, kind))
    return feats


def condition_distances(ensemble, features: Mapping[str, Any]) -> dict[str, float]:
    from competition.data.conditions import condition_distance

    try:
        train = _training_features(ensemble)
    except (UserError, DataError, OSError) as exc:
        log.warning("no distances to the training conditions (%s)", exc)
        return {}
    return condition_distance(list(features.values()), train)


def _key_matches(calibration: Mapping[str, Any], key: Mapping[str, Any]) -> bool:
    stored = calibration.get("key")
    if isinstance(stored, dict):  # settings recorded since it was written take their default of then
        stored = {**stored, "sizing": {**_default_sizing(), **(stored.get("sizing") or {})}}
    return stored == json.loads(json.dumps(key))


def pooled_calibration(paths: Sequence[Path], key: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The rows of every calibration file in ``paths`` made with this submission's ``key``,
    pooled: several condition-out folds of one recipe, each held out by members trained
    without it, speak for the same submission, and together they cover more conditions.

    Returns ``({"rows": [...], "sources": {file: rows}}, notes)``: a file that cannot be read
    or was made with other settings is left out with a note; an image held out in two files
    is refused (it would count twice), as :class:`~competition.errors.DataError` naming both.
    """
    from competition.expected import read_calibration

    rows: list[dict[str, Any]] = []
    sources: dict[str, int] = {}
    seen: dict[str, str] = {}
    notes = []
    for path in paths:
        try:
            calibration = read_calibration(path)
        except DataError as exc:
            notes.append(str(exc))
            continue
        if not _key_matches(calibration, key):
            notes.append(f"{path} was made with other members, TTA, size passes, resizing or colour views than this "
                         "submission: rerun `make holdout` with the same settings")
            continue
        for r in calibration["rows"]:
            image_id = str(r.get("image_id", ""))
            if image_id and image_id in seen:
                raise DataError(f"image {image_id} is in two holdout calibrations, {seen[image_id]} and {path}: "
                                "pool the calibrations of different folds only")
            seen[image_id] = str(path)
            rows.append(dict(r))
        sources[str(path)] = len(calibration["rows"])
    return {"rows": rows, "sources": sources}, notes


def expected_for(paths: Path | Sequence[Path], key: Mapping[str, Any], pred, distances: Mapping[str, float]) -> dict:
    """``expected_score`` of this submission from one holdout calibration file or several
    (the folds of :func:`pooled_calibration`)."""
    from competition.expected import expected_score

    paths = [Path(paths)] if isinstance(paths, (str, Path)) else [Path(p) for p in paths]
    try:
        calibration, notes = pooled_calibration(paths, key)
    except DataError as exc:
        log.warning("%s", exc)
        return {"score": None, "note": str(exc)}
    for note in notes:
        log.warning("%s", note)
    if not calibration["sources"]:
        return {"score": None, "note": "; ".join(notes)}
    types = {i: r["type"] for i, r in pred.routing.items() if "type" in r and i in distances}
    out = expected_score(types, distances, calibration)
    used = list(calibration["sources"])
    out["calibration"] = used[0] if len(used) == 1 else used
    if len(used) > 1:
        out["calibration_rows"] = calibration["sources"]
    if notes:
        out["calibration_left_out"] = notes
    return out
