"""Making a submission: predict every test image, post-process, write, validate, record.

:func:`make_submission` runs the whole chain for one recipe:

1. the test ids (``DATA_DIR/<stage>_sample_submission.csv`` when present, else the test
   folder) and their image sizes (from the PNG headers);
2. the ensemble file (:mod:`competition.ensemble`) is read and validated and every member is
   loaded, before any prediction;
3. each image is read (a background thread reads ahead), classified, routed to its type's
   ensemble (:class:`competition.predict.EnsemblePredictor`), turned into instances with
   the post-processing parameters tuned for its type, and run-length encoded;
4. ``OUT_DIR/<recipe>-<stage>-<UTC time>.csv`` is written (never overwriting a file) and
   checked by :func:`competition.submission.validate_submission` against the ids and sizes;
5. ``<same name>.json`` beside it records the recipe, members, parameters, local CV scores,
   the routing of every image, TTA, the git commit, problems and timings;
6. optionally the CSV is uploaded with the kaggle CLI (subprocess, timeout) and, with a
   solution file, scored and appended to the local leaderboard.

A test image that cannot be read still gets an empty row (every id must be present) and is
reported in the log and the JSON, unless ``strict`` (then :class:`DataError`).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from competition import cpu_model, git_commit
from competition.calibration import (
    calibration_key,
    condition_distances,
    conditions_of,
    expected_for,
    scores_by_condition,
    size_check,
)
from competition.csvio import atomic_write
from competition.errors import DataError, UserError
from competition.upload import kaggle_upload, upload_requested

log = logging.getLogger(__name__)

__all__ = [
    "SubmitOptions",
    "SubmitResult",
    "make_submission",
    "find_test_split",
    "list_test_ids",
    "submission_path",
    "git_commit",
    "local_cv",
]

STAGES = ("stage1", "stage2")


@dataclass(frozen=True)
class SubmitOptions:
    """What :func:`make_submission` does.

    Attributes:
        recipe: recipe name (models in ``models_dir/<recipe>``).
        data_dir: DATA_DIR holding ``<stage>_test/`` (and the sample submission).
        stage: ``stage1`` or ``stage2``.
        models_dir: the models folder.
        out_dir: where the CSV and its JSON go.
        tta: ``none``, ``flips`` or ``d4``.
        device: ``auto``, ``cpu`` or ``cuda``.
        tiling: :class:`competition.predict.Tiling` (None: the default).
        strict: an unreadable test image is an error instead of an empty row.
        solution: score against this solution file when given.
        leaderboard: history CSV for scored runs (default ``out_dir/leaderboard.csv``).
        kaggle: upload with the kaggle CLI.
        message: the upload message (default: recipe, stage, TTA and local CV).
        postprocess_workers: threads post-processing while the network runs (default: 1 on
            CUDA, 0 on the CPU, where both would compete for the same cores; with several
            image streams each stream post-processes its own images).
        image_streams: predictors working on different images at once, each on its share
            of ``threads`` (:mod:`competition.predict.streams`; None: ``auto``, 2 on a CPU with
            ONNX Runtime or OpenVINO, else 1). They change no object, only the time.
        threads: torch CPU threads (default: torch's, one per core). On a machine whose
            cores are busy with other work, 1 can be several times faster: a team of
            OpenMP threads waits at every layer for its slowest (descheduled) thread.
        size_passes: passes that estimate the nucleus size for members trained at a
            ``nucleus_diameter`` (see :class:`competition.predict.EnsemblePredictor`).
        crossfit: post-process each image that the tuning cross-fitted with the parameters
            tuned without its condition (``make holdout``: every score out of sample).
        calibration: with ``solution``: write the holdout calibration here (per image type,
            score and distance to the training conditions); without: read it and record the
            submission's ``expected_score`` (:mod:`competition.expected`). Without a
            solution it may be several files, the calibrations of several condition-out folds
            of the recipe, pooled (:func:`competition.calibration.pooled_calibration`).
        survey_factors: resize factors of the first nucleus-size pass (None: the predictor's
            default, native, half and quarter size).
        nucleus_px, max_upscale, size_max_pixels, rescale_tolerance, upscale_max_pixels,
        survey_range, survey_upscale, survey_rule, shrink_range:
            how far the size-estimated passes resize (at most, in factor and in pixels), how much of a large image the size passes see,
            when a new estimate keeps the factors a pass ran at and which survey view is trusted (see
            :class:`competition.predict.EnsemblePredictor`; None: its defaults).
        engine: what runs the network (:data:`competition.predict.engines.ENGINES`; ``auto``:
            the fastest installed on the CPU, PyTorch on CUDA).
        cache_dir: keep every image's result (objects, routing, features) here as it is done,
            keyed by the ensemble, its weights and the prediction settings, so an
            interrupted run resumes from the images already predicted; None: no cache.
    """

    recipe: str
    data_dir: Path
    stage: str = "stage1"
    models_dir: Path = Path("models")
    out_dir: Path = Path("submissions")
    tta: str = "none"
    device: str = "auto"
    tiling: Any = None
    strict: bool = False
    solution: Path | None = None
    leaderboard: Path | None = None
    kaggle: bool = False
    message: str | None = None
    postprocess_workers: int | None = None
    image_streams: int | None = None
    threads: int | None = None
    size_passes: int = 2
    crossfit: bool = False
    calibration: Path | tuple[Path, ...] | None = None
    cache_dir: Path | None = None
    engine: str = "auto"
    survey_factors: tuple[float, ...] | None = None
    nucleus_px: float | None = None
    max_upscale: float | None = None
    size_max_pixels: int | None = None
    rescale_tolerance: float | None = None
    upscale_max_pixels: int | None = None
    survey_range: float | None = None
    survey_upscale: float | None = None
    survey_rule: str | None = None
    shrink_range: float | None = None

    def sizing(self) -> dict[str, Any]:
        """The resizing settings asked for (None: the predictor's default), as keywords of
        :class:`~competition.predict.EnsemblePredictor`."""
        return {"nucleus_px": self.nucleus_px, "max_upscale": self.max_upscale, "size_max_pixels": self.size_max_pixels,
                "rescale_tolerance": self.rescale_tolerance, "upscale_max_pixels": self.upscale_max_pixels,
                "survey_range": self.survey_range, "survey_upscale": self.survey_upscale,
                "survey_rule": self.survey_rule, "shrink_range": self.shrink_range}

    def calibrations(self) -> tuple[Path, ...]:
        """The calibration files named (none, one or several)."""
        if self.calibration is None:
            return ()
        if isinstance(self.calibration, (str, Path)):
            return (Path(self.calibration),)
        return tuple(Path(p) for p in self.calibration)


@dataclass
class SubmitResult:
    """What :func:`make_submission` did.

    Attributes:
        path: the submission CSV.
        sidecar: its JSON record.
        record: the JSON content.
        problems: one line per unreadable or missing test image.
        score: :class:`competition.scoring.SubmissionScore` when a solution was given.
        report: :func:`competition.scoring.format_report` lines when scored.
        upload: the upload outcome (``{"status": ..., "detail": ...}``) when asked.
    """

    path: Path
    sidecar: Path
    record: dict
    problems: list[str] = field(default_factory=list)
    score: Any = None
    report: list[str] = field(default_factory=list)
    upload: dict | None = None


# ----------------------------------------------------------------------------- inputs


def find_test_split(data_dir: str | Path, stage: str) -> tuple[Path, Path | None]:
    """``(test folder, sample submission or None)`` of a stage.

    Kaggle's names: ``stage1_test`` + ``stage1_sample_submission.csv``; ``stage2_test_final``
    + ``stage2_sample_submission_final.csv`` (``stage2_test`` is accepted too).

    Raises:
        DataError: no test folder (the message says ``make data`` or ``DATA_DIR=``).
    """
    if stage not in STAGES:
        raise UserError(f"unknown stage {stage!r}; valid: {', '.join(STAGES)}")
    data_dir = Path(data_dir)
    folders = [data_dir / f"{stage}_test", data_dir / f"{stage}_test_final"]
    split = next((f for f in folders if f.is_dir()), None)
    if split is None:
        raise DataError(
            f"no test images for {stage}: neither {folders[0]} nor {folders[1].name} exists; "
            "get the data with `make data`, or point DATA_DIR= (--data) at an extracted copy"
        )
    samples = [data_dir / f"{stage}_sample_submission.csv", data_dir / f"{stage}_sample_submission_final.csv"]
    return split, next((s for s in samples if s.is_file()), None)


def list_test_ids(split: Path, sample: Path | None) -> list[str]:
    """The ids to predict: the sample submission's (file order) when given, else every image
    folder of ``split`` (sorted)."""
    from competition.submission import read_sample_ids

    folder_ids = sorted(p.name for p in split.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))
    if sample is None:
        if not folder_ids:
            raise DataError(f"no image folders in {split}")
        return folder_ids
    ids = read_sample_ids(sample)
    extra = sorted(set(folder_ids) - set(ids))
    if extra:
        log.warning("%d image folder(s) in %s are not in %s and are not predicted, e.g. %s", len(extra), split, sample.name, extra[0])
    return ids


def image_path(split: Path, image_id: str) -> Path:
    return split / image_id / "images" / f"{image_id}.png"


def submission_path(out_dir: str | Path, recipe: str, stage: str, now: datetime | None = None) -> Path:
    """``out_dir/<recipe>-<stage>-<YYYYmmddTHHMMSSZ>.csv``; ``-2``, ``-3``, ... appended when
    that name (or its ``.json``) exists, so nothing is ever overwritten."""
    now = now or datetime.now(timezone.utc)
    stem = f"{Path(recipe).stem}-{stage}-{now.strftime('%Y%m%dT%H%M%SZ')}"
    out_dir = Path(out_dir)
    path, n = out_dir / f"{stem}.csv", 1
    while path.exists() or path.with_suffix(".json").exists():
        n += 1
        path = out_dir / f"{stem}-{n}.csv"
    return path


def local_cv(ensemble) -> dict[str, Any]:
    """Local cross-validation scores of an ensemble.

    ``per_type``: for each image type, the tuned out-of-fold score (``score_after``; the
    default-parameter score as ``score_before``) of the entry it routes to; ``overall``: their
    mean weighted by the number of tuning images (None when nothing was tuned);
    ``members``: each member's ``metrics.json`` best score and per-type scores.
    """
    from competition.ensemble import IMAGE_TYPES

    per_type: dict[str, Any] = {}
    for image_type in IMAGE_TYPES:
        tuning = ensemble.entries[image_type].tuning
        if tuning:
            per_type[image_type] = {
                "score_before": tuning.get("score_before"),
                "score_after": tuning.get("score_after"),
                "n_images": tuning.get("n_images"),
                "members": tuning.get("from_entry", image_type),
            }
    weighted = [(v["score_after"], v["n_images"]) for v in per_type.values() if v.get("score_after") is not None and v.get("n_images")]
    overall = sum(s * n for s, n in weighted) / sum(n for _, n in weighted) if weighted else None
    members: dict[str, Any] = {}
    for key in ensemble.routed_member_keys():
        path = ensemble.member_folder(key) / "metrics.json"
        try:
            metrics = json.loads(path.read_text())
        except (OSError, ValueError):
            members[key] = None
            continue
        members[key] = {
            "best_score": metrics.get("best_score"),
            "best_epoch": metrics.get("best_epoch"),
            "best_by_type": metrics.get("best_by_type", {}),
        }
    if overall is None:
        scores = [m["best_score"] for m in members.values() if m and isinstance(m.get("best_score"), (int, float))]
        if scores:
            overall = sum(scores) / len(scores)
    return {
        "overall": None if overall is None else round(float(overall), 6),
        "overall_source": "tuned out-of-fold scores" if weighted else ("members' best validation scores" if overall is not None else None),
        "per_type": per_type,
        "members": members,
    }

# ----------------------------------------------------------------------------- the run


class _RleLabels(Mapping):
    """ImageId -> label image, rebuilt on access from the stored run-length strings (so a
    stage-2-sized test set does not hold thousands of label images in memory)."""

    def __init__(self, rles: Mapping[str, list[str]], shapes: Mapping[str, tuple[int, int] | None]) -> None:
        self._rles = rles
        self._shapes = shapes

    def __getitem__(self, image_id: str) -> np.ndarray:
        from competition.rle import rles_to_label

        rles = self._rles[image_id]
        shape = self._shapes.get(image_id)
        if not rles or shape is None:
            return np.zeros((1, 1), dtype=np.int32)
        return rles_to_label(rles, shape)

    def __iter__(self) -> Iterator[str]:
        return iter(self._rles)

    def __len__(self) -> int:
        return len(self._rles)


@dataclass
class _Predictions:
    """What the prediction loop produced: run-length strings and routing per image, the
    problems met, and the seconds per stage."""

    rles: dict[str, list[str]] = field(default_factory=dict)
    routing: dict[str, Any] = field(default_factory=dict)
    problems: dict[str, str] = field(default_factory=dict)
    features: dict[str, Any] = field(default_factory=dict)
    read_wait: float = 0.0
    postprocess: float = 0.0
    encode: float = 0.0


def _write_json(path: Path, record: dict, *, overwrite: bool) -> None:
    with atomic_write(path, overwrite=overwrite) as handle:
        json.dump(record, handle, indent=2)
        handle.write("\n")


def _read_shapes(split: Path, ids: list[str], strict: bool) -> tuple[dict[str, tuple[int, int] | None], dict[str, str]]:
    """(height, width) of every test image from its PNG header; unreadable ones are problems
    (a :class:`DataError` when ``strict``)."""
    from competition.data.io import read_image_shape

    shapes: dict[str, tuple[int, int] | None] = {}
    problems: dict[str, str] = {}
    for image_id in ids:
        try:
            shapes[image_id] = read_image_shape(image_path(split, image_id))
        except DataError as exc:
            shapes[image_id] = None
            problems[image_id] = str(exc)
    if problems and strict:
        first = next(iter(problems.values()))
        raise DataError(f"{len(problems)} test image(s) cannot be read (--strict), first: {first}")
    for image_id, problem in problems.items():
        log.error("%s: %s; it gets an empty row", image_id, problem)
    return shapes, problems


class _ImageCache:
    """One JSON file per finished image (written atomically), in a folder named by the key
    of everything that decides the result."""

    def __init__(self, root: Path | None, key: Mapping[str, Any]) -> None:
        import hashlib

        digest = hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]
        self.folder = None if root is None else Path(root) / digest

    def get(self, image_id: str) -> dict | None:
        if self.folder is None:
            return None
        path = self.folder / f"{image_id}.json"
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:  # a damaged entry is predicted again
            log.warning("ignoring the damaged cache entry %s (%s)", path, exc)
            return None

    def put(self, image_id: str, entry: Mapping[str, Any]) -> None:
        if self.folder is None:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.folder / f"{image_id}.json", overwrite=True) as fh:
            json.dump(entry, fh)


def cache_key(ensemble, opts: SubmitOptions, tiling, device, engine: str = "torch",
              sizing: dict[str, Any] | None = None) -> dict[str, Any]:
    """What decides an image's result: the ensemble file, each routed member's weights (size
    and modification time), TTA, size passes, the resizing (``sizing``: the predictor's
    resolved settings; default the options'), tiling, cross-fitting, the device type and the
    engine."""
    weights = {}
    for key in ensemble.routed_member_keys():
        best = ensemble.member_folder(key) / "best.pt"
        stat = best.stat() if best.exists() else None
        weights[key] = None if stat is None else [stat.st_size, stat.st_mtime_ns]
    return {"ensemble": ensemble.to_dict(), "weights": weights, "tta": opts.tta, "size_passes": opts.size_passes,
            "survey_factors": opts.survey_factors, "sizing": opts.sizing() if sizing is None else sizing,
            "tiling": [tiling.tile_size, tiling.overlap, tiling.max_side], "crossfit": opts.crossfit,
            "device": str(device.type), "engine": engine, "git": git_commit()}


def _progress(total: int, initial: int):
    import sys

    from tqdm import tqdm

    return tqdm(total=total, initial=initial, desc="predict", unit="image", dynamic_ncols=True,
                disable=not sys.stderr.isatty())


def _predict_all(predictors, ensemble, split: Path, ids: list[str], problems: dict[str, str], *, strict: bool,
                 workers: int, crossfit: bool = False, cache: _ImageCache | None = None) -> _Predictions:
    """Read (ahead, in a thread), predict, post-process and encode every readable image.

    With one predictor: with ``workers`` > 0, post-processing and encoding run in that many
    threads while the network predicts the next image. With several (image streams, see
    :func:`competition.predict.streams.run_streams`), each reads, predicts, post-processes
    and encodes its own images, and the results are collected in the images' order. Images
    found in ``cache`` are taken from it; every image predicted is added to it as soon as
    it is done.
    """
    from competition.data.conditions import ImageFeatures, image_features
    from competition.data.io import read_image
    from competition.diagnostics import count_border_strips
    from competition.predict import prefetch
    from competition.postprocess import watershed_instances
    from competition.rle import label_to_rles

    out = _Predictions(problems=dict(problems))

    def params_of(image_id: str, image_type: str, scale: float = 1.0):
        return ensemble.params_for(image_type, crossfit_id=image_id if crossfit else None, scale=scale)

    predictor = predictors[0]

    def finish(image_id: str, probs: np.ndarray, image_type: str, scale: float) -> tuple[str, list[str], float, float, int]:
        t0 = time.perf_counter()
        label = watershed_instances(probs, params_of(image_id, image_type, scale)[0], predictor.channels)
        t1 = time.perf_counter()
        return image_id, label_to_rles(label), t1 - t0, time.perf_counter() - t1, count_border_strips(label)

    def unreadable(image_id: str, error: BaseException) -> None:
        if strict:
            raise DataError(f"test image {image_id} cannot be read (--strict): {error}")
        out.problems[image_id] = str(error)
        log.error("%s: %s; it gets an empty row", image_id, error)

    def routed(image_id: str, image: np.ndarray, route) -> dict:
        return {**route.to_dict(), "postprocess": params_of(image_id, route.image_type)[1],
                "shape": list(image.shape[:2])}

    cache = cache or _ImageCache(None, {})

    def collect(done: tuple[str, list[str], float, float, int]) -> None:
        image_id, encoded, t_post, t_enc, strips = done
        out.rles[image_id] = encoded
        out.routing[image_id]["n_objects"] = len(encoded)
        out.routing[image_id]["border_strips"] = strips
        out.postprocess += t_post
        out.encode += t_enc
        f = out.features[image_id]
        cache.put(image_id, {"rles": encoded, "routing": out.routing[image_id],
                             "features": [f.type, f.height, f.width, list(f.stats)]})
        bar.update(1)

    readable = [i for i in ids if i not in problems]
    n_cached = 0
    for image_id in list(readable):
        entry = cache.get(image_id)
        if entry is not None:
            kind, h, w, stats = entry["features"]
            out.rles[image_id], out.routing[image_id] = entry["rles"], entry["routing"]
            out.features[image_id] = ImageFeatures(image_id, kind, int(h), int(w), tuple(stats))
            readable.remove(image_id)
            n_cached += 1
    if n_cached:
        log.info("%d image(s) taken from the cache %s, %d to predict", n_cached, cache.folder, len(readable))
    bar = _progress(len(readable) + n_cached, n_cached)
    if len(predictors) > 1:
        try:
            _predict_streams(predictors, split, readable, out, routed, unreadable, finish, collect)
        finally:
            bar.close()
        return _fill_missing(out, ids)
    pool, pending = None, []
    if workers > 0:
        from concurrent.futures import ThreadPoolExecutor

        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="postprocess")
    try:
        t_wait = time.perf_counter()
        for n, (image_id, image, error) in enumerate(prefetch(readable, lambda i: read_image(image_path(split, i))), 1):
            out.read_wait += time.perf_counter() - t_wait
            if error is not None:
                unreadable(image_id, error)
            else:
                probs, route = predictor.predict(image)
                out.routing[image_id] = routed(image_id, image, route)
                out.features[image_id] = image_features(image_id, image, route.image_type)
                if pool is None:
                    collect(finish(image_id, probs, route.image_type, route.scale))
                else:
                    pending.append(pool.submit(finish, image_id, probs, route.image_type, route.scale))
                    while len(pending) > 2 * workers:
                        collect(pending.pop(0).result())
            if n % 10 == 0 or n == len(readable):
                log.info("%d/%d images predicted", n, len(readable))
            t_wait = time.perf_counter()
        for future in pending:
            collect(future.result())
    finally:
        bar.close()
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)
    return _fill_missing(out, ids)


def _fill_missing(out: _Predictions, ids: list[str]) -> _Predictions:
    """An empty row (and the reason) for every image without a prediction."""
    for image_id in ids:
        if image_id not in out.rles:
            out.rles[image_id] = []
            out.routing.setdefault(image_id, {"error": out.problems.get(image_id, "not predicted")})
    return out


def _predict_streams(predictors, split: Path, readable: list[str], out: _Predictions, routed, unreadable,
                     finish, collect) -> None:
    """:func:`_predict_all` with several predictors: each image is read, predicted,
    post-processed and encoded by the next free stream; the results are collected here, in
    the images' order (the cache is written from this thread only)."""
    from competition.data.conditions import image_features
    from competition.data.io import read_image
    from competition.predict.streams import run_streams

    def work(predictor, image_id: str):
        try:
            image = read_image(image_path(split, image_id))
        except Exception as exc:  # noqa: BLE001 - reported below, as the serial path reports it
            return None, exc
        probs, route = predictor.predict(image)
        features = image_features(image_id, image, route.image_type)
        return (routed(image_id, image, route), features, finish(image_id, probs, route.image_type, route.scale)), None

    for n, (image_id, (result, error)) in enumerate(run_streams(predictors, readable, work), 1):
        if error is not None:
            unreadable(image_id, error)
        else:
            routing, features, done = result
            out.routing[image_id] = routing
            out.features[image_id] = features
            collect(done)
        if n % 10 == 0 or n == len(readable):
            log.info("%d/%d images predicted", n, len(readable))


def members_held_out(ensemble) -> dict[str, tuple[set[str], str]]:
    """Member key -> (the training images it held out, its fold), for the members whose
    ``oof.npz`` says what they held out; with the training split's ids under ``""``
    (:func:`competition.oof.training_split_dir`). Empty when the split is not found."""
    from competition.oof import member_config, oof_ids, training_split_dir

    try:
        split = training_split_dir(ensemble)
    except UserError as exc:
        log.warning("holdout check skipped: %s", exc)
        return {}
    known: dict[str, tuple[set[str], str]] = {"": ({d.name for d in split.iterdir() if d.is_dir()}, "")}
    for key in ensemble.member_keys():
        held = oof_ids(ensemble.member_folder(key))
        if held:
            known[key] = (held, str((member_config(ensemble.member_folder(key)).get("member") or {}).get("fold", "?")))
    return known


def check_held_out(known: Mapping[str, tuple[set[str], str]], ids: list[str],
                   routing: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """A holdout (``--crossfit``, or a solution with a calibration) must not score an image
    with a member that trained on it, or its score and calibration flatter the members.

    ``known``: :func:`members_held_out`. A member trained on the images of the training split
    that its ``oof.npz`` does not hold (its validation fold); images from elsewhere (a real
    test set with a solution) are unseen by every member. Members without out-of-fold maps
    are not checked. Before prediction (no ``routing``), a member that held out none of the
    training images among ``ids`` validated another fold (``make holdout FOLD=3`` on members
    of fold 0). After it, no image may be routed to a member that trained on it.

    Raises:
        UserError: naming each member, how many of the images it trained on, one of them,
            and the fold it held out.
    """
    if not known:
        return
    split = known[""][0]
    trained: dict[str, list[str]] = {}
    if routing is None:
        wanted = set(ids)
        for key, (held, _) in known.items():
            seen = sorted(wanted & split - held)
            if key and seen and not wanted & held:
                trained[key] = seen
    else:
        for image_id, route in routing.items():
            for member in route.get("members", []):
                key = member["member"]
                if key in known and image_id in split and image_id not in known[key][0]:
                    trained.setdefault(key, []).append(image_id)
    if not trained:
        return
    said = "; ".join(f"{key} trained on {len(images)} of them (e.g. {images[0]}; it held out fold {known[key][1]})"
                     for key, images in sorted(trained.items()))
    raise UserError(f"this holdout's images are not the ones the members held out: {said}. A holdout of "
                    "members that trained on its images flatters them; lay out the fold they held out "
                    "(make holdout FOLD=<that fold>) or train members with this fold held out")


def make_submission(options: SubmitOptions, *, loader=None) -> SubmitResult:
    """Predict the test set of ``options.stage`` and write a validated submission.

    Args:
        options: see :class:`SubmitOptions`.
        loader: member loader passed to :class:`~competition.predict.EnsemblePredictor`
            (tests); default :func:`competition.train.members.load_member`.

    Returns:
        :class:`SubmitResult`.

    Raises:
        UserError: no models, an invalid ensemble file or a missing member folder (before
            any prediction); an invalid TTA mode.
        DataError: no test folder; an unreadable image when ``strict``.
    """
    from competition.ensemble import load_ensemble
    from competition.predict import PredictorTimings, Tiling, set_threads
    from competition.predict.ensemble import PASSES
    from competition.predict.streams import build_predictors
    from competition.submission import validate_submission, write_submission

    started = time.perf_counter()
    opts = options
    split, sample = find_test_split(opts.data_dir, opts.stage)
    ids = list_test_ids(split, sample)
    shapes, problems = _read_shapes(split, ids, opts.strict)

    calibrations = opts.calibrations()
    if opts.solution is not None and len(calibrations) > 1:
        raise UserError(f"a scored run writes one holdout calibration; got {len(calibrations)} files "
                        f"({', '.join(map(str, calibrations))})")
    ensemble = load_ensemble(opts.models_dir, opts.recipe)
    if ensemble.refit is not None and (opts.crossfit or (opts.solution is not None and calibrations)):
        raise UserError(f"the members of {ensemble.root} are refits on every training image (of "
                        f"{ensemble.refit['of']}): a holdout of them would score images they trained on; "
                        "run the holdout on the ensemble they were refit from")
    holdout = opts.crossfit or bool(opts.solution is not None and calibrations)
    held_out = members_held_out(ensemble) if holdout else {}
    check_held_out(held_out, ids)
    set_threads(opts.threads)
    tiling = opts.tiling or Tiling()
    predictors = build_predictors(ensemble, opts.image_streams, device=opts.device, engine=opts.engine,
                                  threads=opts.threads, tta=opts.tta, tiling=tiling, loader=loader,
                                  size_passes=opts.size_passes, survey_factors=opts.survey_factors, **opts.sizing())
    predictor, streams = predictors[0], len(predictors)
    workers = opts.postprocess_workers
    if workers is None:
        workers = 1 if predictor.device.type == "cuda" else 0
    log.info("predicting %d test images of %s with %s", len(ids), split, opts.recipe)
    cache = _ImageCache(opts.cache_dir, {**cache_key(ensemble, opts, tiling, predictor.device, predictor.engine, predictor.sizing()), "split": str(split)})
    pred = _predict_all(predictors, ensemble, split, ids, problems, strict=opts.strict, workers=workers,
                        crossfit=opts.crossfit, cache=cache)
    t_predicted = time.perf_counter()
    timings = PredictorTimings.summed([p.timings for p in predictors])
    check_held_out(held_out, ids, pred.routing)

    path = submission_path(opts.out_dir, opts.recipe, opts.stage)
    write_submission(path, _RleLabels(pred.rles, shapes), image_ids=ids)
    known_shapes = {i: s for i, s in shapes.items() if s is not None}
    _, invalid = validate_submission(path, required_ids=ids, shapes=known_shapes)
    if invalid:  # a bug, not the user's: keep the file for inspection
        raise UserError(f"{path} failed validation ({len(invalid)} problem(s)), first: {invalid[0]}")
    t_written = time.perf_counter()
    n_objects = sum(len(v) for v in pred.rles.values())
    log.info("wrote %s (%d images, %d objects), valid", path, len(ids), n_objects)

    cv = local_cv(ensemble)
    types_seen: dict[str, int] = {}
    for r in pred.routing.values():
        if "type" in r:
            types_seen[r["type"]] = types_seen.get(r["type"], 0) + 1
    n_predicted = len(ids) - len(pred.problems)
    record: dict[str, Any] = {
        "submission": str(path),
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "recipe": ensemble.recipe,
        "stage": opts.stage,
        "data_dir": str(opts.data_dir),
        "test_dir": str(split),
        "sample_submission": str(sample) if sample else None,
        "models_dir": str(ensemble.root),
        "ensemble": ensemble.to_dict()["types"],
        "members": ensemble.routed_member_keys(),
        "refit": ensemble.refit,
        "adapt": ensemble.adapt,
        "postprocess": {t: {"params": ensemble.params_for(t)[0].to_dict(), "source": ensemble.params_for(t)[1]}
                        for t in ("fluorescence", "histology", "brightfield")},
        "local_cv": cv,
        "tta": opts.tta,
        "tiling": {"tile_size": tiling.tile_size, "overlap": tiling.overlap, "max_side": tiling.max_side,
                   "batch_size": tiling.batch_size},
        "device": str(predictor.device),
        "engine": predictor.engine,
        "threads": torch_threads(),
        # predictors on different images at once (competition.predict.streams); the timings
        # of the network, the size passes and the post-processing are summed over them
        "image_streams": streams,
        # timings and bf16 results depend on the CPU (Zen 4, Zen 5 and AMX differ): name it
        "cpu": cpu_model() if predictor.device.type == "cpu" else None,
        "size_passes": opts.size_passes,
        "survey_factors": list(predictor.survey_factors),
        "sizing": predictor.sizing(),
        "git_commit": git_commit(),
        "n_images": len(ids),
        "n_objects": n_objects,
        "border_strips": sum(r.get("border_strips", 0) for r in pred.routing.values()),
        "crossfit": opts.crossfit,
        "expected_score": None,
        "types": types_seen,
        "problems": [{"image_id": i, "problem": p} for i, p in pred.problems.items()],
        "routing": pred.routing,
        "timings": {
            "total_s": round(t_written - started, 3),
            "predict_loop_s": round(t_predicted - started, 3),
            "network_s": round(timings.network.seconds, 3),
            "network_by_pass": timings.network.by_stage(PASSES),
            "ensemble_predict_s": round(timings.predict, 3),
            "size_estimate_s": round(timings.size_estimate, 3),
            "classify_s": round(timings.classify, 3),
            "read_wait_s": round(pred.read_wait, 3),
            "postprocess_s": round(pred.postprocess, 3),
            "encode_s": round(pred.encode, 3),
            "write_validate_s": round(t_written - t_predicted, 3),
            "images_per_s": round(n_predicted / max(t_predicted - started, 1e-9), 3),
        },
        "score": None,
        "upload": None,
    }
    distances = condition_distances(ensemble, pred.features) if calibrations else {}
    if calibrations and opts.solution is None:
        record["expected_score"] = expected_for(calibrations, calibration_key(record), pred, distances)
    sidecar = path.with_suffix(".json")
    _write_json(sidecar, record, overwrite=False)
    result = SubmitResult(path, sidecar, record, [f"{i}: {p}" for i, p in pred.problems.items()])

    if opts.solution is not None:
        result.score, result.report = _score(path, opts, pred.routing)
        record["score"] = {
            "solution": str(opts.solution),
            "score": round(result.score.score, 6),
            "groups": {k: round(v, 6) for k, v in result.score.groups().items()},
            "interval": [round(v, 6) for v in result.score.result.bootstrap_interval()],
            "errors_at_iou_0.5": {k: {f: round(v, 4) if isinstance(v, float) else v
                                      for f, v in dataclasses.asdict(c).items()}
                                  for k, c in result.score.errors_by_group().items()},
        }
        record["size_check"] = size_check(pred.routing, opts.solution)
        conditions = conditions_of(ensemble)
        if conditions:
            record["score"]["by_condition"] = scores_by_condition(
                {im.image_id: im.score for im in result.score.result.images}, conditions)
        if calibrations:
            from competition.expected import write_calibration

            rows = [{"image_id": im.image_id, "type": pred.routing[im.image_id]["type"],
                     "score": round(float(im.score), 6), "distance": round(distances[im.image_id], 4)}
                    for im in result.score.result.images if im.image_id in distances]
            write_calibration(calibrations[0], rows, key=calibration_key(record))
            record["calibration"] = str(calibrations[0])
            log.info("wrote the holdout calibration %s (%d images)", calibrations[0], len(rows))
    if upload_requested(opts.kaggle):
        overall = cv["overall"]
        message = opts.message or (
            f"{ensemble.recipe} {opts.stage} TTA {opts.tta} local CV "
            + (f"{overall:.4f}" if overall is not None else "n/a")
            + (f" commit {record['git_commit'][:8]}" if record["git_commit"] else "")
        )
        result.upload = record["upload"] = {**kaggle_upload(path, message), "message": message}
    if record["score"] is not None or record["upload"] is not None:
        _write_json(sidecar, record, overwrite=True)
    return result


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def _score(path: Path, opts: SubmitOptions, routing: Mapping[str, Any]):
    from competition import leaderboard
    from competition.scoring import format_report, score_submission

    types = {i: r["type"] for i, r in routing.items() if "type" in r}
    scored = score_submission(path, opts.solution, types)
    board = opts.leaderboard or Path(opts.out_dir) / "leaderboard.csv"
    leaderboard.append_row(
        path,
        opts.solution,
        n_images=len(scored.result.images),
        score=scored.score,
        interval=scored.result.bootstrap_interval(),
        groups=scored.groups(),
        path=board,
    )
    lines = format_report(scored)
    lines.insert(-1, f"recorded in {board}")
    return scored, lines


def support_lines(expected: Mapping[str, Any]) -> list[str]:
    """One line per type of an expected score: its own interval and the holdout evidence it
    rests on, flagged where that is thin (see :mod:`competition.expected`)."""
    from competition.expected import thin_support

    lines = []
    intervals = expected.get("by_type_interval") or {}
    for kind, support in (expected.get("support") or {}).items():
        lo, hi = intervals.get(kind, (math.nan, math.nan))
        beyond = support["beyond_farthest"]
        lines.append(
            f"  {kind} {expected['by_type'][kind]:.4f} [{lo:.4f}, {hi:.4f}]: {support['n_test']} test images, "
            f"regressed on {support['n_holdout']} holdout images of {support['holdout_of']}, about "
            f"{support['effective_holdout']:g} of them weigh in"
            + (f"; {beyond} test image(s) lie beyond the farthest of them" if beyond else "")
            + ("; THIN: this estimate moves with any one of those images" if thin_support(support) else ""))
    return lines


def format_summary(result: SubmitResult) -> list[str]:
    """Lines for the terminal after a submission."""
    r = result.record
    t = r["timings"]
    cv = r["local_cv"]["overall"]
    lines = [
        f"submission {result.path}",
        f"record     {result.sidecar}",
        f"images {r['n_images']}, objects {r['n_objects']}, types "
        + ", ".join(f"{k} {v}" for k, v in sorted(r["types"].items())),
        f"TTA {r['tta']}, device {r['device']}, local CV " + (f"{cv:.4f}" if cv is not None else "n/a"),
        f"time {t['total_s']:.1f} s: network {t['network_s']:.1f} s, post-processing {t['postprocess_s']:.1f} s, "
        f"encoding {t['encode_s']:.1f} s ({t['images_per_s']:.2f} images/s)",
    ]
    lines.append(f"border strips {r['border_strips']} (thin objects along the image edges; see competition.diagnostics)")
    by_condition = (r.get("score") or {}).get("by_condition") or {}
    if by_condition:
        lines.append("score by imaging condition: " + ", ".join(
            f"{c} {v['score']:.3f} (n={v['n_images']})" for c, v in by_condition.items()))
    check = r.get("size_check")
    if check:
        lines.append(f"nucleus-size estimate within ±25% of the truth on {100 * check['within_25pct']:.1f}% of "
                     f"{check['n_images']} images; {check['off_by_2x_or_more']} off by 2x or more "
                     f"(worst {check['worst']['image_id'][:12]}: x{check['worst']['ratio']})")
    for problem in result.problems:
        lines.append(f"problem {problem}")
    expected = r.get("expected_score")
    if expected:
        if expected.get("score") is None:
            lines.append(f"expected score: n/a ({expected.get('note', '')})")
        else:
            lo, hi = expected["interval"]
            lines.append(f"expected score {expected['score']:.4f} [{lo:.4f}, {hi:.4f}] "
                         f"(holdout {expected['holdout_score']:.4f} on {expected['n_holdout']} images; "
                         + ", ".join(f"{k} {v:.4f}" for k, v in expected["by_type"].items()) + ")")
            if expected.get("calibration_rows"):
                lines.append("  holdout calibrations pooled: " + ", ".join(
                    f"{Path(f).name} ({n} images)" for f, n in expected["calibration_rows"].items()))
            for note in expected.get("calibration_left_out", ()):
                lines.append(f"  left out: {note}")
            lines.extend(support_lines(expected))
            lines.append(f"  how: {expected['method']}")
    if result.upload is not None:
        lines.append(f"kaggle upload: {result.upload['status']}: {result.upload['detail']}")
    return lines
