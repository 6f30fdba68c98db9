"""The expected leaderboard score of a submission, from a condition-out holdout run.

A holdout run (``make holdout``) scores exactly the submit path on a condition-out fold,
with post-processing cross-fitted over its conditions, and records a *calibration*: for each
holdout image its type, its score and its distance to the conditions the members trained on
(:func:`competition.data.conditions.condition_distance`). A submission's expected score is
then the mean, over its test images, of the holdout score predicted for each test image by
kernel regression on that distance within the image's type:

    s(i) = sum_j K((d_i - d_j) / h) s_j / sum_j K((d_i - d_j) / h),   K Gaussian,

``h`` by Silverman's rule over the type's holdout distances. The interval comes from a
bootstrap over the holdout images. What it assumes: an image's score depends on its type
and on how far its imaging condition lies from the training conditions, the same way on
the test set as on the holdout fold; test images farther than any holdout image are
predicted like the farthest holdout images (no extrapolation of the trend).

Several condition-out folds of one recipe (its members validated on fold 0, and the same
recipe trained again on fold 3, ``make train-all TRAIN_FOLD=3``) each write a calibration,
each image's distance measured to the conditions its own members trained on; their rows pool
(:func:`competition.calibration.pooled_calibration`), so the regression sees more conditions
of each type.

How much holdout evidence each type's estimate rests on is reported beside it (``support``):
the holdout images it is regressed on, how many of them effectively weigh in (Kish's
effective sample size of the kernel weights, averaged over the type's test images), and how
many test images lie beyond the farthest of them. A type whose test images sit far from every
holdout image is predicted from its two or three farthest, and its estimate moves with any
one of them; its own bootstrap interval (``by_type_interval``) shows it.

Pure numpy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from competition.csvio import atomic_write
from competition.errors import DataError

__all__ = ["METHOD", "write_calibration", "read_calibration", "expected_score", "thin_support"]

METHOD = ("mean over test images of the condition-out holdout score predicted, per image type, by Gaussian "
          "kernel regression on the image's distance to the training conditions (size and colour statistics); "
          "95% interval by bootstrap over the holdout images")
#: Fewer holdout images of a type than this: that type is predicted from all holdout images.
#: Also the effective number of holdout images under which a type's estimate is called thin.
MIN_PER_TYPE = 5


def write_calibration(path: str | Path, rows: Sequence[Mapping[str, Any]], *, key: Mapping[str, Any],
                      extra: Mapping[str, Any] | None = None) -> Path:
    """Write a calibration file atomically.

    Args:
        rows: one per holdout image: ``image_id``, ``type``, ``score``, ``distance``.
        key: what makes a submission "the same" (members, post-processing, TTA, size passes):
            :func:`expected_score` refuses a calibration whose key differs.
        extra: more top-level fields to record (a refit's copy names its source).
    """
    path = Path(path)
    with atomic_write(path, overwrite=True) as fh:
        json.dump({"key": dict(key), "rows": [dict(r) for r in rows], **(extra or {})}, fh, indent=1)
        fh.write("\n")
    return path


def read_calibration(path: str | Path) -> dict[str, Any]:
    """Read a calibration file; DataError naming the file when it is not one."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
        rows = data["rows"]
        for r in rows:
            float(r["score"]), float(r["distance"]), str(r["type"])
        return data
    except FileNotFoundError:
        raise DataError(f"calibration file {path} not found: run `make holdout` first") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{path} is not a calibration file: {type(exc).__name__}: {exc}") from None


def _bandwidth(d: np.ndarray) -> float:
    if len(d) < 2:
        return 1.0
    spread = min(d.std(), (np.percentile(d, 75) - np.percentile(d, 25)) / 1.34) or d.std()
    return float(max(0.9 * spread * len(d) ** -0.2, 0.05))


def _weights(d_test: np.ndarray, d_cal: np.ndarray) -> np.ndarray:
    """Kernel weights, one row per test image, one column per holdout image."""
    h = _bandwidth(d_cal)
    d_eff = np.minimum(d_test, d_cal.max())  # no extrapolation beyond the farthest holdout image
    return np.exp(-0.5 * ((d_eff[:, None] - d_cal[None, :]) / h) ** 2) + 1e-300


def _estimate(test: Sequence[tuple[str, float]], cal: Sequence[tuple[str, float, float]], *, support: bool = False
              ) -> tuple[float, dict[str, float], dict[str, dict[str, Any]]]:
    """(mean over the test images, mean per type, the holdout support per type when asked)."""
    types = np.array([c[0] for c in cal])
    d_cal = np.array([c[1] for c in cal], dtype=np.float64)
    s_cal = np.array([c[2] for c in cal], dtype=np.float64)
    per_image = np.zeros(len(test))
    by_type: dict[str, float] = {}
    backing: dict[str, dict[str, Any]] = {}
    for kind in sorted({t for t, _ in test}):
        rows = [i for i, (t, _) in enumerate(test) if t == kind]
        same = types == kind
        borrowed = bool(same.sum() < MIN_PER_TYPE)
        if borrowed:
            same = np.ones(len(cal), bool)
        d_test = np.array([test[i][1] for i in rows])
        w = _weights(d_test, d_cal[same])
        pred = (w * s_cal[same][None, :]).sum(axis=1) / w.sum(axis=1)
        per_image[rows] = pred
        by_type[kind] = float(pred.mean())
        if support:
            effective = w.sum(axis=1) ** 2 / (w ** 2).sum(axis=1)  # Kish's effective sample size
            backing[kind] = {"n_test": len(rows), "n_holdout": int(same.sum()),
                             "holdout_of": "all types (too few of this type)" if borrowed else kind,
                             "effective_holdout": round(float(effective.mean()), 1),
                             "beyond_farthest": int((d_test > d_cal[same].max()).sum())}
    return float(per_image.mean()), by_type, backing


def thin_support(support: Mapping[str, Any]) -> bool:
    """Whether a type's estimate rests on fewer than :data:`MIN_PER_TYPE` effective holdout images."""
    return float(support.get("effective_holdout", MIN_PER_TYPE)) < MIN_PER_TYPE


def expected_score(test_types: Mapping[str, str], test_distances: Mapping[str, float],
                   calibration: Mapping[str, Any], *, n_boot: int = 500, seed: int = 0) -> dict[str, Any]:
    """The expected score of a test set from a holdout calibration (see the module doc).

    Args:
        test_types: ImageId -> type of every predicted test image.
        test_distances: ImageId -> distance to the training conditions.
        calibration: from :func:`read_calibration`.

    Returns:
        ``{"score", "interval", "by_type", "by_type_interval", "support", "n_test", "n_holdout",
        "holdout_score", "mean_distance", "method"}``; ``support``: per type, ``n_test``,
        ``n_holdout`` (the holdout images regressed on), ``holdout_of``,
        ``effective_holdout`` and ``beyond_farthest`` (see the module doc).
    """
    rows = calibration["rows"]
    cal = [(str(r["type"]), float(r["distance"]), float(r["score"])) for r in rows]
    test = [(test_types[i], float(test_distances[i])) for i in sorted(test_types)]
    if not cal or not test:
        return {"score": None, "interval": None, "by_type": {}, "n_test": len(test), "n_holdout": len(cal),
                "method": METHOD, "note": "no holdout calibration rows or no test image"}
    score, by_type, support = _estimate(test, cal, support=True)
    rng = np.random.default_rng(seed)
    boots, type_boots = [], {k: [] for k in by_type}
    for _ in range(n_boot):
        pick = rng.integers(0, len(cal), len(cal))
        total, kinds, _ = _estimate(test, [cal[k] for k in pick])
        boots.append(total)
        for k, v in kinds.items():
            type_boots[k].append(v)
    lo, hi = np.percentile(boots, (2.5, 97.5))
    return {"score": round(score, 4), "interval": [round(float(lo), 4), round(float(hi), 4)],
            "by_type": {k: round(v, 4) for k, v in by_type.items()},
            "by_type_interval": {k: [round(float(v), 4) for v in np.percentile(b, (2.5, 97.5))]
                                 for k, b in type_boots.items()},
            "support": support, "n_test": len(test),
            "n_holdout": len(cal), "holdout_score": round(float(np.mean([c[2] for c in cal])), 4),
            "mean_distance": {"test": round(float(np.mean([t[1] for t in test])), 3),
                              "holdout": round(float(np.mean([c[1] for c in cal])), 3)},
            "method": METHOD}
