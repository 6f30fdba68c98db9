"""Inference speed: the whole submit pipeline (predict + post-process + encode) of a recipe's
ensemble, on the stage-1 test images and on a generated set shaped like stage 2, against
today's float32 PyTorch path measured in the same run.

- Stage 1 (:func:`bench_inference`): the 65 test images with each TTA mode on the default
  engine (``auto``), and with flips on float32 PyTorch twice: at the same resizing (the engine
  check: how many objects the engine's precision alone changes) and as the reference (today's
  path, its resizing included); images per second and
  the share of the time spent in the network (forward passes), in the rest of the ensemble
  prediction (normalisation, tiling, blending), in post-processing (watershed) and in
  run-length encoding. Image reading is done before the clock starts.
- Stage-2-like (:func:`bench_stage2`): ``n`` images drawn by :mod:`competition.synth` at the
  sizes of :data:`STAGE2_SHAPES` (256 px to 2560 px sides), nucleus sizes drawn from
  stage1_train's (:data:`STAGE1_DIAMETERS`), predicted with flips; seconds per image and per megapixel, the projection to
  :data:`STAGE2_IMAGES` images, and the ratio against the reference on every k-th image.
- Peak memory (:func:`peak_memory`): a fresh process predicting the largest shape, its
  maximum resident set size.

Run: ``python -m competition.bench_inference --models models --recipe cpu --data DATA_DIR``
(``make bench``).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import NamedTuple

log = logging.getLogger(__name__)

__all__ = ["InferenceTiming", "Stage2Report", "STAGE2_SHAPES", "STAGE2_IMAGES", "bench_inference", "bench_stage2",
           "stage2_like", "peak_memory", "compare_objects", "ObjectChanges", "main"]

#: Images in the competition's final stage (``stage2_test_final``), all of which must be predicted.
STAGE2_IMAGES = 3019

#: (height, width, share) of the generated stage-2-like set: the stage-1 sizes (256×256,
#: 256×320, 360×360, 512×640, 520×696, 603×1272, 1024×1024, 1040×1388) and larger scans
#: up to 2560×2560. Stage 2's own size spread is not published with the data here; this
#: table leans to the large side (0.58 MP an image on average, 2.3× stage 1's 0.25).
STAGE2_SHAPES = (
    (256, 256, 0.15), (256, 320, 0.15), (360, 360, 0.05), (512, 640, 0.20), (520, 696, 0.15),
    (603, 1272, 0.05), (1024, 1024, 0.12), (1040, 1388, 0.10), (1500, 2000, 0.02), (2560, 2560, 0.01),
)

#: Image types of the generated set (stage 2 brought many stained and brightfield images).
STAGE2_KINDS = (("fluorescence", 0.5), ("histology", 0.35), ("brightfield", 0.15))

#: (quantile, median nucleus diameter in px) of the 664 stage1_train images (measured from
#: their masks with :func:`competition.scale.median_diameter`); the generated images draw
#: their nucleus size from it, so the size passes resize them as much as the real ones
#: (mean squared resize factor to 28 px: 2.99).
STAGE1_DIAMETERS = ((0.0, 8.0), (0.05, 9.6), (0.10, 10.6), (0.25, 13.4), (0.50, 18.1), (0.75, 29.3),
                    (0.90, 47.3), (0.95, 49.5), (1.0, 94.0))

#: The synthetic styles' typical nucleus diameter (twice the mean of their radius range).
_SYNTH_DIAMETER = {"fluorescence": 16.0, "histology": 19.0, "brightfield": 14.0}

@dataclass(frozen=True)
class InferenceTiming:
    """One benchmark line: a TTA mode over ``n_images`` images.

    Attributes:
        tta: the TTA mode.
        n_images: images timed.
        total_s: wall time of predict + post-process + encode.
        network_s: time in forward passes.
        predict_s: the whole ensemble prediction (network included).
        postprocess_s: watershed post-processing.
        encode_s: run-length encoding.
        n_objects: objects found.
        size_pass_s: part of ``network_s``..``predict_s``: the passes that estimate the
            nucleus size (members trained at a ``nucleus_diameter``).
        engine: the engine(s) that ran the network, `` fp32`` for the reference, and
            :data:`ENGINE_CHECK_LABEL` after that for the engine check.
        changed_objects: on the engine check's and the reference's lines: that run's objects
            that the fast path's flips run (the last fast line with flips) does not reproduce
            pixel for pixel; None: not compared.
        agreement: on those lines: the competition score of the fast path's flips
            run scored against that run's objects as the solution (1.0: identical).
        reshaped_objects: on those lines: its objects that no fast object overlaps
            at IoU above 0.9 (the strictest thresholds' difference).
        unpartnered_objects: on those lines: its objects that no fast object overlaps
            at IoU above 0.5 (lost, split or merged: a difference at every threshold).
        unpartnered_apart: the part of ``unpartnered_objects`` in images that the two runs
            resized by different factors (their size estimates fell on different steps of
            the resize grid, or different resizing settings); the rest are in images both
            resized alike.
        images_apart: how many images the two runs resized by different factors.
        passes: the network's work per pass (:data:`competition.predict.ensemble.PASSES`):
            (pass, seconds, megapixels through the network).
    """

    tta: str
    n_images: int
    total_s: float
    network_s: float
    predict_s: float
    postprocess_s: float
    encode_s: float
    n_objects: int
    size_pass_s: float = 0.0
    engine: str = "torch"
    changed_objects: int | None = None
    agreement: float | None = None
    reshaped_objects: int | None = None
    unpartnered_objects: int | None = None
    unpartnered_apart: int | None = None
    images_apart: int | None = None
    passes: tuple[tuple[str, float, float], ...] = ()
    #: image streams (predictors on different images at once): the stage seconds are summed
    #: over them, so their shares of ``total_s`` (wall clock) add up to about this many times 100%
    streams: int = 1

    @property
    def images_per_s(self) -> float:
        return self.n_images / self.total_s if self.total_s > 0 else float("inf")

    def line(self) -> str:
        share = lambda s: 100.0 * s / self.total_s if self.total_s > 0 else 0.0  # noqa: E731
        other = self.predict_s - self.network_s
        return (
            f"inference {self.engine:<16} TTA {self.tta:<5} {self.n_images:3d} images {self.total_s:7.1f} s "
            f"({self.images_per_s:5.2f} img/s"
            + (f", {self.streams} image streams: shares summed over them" if self.streams > 1 else "")
            + f"): network {share(self.network_s):4.1f}%, "
            f"tiling/normalise/blend {share(other):4.1f}%, post-processing {share(self.postprocess_s):4.1f}%, "
            f"encoding {share(self.encode_s):4.1f}%; {self.n_objects} objects"
            + (f"; size passes {share(self.size_pass_s):4.1f}% of the time" if self.size_pass_s else "")
            + (f"; network by pass: {passes_text(self.passes)}" if self.passes else "")
            + (f"; against the fast path: {self.changed_objects} of these objects not reproduced pixel for pixel, "
               f"{self.reshaped_objects} without a fast object at IoU > 0.9, {self.unpartnered_objects} without one at "
               f"IoU > 0.5{self._apart()}; its score against them {self.agreement:.4f}"
               if self.changed_objects is not None else "")
        )

    def _apart(self) -> str:
        if self.unpartnered_apart is None or self.unpartnered_objects is None:
            return ""
        alike = self.unpartnered_objects - self.unpartnered_apart
        return (f" ({alike} in the images both runs resized alike, {self.unpartnered_apart} in the "
                f"{self.images_apart} image(s) they resized by different factors)")


def _timings(predictors):
    """The timings of one predictor, or summed over a run's predictors (image streams)."""
    from competition.predict import PredictorTimings

    if not isinstance(predictors, (list, tuple)):
        return predictors.timings
    return PredictorTimings.summed([p.timings for p in predictors])


def network_passes(predictors) -> tuple[tuple[str, float, float], ...]:
    """(pass, seconds, megapixels) of the network work so far of one predictor, or summed
    over a run's predictors, in :data:`~competition.predict.ensemble.PASSES` order."""
    from competition.predict.ensemble import PASSES

    return tuple((name, t.seconds, t.pixels / 1e6) for name, t in _timings(predictors).network.stages_in(PASSES))


def passes_text(passes: tuple[tuple[str, float, float], ...]) -> str:
    """``survey 4.7 s (11.5 MP), final ...``: where the network time went."""
    return ", ".join(f"{name} {seconds:.1f} s ({mp:.1f} MP)" for name, seconds, mp in passes)


#: The resizing of the reference (today's path when issue 11 was filed): every member's own
#: nucleus diameter, up-scaling to 3x whatever the image's size, size passes over the whole image (0), a size pass's factors
#: kept only when the estimate lands on them exactly (the final pass then still takes its
#: identity view from that pass, which makes the reference slightly faster than it was).
REFERENCE_SIZING = {"nucleus_px": None, "max_upscale": 3.0, "size_max_pixels": 0, "rescale_tolerance": 0.0,
                    "survey_range": 1.0, "survey_upscale": 0, "survey_rule": "fit",
                    "upscale_max_pixels": 0, "shrink_range": 1.0}


#: Appended to the engine check's engine: float32 PyTorch at the fast path's own resizing.
ENGINE_CHECK_LABEL = " at the fast sizing"


def _predictor(ensemble, *, device, tta, tiling, loader, engine, precision=None, sizing=None, threads=None,
               pin_threads=True):
    from competition.predict import EnsemblePredictor, Tiling

    return EnsemblePredictor(ensemble, device=device, tta=tta, tiling=tiling or Tiling(), loader=loader,
                             engine=engine, precision=precision, threads=threads, pin_threads=pin_threads,
                             **(sizing or {}))


def _predictors(ensemble, streams: int | None, *, device, tta, tiling, loader, engine, threads=None, precision=None,
                sizing=None) -> list:
    """The predictors of one timed run: one per image stream
    (:func:`~competition.predict.streams.build_predictors`; None: ``auto``)."""
    from competition.predict.streams import build_predictors

    return build_predictors(ensemble, streams, device=device, engine=engine, threads=threads, make=_predictor,
                            tta=tta, tiling=tiling, loader=loader, precision=precision, sizing=sizing)


def _label(predictor, precision) -> str:
    return predictor.engine + (f" {precision}" if precision else "")


@dataclass
class _Clock:
    """Seconds of one predictor over a run of images, per stage and per image."""

    post: float = 0.0
    encode: float = 0.0
    n_objects: int = 0
    per_image: list[float] = field(default_factory=list)
    #: keep :attr:`objects` (the stage-1 runs, to compare the fast path with the reference)
    keep_objects: bool = False
    #: per image: (shape, run-length encodings of its objects), with ``keep_objects``.
    objects: list[tuple[tuple[int, int], list[str]]] = field(default_factory=list)
    #: per image: the members' resize factors of its final pass, with ``keep_objects``.
    scales: list[tuple[tuple[str, float], ...]] = field(default_factory=list)

    #: wall-clock seconds of :meth:`run_all` (0 when only :meth:`run` ran: then the images' sum)
    wall: float = 0.0

    @staticmethod
    def measure(predictor, ensemble, image) -> tuple:
        """Predict, post-process and encode one image; ``(seconds, post-processing seconds,
        encoding seconds, label shape, encodings, the final pass's factors)``."""
        from competition.postprocess import watershed_instances
        from competition.rle import label_to_rles

        t0 = time.perf_counter()
        probs, route = predictor.predict(image)
        t1 = time.perf_counter()
        label = watershed_instances(probs, ensemble.params_for(route.image_type, scale=route.scale)[0], predictor.channels)
        t2 = time.perf_counter()
        rles = label_to_rles(label)
        t3 = time.perf_counter()
        return t3 - t0, t2 - t1, t3 - t2, label.shape, rles, tuple(route.scales)

    def add(self, done: tuple) -> float:
        """Count one :meth:`measure` result; its seconds."""
        seconds, post, encode, shape, rles, scales = done
        self.n_objects += len(rles)
        if self.keep_objects:
            self.objects.append((shape, rles))
            self.scales.append(scales)
        self.post += post
        self.encode += encode
        self.per_image.append(seconds)
        return seconds

    def run(self, predictor, ensemble, image) -> float:
        """:meth:`measure` and :meth:`add` one image."""
        return self.add(self.measure(predictor, ensemble, image))

    def run_all(self, predictors, ensemble, images, progress=None) -> None:
        """Every image through the predictors' streams (:func:`~competition.predict.streams.run_streams`),
        counted in order; :attr:`wall` adds the wall-clock time. ``progress(n, seconds)``
        is called after each image."""
        from competition.predict.streams import run_streams

        t0 = time.perf_counter()
        for n, (_, done) in enumerate(run_streams(predictors, images, lambda p, image: self.measure(p, ensemble, image)), 1):
            self.add(done)
            if progress is not None:
                progress(n, time.perf_counter() - t0)
        self.wall += time.perf_counter() - t0

    @property
    def total(self) -> float:
        """The run's seconds: the wall clock of :meth:`run_all`, else the images' sum."""
        return self.wall or sum(self.per_image)

    def timing(self, predictors, tta: str, label: str) -> InferenceTiming:
        """The run's :class:`InferenceTiming` (``predictors``: one, or the run's streams, whose
        network, predict and size-pass seconds are summed)."""
        t = _timings(predictors)
        return InferenceTiming(tta, len(self.per_image), self.total, t.network.seconds, t.predict, self.post,
                               self.encode, self.n_objects, t.size_estimate, label, passes=network_passes(predictors),
                               streams=len(predictors) if isinstance(predictors, (list, tuple)) else 1)


class ObjectChanges(NamedTuple):
    """How far a fast run's objects are from the reference's on the same images (counts of
    reference objects)."""

    changed: int  #: with no pixel-identical fast object
    agreement: float  #: the fast run's competition score against the reference as the solution
    reshaped: int  #: with no fast object at IoU > 0.9
    unpartnered: int  #: with no fast object at IoU > 0.5 (lost, split or merged)
    #: the part of ``unpartnered`` in images the two runs resized by different factors
    unpartnered_apart: int = 0
    #: images the two runs resized by different factors
    images_apart: int = 0


def compare_objects(fast: "_Clock", reference: "_Clock") -> ObjectChanges:
    """How far ``fast``'s objects are from ``reference``'s on the same images (agreement 1.0
    and no change when every image's objects are identical).

    An image counts as resized apart when both clocks recorded its final pass's factors and
    they differ: one step of the resize grid (:data:`~competition.predict.ensemble.SCALE_STEPS`)
    moves every outline of the image, so its objects differ for the size estimate's sake,
    not the network's numerics alone.
    """
    from competition.metric import THRESHOLD_STEPS, score_images
    from competition.rle import rles_to_label

    changed = sum(len(set(ref) - set(run)) for (_, run), (_, ref) in zip(fast.objects, reference.objects))
    pairs = ((str(i), rles_to_label(ref, shape), rles_to_label(run, shape))
             for i, ((shape, run), (_, ref)) in enumerate(zip(fast.objects, reference.objects)))
    result = score_images(pairs)
    n_true = sum(s.n_true for s in result.images)
    at_90, at_50 = THRESHOLD_STEPS.index(18), THRESHOLD_STEPS.index(10)  # t = k / 20
    apart = ([a != b for a, b in zip(fast.scales, reference.scales)]
             if len(fast.scales) == len(reference.scales) == len(fast.objects) else [False] * len(fast.objects))
    lost = [s.n_true - s.tp[at_50] for s in result.images]
    return ObjectChanges(changed, float(result.score), n_true - sum(s.tp[at_90] for s in result.images), sum(lost),
                         sum(n for n, off in zip(lost, apart) if off), sum(apart))


def bench_inference(
    models_dir: str | Path,
    recipe: str,
    data_dir: str | Path,
    n_images: int | None = None,
    tta: Sequence[str] = ("none", "flips"),
    *,
    device: str = "auto",
    stage: str = "stage1",
    tiling=None,
    loader=None,
    threads: int | None = None,
    engine: str = "auto",
    reference: str | None = "flips",
    sizing: dict | None = None,
    engine_check: bool = True,
    streams: int | None = None,
) -> list[InferenceTiming]:
    """Time the ensemble of ``recipe`` on the test images of ``data_dir``.

    Args:
        models_dir: the models folder (``models_dir/<recipe>/ensemble.json`` or member folders).
        recipe: recipe name.
        data_dir: DATA_DIR with ``<stage>_test``.
        n_images: the first N test images (sorted by id); default all (65 for stage 1).
        tta: TTA modes to time on ``engine``, one line each.
        device: ``auto``, ``cpu`` or ``cuda``.
        stage: ``stage1`` or ``stage2``.
        tiling: :class:`competition.predict.Tiling` (default: the default tiling).
        loader: member loader (tests).
        threads: torch CPU threads (default: torch's); see
            :func:`competition.predict.set_threads`.
        engine: the engine timed (:data:`competition.predict.engines.ENGINES`).
        reference: also time this TTA mode on float32 PyTorch (today's path), last; None: not.
        sizing: ``nucleus_px``/``max_upscale``/``size_max_pixels`` of the timed runs (see
            :class:`competition.predict.EnsemblePredictor`); the reference keeps
            :data:`REFERENCE_SIZING`.
        engine_check: with ``reference``, also run float32 PyTorch at the timed runs' own
            ``sizing`` before the reference: its objects against the fast path's are the
            engine's difference alone (the reference's also hold the resizing's).
        streams: image streams of the timed runs (:mod:`competition.predict.streams`; None:
            ``auto``, as ``make submit``); the PyTorch runs have one.

    Returns:
        One :class:`InferenceTiming` per TTA mode, then the engine check's, then the reference's.
    """
    from competition.data.io import read_image
    from competition.ensemble import load_ensemble
    from competition.predict import set_threads
    from competition.submit import find_test_split, image_path, list_test_ids

    split, sample = find_test_split(data_dir, stage)
    ids = list_test_ids(split, sample)[: n_images or None]
    images = [read_image(image_path(split, i)) for i in ids]
    ensemble = load_ensemble(models_dir, recipe, create=False)
    set_threads(threads)
    runs = [(mode, engine, None, sizing, "") for mode in tta]
    if reference and engine_check:
        runs.append((reference, "torch", "fp32", sizing, ENGINE_CHECK_LABEL))
    if reference:
        runs.append((reference, "torch", "fp32", REFERENCE_SIZING, ""))
    timings, fast_clock = [], None  # fast_clock: the last fast run in the reference's TTA mode
    for n_run, (mode, run_engine, precision, run_sizing, suffix) in enumerate(runs):
        build = lambda: _predictors(ensemble, streams if n_run < len(tta) else None, device=device,  # noqa: E731
                                    tta=mode, tiling=tiling, loader=loader, engine=run_engine, threads=threads,
                                    precision=precision, sizing=run_sizing)
        predictors = build()
        if predictors[0].device.type == "cuda":  # warm-up: cuDNN autotuning is not inference time
            predictors[0].predict(images[0])
            predictors = build()
        clock = _Clock(keep_objects=reference is not None and mode == reference)
        clock.run_all(predictors, ensemble, images)
        timing = clock.timing(predictors, mode, _label(predictors[0], precision) + suffix)
        if n_run < len(tta) and clock.keep_objects:
            fast_clock = clock
        elif n_run >= len(tta) and fast_clock is not None:  # the engine check or the reference, against the fast run
            changes = compare_objects(fast_clock, clock)
            timing = replace(timing, changed_objects=changes.changed, agreement=changes.agreement,
                             reshaped_objects=changes.reshaped, unpartnered_objects=changes.unpartnered,
                             unpartnered_apart=changes.unpartnered_apart, images_apart=changes.images_apart)
        log.info("%s", timing.line())
        timings.append(timing)
    return timings


# ----------------------------------------------------------------------------- stage-2-like


def stage2_like(n: int, seed: int = 0) -> Iterator[tuple[str, "object"]]:
    """``n`` generated images (id, H×W×3 uint8) at the sizes of :data:`STAGE2_SHAPES`.

    Each image's nucleus diameter is drawn from :data:`STAGE1_DIAMETERS` (interpolated in
    log diameter); the image is drawn by :func:`competition.synth.draw_image` at its size
    divided by ``f`` = that diameter / the style's own, and resized by ``f``. Seeded: the
    same ``n`` and ``seed`` give the same images.
    """
    import numpy as np

    from competition.scale import resize_image
    from competition.synth import draw_image

    rng = np.random.default_rng(seed)
    shares = np.array([s for *_, s in STAGE2_SHAPES], dtype=float)
    kinds, kind_p = zip(*STAGE2_KINDS)
    for i in range(n):
        height, width, _ = STAGE2_SHAPES[int(rng.choice(len(STAGE2_SHAPES), p=shares / shares.sum()))]
        kind = str(rng.choice(kinds, p=np.array(kind_p) / sum(kind_p)))
        q, d = zip(*STAGE1_DIAMETERS)
        f = math.exp(float(np.interp(rng.random(), q, np.log(d)))) / _SYNTH_DIAMETER[kind]
        base = (max(32, round(height / f)), max(32, round(width / f)))
        image, _ = draw_image(kind, base, rng)
        image = resize_image(image, height / base[0]) if base[0] != height else image
        image = image[:height, :width]
        if image.shape[:2] != (height, width):  # rounding: pad by reflection to the exact size
            image = np.pad(image, ((0, height - image.shape[0]), (0, width - image.shape[1]), (0, 0)), mode="reflect")
        yield f"s2like{i:04d}", image


@dataclass(frozen=True)
class Stage2Report:
    """The stage-2-like run.

    Attributes:
        n_images: images predicted by the engine timed.
        megapixels: their total size.
        total_s: seconds (predict + post-process + encode) of the engine timed.
        n_reference: images also predicted by the float32 PyTorch reference (every k-th).
        reference_s: the reference's seconds on those.
        fast_on_reference_s: the timed engine's seconds on the same images.
        engine: the engine(s) timed.
        tta: the TTA mode.
        largest: (height, width) of the largest image.
        passes: the timed engine's network work per pass: (pass, seconds, megapixels).
    """

    n_images: int
    megapixels: float
    total_s: float
    n_reference: int
    reference_s: float
    fast_on_reference_s: float
    engine: str
    tta: str
    largest: tuple[int, int]
    passes: tuple[tuple[str, float, float], ...] = ()
    streams: int = 1

    @property
    def s_per_image(self) -> float:
        return self.total_s / max(self.n_images, 1)

    @property
    def s_per_mp(self) -> float:
        return self.total_s / max(self.megapixels, 1e-9)

    @property
    def projected_min(self) -> float:
        return self.s_per_image * STAGE2_IMAGES / 60

    @property
    def ratio(self) -> float:
        return self.reference_s / self.fast_on_reference_s if self.fast_on_reference_s > 0 else float("nan")

    def lines(self) -> list[str]:
        ref_per_image = self.reference_s / max(self.n_reference, 1)
        fast_per_image = self.fast_on_reference_s / max(self.n_reference, 1)
        return [
            f"stage-2-like {self.engine:<16} TTA {self.tta:<5} {self.n_images:4d} images ({self.megapixels:.1f} MP, "
            f"largest {self.largest[0]}x{self.largest[1]}): {self.total_s:7.1f} s, {self.s_per_image:.2f} s/image, "
            f"{self.s_per_mp:.2f} s/MP; projected {STAGE2_IMAGES} images: {self.projected_min:.0f} min"
            + (f"; {self.streams} image streams" if self.streams > 1 else "")
            + (f"; network by pass{' (summed over the streams)' if self.streams > 1 else ''}: "
               f"{passes_text(self.passes)}" if self.passes else ""),
            f"stage-2-like reference torch fp32 on {self.n_reference} of them: {ref_per_image:.2f} s/image against "
            f"{fast_per_image:.2f} s/image: {self.ratio:.2f}x faster; reference projected {STAGE2_IMAGES} images: "
            f"{self.projected_min * self.ratio:.0f} min",
        ]


def bench_stage2(models_dir: str | Path, recipe: str, n_images: int = 100, *, every: int = 8, tta: str = "flips",
                 device: str = "auto", engine: str = "auto", threads: int | None = None, seed: int = 0,
                 tiling=None, loader=None, sizing: dict | None = None, streams: int | None = None) -> Stage2Report:
    """Time the ensemble on :func:`stage2_like` images (with ``sizing`` and ``streams``, see
    :func:`bench_inference`), and the float32 PyTorch reference (:data:`REFERENCE_SIZING`) on
    every ``every``-th of them (``every`` 0: no reference). The images are drawn first, not
    timed.

    The fast path's time on the reference's images (for the ratio) is their own seconds,
    each measured in its stream, divided by the number of streams: the streams' seconds add
    up to about that many times the wall clock."""
    from competition.ensemble import load_ensemble
    from competition.predict import set_threads

    ensemble = load_ensemble(models_dir, recipe, create=False)
    set_threads(threads)
    images = [image for _, image in stage2_like(n_images, seed)]
    fast = _predictors(ensemble, streams, device=device, tta=tta, tiling=tiling, loader=loader, engine=engine,
                       threads=threads, sizing=sizing)
    fast_clock, ref_clock = _Clock(), _Clock()

    def progress(n: int, seconds: float) -> None:
        if n % 25 == 0:
            log.info("stage-2-like: %d/%d images, %.1f s", n, len(images), seconds)

    fast_clock.run_all(fast, ensemble, images, progress)
    fast_on_ref = 0.0
    if every:
        ref = _predictor(ensemble, device=device, tta=tta, tiling=tiling, loader=loader, engine="torch",
                         precision="fp32", sizing=REFERENCE_SIZING)
        for i in range(0, len(images), every):
            ref_clock.run(ref, ensemble, images[i])
            fast_on_ref += fast_clock.per_image[i] / len(fast)
    megapixels = sum(image.shape[0] * image.shape[1] for image in images) / 1e6
    largest = max((image.shape[:2] for image in images), key=lambda s: s[0] * s[1], default=(0, 0))
    return Stage2Report(len(fast_clock.per_image), megapixels, fast_clock.total, len(ref_clock.per_image),
                        sum(ref_clock.per_image), fast_on_ref, fast[0].engine, tta, tuple(largest),
                        network_passes(fast), streams=len(fast))


def peak_memory(models_dir: str | Path, recipe: str, shape: tuple[int, int] = STAGE2_SHAPES[-1][:2], *,
                tta: str = "flips", engine: str = "auto", threads: int | None = None, sizing: dict | None = None,
                tiling=None, streams: int | None = None) -> dict:
    """Maximum resident set size of a fresh process that loads the ensemble and predicts
    (and post-processes) one generated image of ``shape`` in each of its image streams at
    once (the worst case of a run: the largest image in every stream):
    ``{"shape", "streams", "peak_rss_mb", "seconds"}``."""
    command = [sys.executable, "-m", "competition.bench_inference", "--models", str(models_dir), "--recipe", recipe,
               "--engine", engine, "--tta", tta, "--_one-image", f"{shape[0]}x{shape[1]}"]
    if threads:
        command += ["--threads", str(threads)]
    if streams:
        command += ["--image-streams", str(streams)]
    for name, value in (sizing or {}).items():
        if value is not None:
            command += [f"--{name.replace('_', '-')}", str(value)]
    if tiling is not None:
        command += ["--tile-size", str(tiling.tile_size), "--tile-overlap", str(tiling.overlap),
                    "--max-side", str(tiling.max_side), "--batch-size", str(tiling.batch_size)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"peak-memory run failed: {out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _peak_rss_kb() -> int | None:
    """This process's peak resident set size in kB since its last exec (Linux ``VmHWM``), or
    None where /proc is missing. Not ``getrusage``: its ``ru_maxrss`` survives exec, so a
    child started by a large parent reports the parent's size at the fork."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _one_image(models_dir, recipe, shape: tuple[int, int], tta: str, engine: str, threads, sizing=None,
               tiling=None, streams=None) -> dict:
    """The child of :func:`peak_memory`."""
    import resource

    import numpy as np

    from competition.ensemble import load_ensemble
    from competition.predict import set_threads
    from competition.synth import draw_image

    set_threads(threads)
    ensemble = load_ensemble(models_dir, recipe, create=False)
    image, _ = draw_image("histology", shape, np.random.default_rng(0))
    predictors = _predictors(ensemble, streams, device="cpu", tta=tta, tiling=tiling, loader=None, engine=engine,
                             threads=threads, sizing=sizing)
    t0 = time.perf_counter()
    _Clock().run_all(predictors, ensemble, [image] * len(predictors))
    seconds = time.perf_counter() - t0
    peak_kb = _peak_rss_kb() or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # kilobytes on Linux
    return {"shape": list(shape), "streams": len(predictors), "engine": predictors[0].engine, "tta": tta,
            "peak_rss_mb": round(peak_kb / 1024, 1), "seconds": round(seconds, 2)}


def main(argv: list[str] | None = None) -> int:
    """Command line: stage-1 lines (one per TTA mode, then the reference), the stage-2-like
    lines and the peak memory."""
    from competition import cpu_model
    from competition.commands.submit import add_sizing_arguments, add_tiling_arguments, sizing_from_args, tiling_from_args
    from competition.errors import UserError

    parser = argparse.ArgumentParser(prog="python -m competition.bench_inference", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("models"), help="models folder")
    parser.add_argument("--recipe", default="cpu", help="recipe name")
    parser.add_argument("--data", type=Path, default=Path("data/dsb2018"), help="DATA_DIR with stage1_test")
    parser.add_argument("--n-images", type=int, help="time only the first N test images")
    parser.add_argument("--tta", nargs="+", default=["none", "flips"], choices=("none", "flips", "d4"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="CPU threads (default: one per core)")
    parser.add_argument("--engine", default="auto", choices=("auto", "torch", "onnxruntime", "openvino"))
    parser.add_argument("--no-reference", action="store_true", help="skip the float32 PyTorch reference")
    parser.add_argument("--no-engine-check", action="store_true",
                        help="skip the float32 PyTorch run at the fast path's own sizing (the engine's difference alone)")
    parser.add_argument("--stage2-like", type=int, default=100, metavar="N",
                        help="generated stage-2-like images to time (0: skip)")
    parser.add_argument("--reference-every", type=int, default=8, metavar="K",
                        help="time the reference on every K-th stage-2-like image")
    parser.add_argument("--no-peak-memory", action="store_true", help="skip the peak-memory run")
    parser.add_argument("--image-streams", type=int, metavar="N",
                        help="image streams of the fast path, as submit's (default: auto, 2 on a CPU with a fast "
                             "engine; the PyTorch runs have one)")
    parser.add_argument("--size-passes", type=int,
                        help="size passes of the timed runs, as submit's --size-passes (default: the predictor's, 2); "
                             "the reference keeps today's")
    add_sizing_arguments(parser)
    add_tiling_arguments(parser)
    parser.add_argument("--_one-image", dest="one_image", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)  # progress of the long stage-2-like run
    try:
        tiling = tiling_from_args(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    sizing = sizing_from_args(args)
    if args.size_passes is not None:  # a predictor keyword like the sizing ones (and passed on to --_one-image)
        sizing["size_passes"] = args.size_passes
    try:
        if args.one_image:
            height, width = (int(v) for v in args.one_image.split("x"))
            print(json.dumps(_one_image(args.models, args.recipe, (height, width), args.tta[-1], args.engine,
                                        args.threads, sizing, tiling, args.image_streams)))
            return 0
        print(f"cpu: {cpu_model() or 'not named by /proc/cpuinfo'} (the figures below are this machine's)", flush=True)
        timings = bench_inference(args.models, args.recipe, args.data, args.n_images, args.tta, device=args.device,
                                  threads=args.threads, engine=args.engine, tiling=tiling,
                                  reference=None if args.no_reference else "flips", sizing=sizing,
                                  engine_check=not args.no_engine_check, streams=args.image_streams)
        for timing in timings:
            print(timing.line(), flush=True)
        fast = {t.tta: t for t in timings[: len(args.tta)]}
        if not args.no_reference and "flips" in fast:
            ref = timings[-1]
            print(f"stage 1 flips: {fast['flips'].engine} {fast['flips'].total_s:.1f} s against torch fp32 "
                  f"{ref.total_s:.1f} s: {ref.total_s / fast['flips'].total_s:.2f}x faster", flush=True)
        if args.stage2_like:
            report = bench_stage2(args.models, args.recipe, args.stage2_like, every=0 if args.no_reference else
                                  args.reference_every, device=args.device, engine=args.engine, threads=args.threads,
                                  sizing=sizing, tiling=tiling, streams=args.image_streams)
            for line in report.lines()[: 1 if args.no_reference else 2]:
                print(line, flush=True)
        if not args.no_peak_memory:
            peak = peak_memory(args.models, args.recipe, engine=args.engine, threads=args.threads, sizing=sizing,
                               tiling=tiling, streams=args.image_streams)
            at_once = "one" if peak["streams"] == 1 else f"{peak['streams']} (one per image stream, at once)"
            print(f"peak memory: {peak['peak_rss_mb'] / 1024:.2f} GB resident predicting {at_once} "
                  f"{peak['shape'][0]}x{peak['shape'][1]} image{'s' if peak['streams'] > 1 else ''} "
                  f"({peak['engine']}, TTA {peak['tta']}, "
                  f"{peak['seconds']:.1f} s)")
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
