"""Ensembles: routing each image to its type's members, nucleus-size passes, averaging.

:class:`EnsemblePredictor`: every image is classified by
:func:`competition.data.types.classify_image` and routed to its type's members (or to the
``all`` members when its type has none); the members' probabilities are averaged with the
weights of the ensemble file (:mod:`competition.ensemble`). The routing of each image is
returned as a :class:`Route` for the submission's JSON sidecar.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from competition.errors import UserError
from competition.predict.forward import NetworkTimer, Tiling, resolve_device, tta_transforms
from competition.predict.members import LoadedMember, predict_scaled
from competition.predict.preprocess import colour_view, is_gray

log = logging.getLogger(__name__)

__all__ = ["PASSES", "SURVEY_FACTORS", "SURVEY_RANGE", "SURVEY_UPSCALE", "SURVEY_RULES", "SURVEY_RULE", "CONFIDENCE_MIN_SIDE", "SCALE_STEPS", "RESCALE_TOLERANCE", "SHRINK_RANGE", "MAX_UPSCALE", "UPSCALE_MAX_PIXELS", "SIZE_MAX_PIXELS", "mean_factor", "snap_scale", "size_windows", "Route", "PredictorTimings", "EnsemblePredictor", "prefetch"]

#: Downscales tried beside the native size in the first nucleus-size pass.
SURVEY_FACTORS = (0.5, 0.25)

#: A survey factor is trusted when the median diameter it measures, times the factor (the
#: nuclei's size in the network's input), lies within this ratio of the members' diameter:
#: the range the cpu recipe's scale jitter (1.6) trained the network on. The largest such
#: factor wins, because a view shrunk further can merge a cluster of small nuclei into one
#: blob of the trained size (measured on condition-out fold 0 and 200 images of the other
#: folds: README, "Nucleus-size estimate").
SURVEY_RANGE = 1.6

#: The survey also looks at the image enlarged by this factor when the native view measures
#: nuclei small enough (under ``SURVEY_RANGE`` times the members' diameter once enlarged) and
#: the enlarged image stays within :meth:`EnsemblePredictor.upscale_limit`: small touching
#: nuclei that the native view merges come apart there. 0 disables it.
SURVEY_UPSCALE = 2.0

#: How the survey picks the view whose size estimate it trusts. ``fit``: the largest factor
#: whose nuclei measure within ``survey_range`` of the members' diameter (the sharpest view
#: that fits; it stops there). ``confidence``: every survey factor runs (and the enlarged
#: view where ``fit`` would run it), and the view where the members are most sure of their
#: nuclei wins: the mean body probability over the pixels they call nucleus (above 0.5).
#: Large nuclei broken into fragments of the trained size at the native size come out
#: whole, and surer, in a shrunk view (measured on condition-out fold 0 resized by 2:
#: README, "Scale").
SURVEY_RULES = ("fit", "confidence")

#: The default survey rule (``fit`` until 2026-12-06). With finished members the two agree
#: within 0.002 on condition-out fold 0 at 0.5x, 1x and 2x; ``confidence`` avoids
#: ``fit``'s failure on nuclei larger than training's (README, "Scale").
SURVEY_RULE = "confidence"

#: Under the ``confidence`` rule, views whose smaller side is under this many pixels are
#: not candidates: a few blobs in a tiny view can look sure of themselves.
CONFIDENCE_MIN_SIDE = 96

#: The passes of one image, as :class:`~competition.predict.forward.NetworkTimer` counts the
#: network's work under them (``timings.network.stages``): the survey's views at the
#: ``survey_factors``, its enlarged view (``survey_upscale``), the further size passes, the
#: final pass with TTA, and the final passes of the colour views.
PASSES = ("survey", "enlarged survey", "refinement", "final", "colour views")

#: The resize factors of the size-estimated passes are rounded to this many steps per
#: octave (16: at most 2.2% from the estimate, well inside the estimate's own error), so
#: images of one size share network input shapes: the OpenVINO and PyTorch CPU kernels are
#: prepared once per shape. 0 disables the rounding.
SCALE_STEPS = 16


#: A size pass whose estimate moves the resize factors by at most this many octaves (0.125:
#: 9%, two :data:`SCALE_STEPS` steps) keeps the factors it ran at, and its probabilities
#: become the identity view of the final pass (one view less through the network).
RESCALE_TOLERANCE = 0.125

#: How far the final pass shrinks an image of nuclei larger than a member's diameter: until
#: they measure this many times that diameter; 0: the member's own ``scale_jitter``, the top
#: of the nucleus sizes it trained on (1: all the way to the diameter, the rule before
#: 2026-12-06). Shrinking less keeps more of the outline's resolution, which the metric's
#: strict IoU thresholds reward. Measured with the committed cpu ensemble (jitter 1.6, so
#: 44.8 px): condition-out holdout 0.7008 against 0.6843, the same resized by 2 0.6836
#: against 0.6722, by 0.5 equal; never shrinking scores 0.7019 and 0.6250 (nuclei of 80-100
#: px fragment). A limited factor within ``rescale_tolerance`` of a pass that already ran
#: takes that pass's factor, as any other.
SHRINK_RANGE = 0.0

#: The largest resize factor of the size-estimated passes: images of nuclei under 14 px go
#: to the network at twice their size, not to the member's diameter (their cost goes with
#: the factor's square). Measured on the condition-out holdout with the committed cpu
#: ensemble: 0.6748 against 0.6759 at 3x (with :data:`SIZE_MAX_PIXELS`), stage-2-like
#: inference 115 min against 141 (README, "Inference speed").
MAX_UPSCALE = 2.0

#: Up-scaling stops where the image would reach this many pixels (never below the native
#: size; down-scaling is not limited): an image's network cost goes with its pixels after
#: resizing while the score is a mean over images, so a large image of small nuclei pays
#: the most for the least. Measured with the committed cpu ensemble: condition-out holdout
#: 0.6776 against 0.6779 without a limit (its one large image of small nuclei, 603x1272,
#: 0.248 against 0.284), stage-2-like inference 51 min against 74 (README, "Inference speed").
UPSCALE_MAX_PIXELS = 2_000_000

#: The size passes of an image above this many pixels look at four windows of it
#: (:func:`size_windows`), not the whole image; the final pass always predicts all of it.
SIZE_MAX_PIXELS = 500_000


def mean_factor(factors: Iterable[float]) -> float:
    """The geometric mean of the members' resize factors (1 for none: the native size)."""
    logs = [math.log(f) for f in factors]
    return float(math.exp(sum(logs) / len(logs))) if logs else 1.0


def snap_scale(s: float, steps: int = SCALE_STEPS) -> float:
    """``s`` rounded to the nearest of ``steps`` per octave (``2 ** (k / steps)``); ``s`` itself
    when ``steps`` is 0 or ``s`` is 1."""
    if steps <= 0 or s == 1.0 or s <= 0:
        return s
    return float(2.0 ** (round(math.log2(s) * steps) / steps))


@dataclass(frozen=True)
class Route:
    """Where one image went.

    Attributes:
        image_type: the type :func:`~competition.data.types.classify_image` gave it.
        ensemble: the ensemble entry used (the type itself, or ``"all"`` on fallback).
        members: the member keys used, with their weights.
        fallback: True when the type had no members and the ``all`` members were used.
        diameter: the median nucleus diameter estimated by the size passes (members trained
            at a fixed ``nucleus_diameter``), None when no member needed it or the first
            pass found no nucleus.
        scales: member key -> the resize factor that member saw (1 = native).
        colour_views: the colour views averaged with the image (the type's ``colour_views``;
            empty when it has none or the image is grey, where every view is the image).
    """

    image_type: str
    ensemble: str
    members: tuple[tuple[str, float], ...]
    fallback: bool
    diameter: float | None = None
    scales: tuple[tuple[str, float], ...] = ()
    colour_views: tuple[str, ...] = ()

    @property
    def scale(self) -> float:
        """The resize factor the members saw (:func:`mean_factor` of theirs), which converts
        post-processing sizes counted in the network's pixels
        (:meth:`competition.ensemble.Ensemble.params_for`)."""
        return mean_factor(f for _, f in self.scales)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "type": self.image_type,
            "ensemble": self.ensemble,
            "members": [{"member": k, "weight": w} for k, w in self.members],
            "fallback": self.fallback,
        }
        if self.scales:
            out["nucleus_diameter_estimate"] = None if self.diameter is None else round(self.diameter, 2)
            out["scales"] = {k: round(v, 4) for k, v in self.scales}
        if self.colour_views:
            out["colour_views"] = list(self.colour_views)
        return out


@dataclass
class PredictorTimings:
    """Seconds spent per stage (summed over images)."""

    network: NetworkTimer = field(default_factory=NetworkTimer)
    classify: float = 0.0
    predict: float = 0.0  # the whole ensemble prediction, normalisation and blending included
    size_estimate: float = 0.0  # part of predict: the passes that estimate the nucleus size
    n_images: int = 0
    reused_views: int = 0  # final passes whose identity view came from the last size pass

    @classmethod
    def summed(cls, parts: Sequence["PredictorTimings"]) -> "PredictorTimings":
        """The sum of several predictors' timings (image streams: seconds summed over the
        streams, so they add up to more than the wall-clock time)."""
        total = cls()
        for part in parts:
            total.network.absorb(part.network)
            for name in ("classify", "predict", "size_estimate", "n_images", "reused_views"):
                setattr(total, name, getattr(total, name) + getattr(part, name))
        return total


class EnsemblePredictor:
    """Routes each image to its type's ensemble and averages the members' probabilities.

    Every member an image type can be routed to is loaded when the predictor is built (the
    ``all`` members only when some type falls back to them), so a broken member is reported
    before any prediction starts; the ensemble file's folders were checked when it was read.

    Args:
        ensemble: the ensemble spec (:class:`competition.ensemble.Ensemble`), validated.
        device: ``auto``, ``cpu``, ``cuda`` or a torch device.
        tta: one of :data:`TTA_MODES`.
        tiling: see :class:`Tiling`.
        loader: ``folder, device -> (model, config)``; default
            :func:`competition.train.members.load_member` (tests pass stand-ins).
        size_passes: for members trained at a ``nucleus_diameter``: how many passes without
            TTA estimate the nucleus size before the final pass (1: one native-scale pass;
            2: a second pass at the first estimate re-measures it, which corrects the first
            pass where nuclei far from the member's size merge or break up).
        engine: what runs the forward passes, one of
            :data:`~competition.predict.engines.ENGINES` (``auto``: by measurement, see
            :func:`~competition.predict.engines.resolve_engine`).
        precision: override every member's ``precision`` (``fp32`` for the float32
            reference of ``make bench``); None: each member's own.
        threads: CPU threads of the ONNX Runtime / OpenVINO engines (default: torch's).
        pin_threads: let OpenVINO pin its threads to cores (False for predictors that run
            side by side: :mod:`competition.predict.streams`).
        survey_factors: the resize factors of the first size pass (default
            :data:`SURVEY_FACTORS` beside the native size, ``(1.0, 0.5, 0.25)``).
        scale_steps: resize factors from the size estimate are rounded to this many steps
            per octave (:func:`snap_scale`; 0: not rounded).
        nucleus_px: the nucleus diameter the size-estimated passes resize to (default: each
            member's own ``nucleus_diameter``). Below it is cheaper (the pixels go with its
            square) while the members' training jitter covers it.
        max_upscale: the largest resize factor of a size-estimated pass (default
            :data:`MAX_UPSCALE`; :data:`competition.scale.MAX_SCALE`, 3, before): images of
            tiny nuclei cost its square.
        upscale_max_pixels: a size-estimated pass up-scales an image to at most this many
            pixels (the factor is at most ``sqrt(upscale_max_pixels / pixels)``, and never
            held below 1; default :data:`UPSCALE_MAX_PIXELS`; 0: no limit beyond
            ``max_upscale``).
        survey_range: a survey factor is trusted when its nuclei measure within this ratio of
            the members' diameter in the network's input; the largest such factor wins
            (default :data:`SURVEY_RANGE`; 1: the factor that came closest wins, the rule
            before 2026-12-04).
        survey_upscale: the enlarged survey view's factor (default :data:`SURVEY_UPSCALE`;
            0: none).
        survey_rule: how the survey picks its view, one of :data:`SURVEY_RULES` (default
            :data:`SURVEY_RULE`).
        size_max_pixels: the size passes of a larger image see at most this many pixels of
            it, in four windows spread over the image, instead of the whole image (default
            :data:`SIZE_MAX_PIXELS`; 0: the whole image). The final pass always predicts the
            whole image.
        rescale_tolerance: octaves within which a new size estimate keeps the factors a
            pass already ran at (default :data:`RESCALE_TOLERANCE`; 0: only the same
            factors), see :meth:`_estimate_scales`.
        shrink_range: the final pass shrinks an image of nuclei larger than a member's
            diameter only until they measure this many times it (default
            :data:`SHRINK_RANGE`, 0: each member's training ``scale_jitter``; 1: down to the
            diameter). The size passes are not changed.
    """

    def __init__(
        self,
        ensemble,
        *,
        device: str | torch.device = "auto",
        tta: str = "none",
        tiling: Tiling = Tiling(),
        loader=None,
        size_passes: int = 2,
        engine: str = "auto",
        precision: str | None = None,
        threads: int | None = None,
        survey_factors: Sequence[float] | None = None,
        scale_steps: int = SCALE_STEPS,
        nucleus_px: float | None = None,
        max_upscale: float | None = None,
        size_max_pixels: int | None = None,
        rescale_tolerance: float | None = None,
        upscale_max_pixels: int | None = None,
        survey_range: float | None = None,
        survey_upscale: float | None = None,
        survey_rule: str | None = None,
        shrink_range: float | None = None,
        pin_threads: bool = True,
    ) -> None:
        from competition.predict.engines import make_engine, resolve_engine

        tta_transforms(tta)  # validates
        if size_passes < 1:
            raise UserError(f"size_passes must be >= 1, got {size_passes}")
        self.size_passes = int(size_passes)
        self.scale_steps = int(scale_steps)
        self.survey_factors = tuple(float(f) for f in (survey_factors or (1.0, *SURVEY_FACTORS)))
        if not self.survey_factors or any(not 0 < f <= 4 for f in self.survey_factors):
            raise UserError(f"survey factors must lie in (0, 4], got {list(self.survey_factors)}")
        self.survey_range = float(SURVEY_RANGE if survey_range is None else survey_range)
        if not 1 <= self.survey_range <= 4:
            raise UserError(f"survey_range must lie in [1, 4] (1: the closest view wins), got {survey_range}")
        self.survey_upscale = float(SURVEY_UPSCALE if survey_upscale is None else survey_upscale)
        if self.survey_upscale != 0 and not 1 < self.survey_upscale <= 4:
            raise UserError(f"survey_upscale must be 0 (off) or lie in (1, 4], got {survey_upscale}")
        self.survey_rule = SURVEY_RULE if survey_rule is None else str(survey_rule)
        if self.survey_rule not in SURVEY_RULES:
            raise UserError(f"survey_rule must be one of {list(SURVEY_RULES)}, got {survey_rule!r}")
        self.nucleus_px = None if nucleus_px is None else float(nucleus_px)
        if self.nucleus_px is not None and not 4 <= self.nucleus_px <= 256:
            raise UserError(f"nucleus_px must lie in [4, 256] px, got {nucleus_px}")
        self.max_upscale = float(MAX_UPSCALE if max_upscale is None else max_upscale)
        if not 1 <= self.max_upscale <= 8:
            raise UserError(f"max_upscale must lie in [1, 8], got {max_upscale}")
        upscale_max_pixels = UPSCALE_MAX_PIXELS if upscale_max_pixels is None else int(upscale_max_pixels)
        if upscale_max_pixels < 0:
            raise UserError(f"upscale_max_pixels must be >= 0 (0: no limit), got {upscale_max_pixels}")
        self.upscale_max_pixels = upscale_max_pixels or None  # None: only max_upscale limits
        size_max_pixels = SIZE_MAX_PIXELS if size_max_pixels is None else int(size_max_pixels)
        self.size_max_pixels = size_max_pixels or None  # None: the whole image
        if self.size_max_pixels is not None and self.size_max_pixels < 4 * 64 * 64:
            raise UserError(f"size_max_pixels must be at least {4 * 64 * 64} (four 64 px windows), got {size_max_pixels}")
        self.rescale_tolerance = float(RESCALE_TOLERANCE if rescale_tolerance is None else rescale_tolerance)
        if not 0 <= self.rescale_tolerance <= 1:
            raise UserError(f"rescale_tolerance must lie in [0, 1] octaves, got {rescale_tolerance}")
        self.shrink_range = float(SHRINK_RANGE if shrink_range is None else shrink_range)
        if self.shrink_range != 0 and not 1 <= self.shrink_range <= 8:
            raise UserError(f"shrink_range must be 0 (each member's scale jitter) or lie in [1, 8], got {shrink_range}")
        self.ensemble = ensemble
        self.device = resolve_device(device)
        resolve_engine(engine, self.device)  # validates before any member is loaded
        self.tta = tta
        self.tiling = tiling
        self.timings = PredictorTimings()
        if loader is None:
            from competition.train.members import load_member as loader
        self.members: dict[str, LoadedMember] = {}
        self.engines: dict[str, str] = {}  # member key -> the engine that runs it
        for key in ensemble.routed_member_keys():
            folder = ensemble.member_folder(key)
            try:
                model, config = loader(folder, self.device)
            except UserError:
                raise
            except Exception as exc:  # noqa: BLE001 - a corrupt checkpoint is the user's to fix
                raise UserError(f"cannot load member {folder}: {type(exc).__name__}: {exc}") from None
            model.eval()
            if self.device.type == "cuda":
                model.to(memory_format=torch.channels_last)
            if precision is not None:
                config = {**config, "member": {**(config.get("member") or {}), "precision": precision}}
            member = LoadedMember(key, Path(folder), model, config)
            name = resolve_engine(engine, self.device, member.precision)
            if name != "torch":
                member.engine = make_engine(name, model, folder=folder, arch=str(config.get("arch", "net")),
                                            device=self.device, precision=member.precision, threads=threads,
                                            pin=pin_threads)
            self.engines[key] = name
            self.members[key] = member
        channels = {m.channels for m in self.members.values()}
        if len(channels) > 1:
            raise UserError(
                "ensemble members predict different channels: "
                + "; ".join(f"{k}: {list(m.channels)}" for k, m in self.members.items())
            )
        self.channels: tuple[str, ...] = channels.pop() if channels else ()
        #: the engine(s) used, for records: one name, or several joined by "+"
        self.engine = "+".join(sorted(set(self.engines.values()))) or resolve_engine(engine, self.device)
        log.info(
            "loaded %d member(s) on %s (engine %s), TTA %s (%d view(s)), tiles %d px (overlap %d) above %d px",
            len(self.members),
            self.device,
            self.engine,
            tta,
            len(tta_transforms(tta)),
            tiling.tile_size,
            tiling.overlap,
            tiling.max_side,
        )

    def sizing(self) -> dict[str, Any]:
        """The resolved resizing settings (the submission's JSON and cache key hold them;
        ``size_max_pixels`` None: the size passes saw whole images; ``upscale_max_pixels``
        None: no pixel limit on the up-scaling)."""
        return {"nucleus_px": self.nucleus_px, "max_upscale": self.max_upscale, "size_max_pixels": self.size_max_pixels,
                "rescale_tolerance": self.rescale_tolerance, "upscale_max_pixels": self.upscale_max_pixels,
                "survey_range": self.survey_range, "survey_upscale": self.survey_upscale,
                "survey_rule": self.survey_rule, "shrink_range": self.shrink_range}

    def upscale_limit(self, shape: tuple[int, ...]) -> float:
        """The largest resize factor of a size-estimated pass on an image of ``shape``:
        ``max_upscale``, lowered so the resized image holds at most ``upscale_max_pixels``
        (but never below 1)."""
        if self.upscale_max_pixels is None:
            return self.max_upscale
        pixels = int(shape[0]) * int(shape[1])
        return min(self.max_upscale, max(1.0, math.sqrt(self.upscale_max_pixels / pixels)))

    def route(self, image: np.ndarray) -> Route:
        """Classify ``image`` and pick its ensemble (the ``all`` fallback when its type has no
        member)."""
        from competition.data.types import classify_image

        t0 = time.perf_counter()
        image_type = classify_image(image)
        self.timings.classify += time.perf_counter() - t0
        entry, fallback = self.ensemble.route(image_type)
        return Route(image_type, entry, tuple((m.key, m.weight) for m in self.ensemble.members_of(entry)), fallback)

    def predict(self, image: np.ndarray, route: Route | None = None) -> tuple[np.ndarray, Route]:
        """Weighted mean of the routed members' probabilities.

        When the image's type has colour views (the ensemble entry's ``colour_views``) and
        the image is not grey, the result is the mean over the image and those views of it,
        each through the same final pass (same resize factors, TTA and tiles); the nucleus
        size is estimated on the image alone.

        Returns:
            (probs C×H×W float32, the route taken).

        Shapes: image (H, W, 3) uint8 -> probs (C, H, W) float32.
        """
        if route is None:
            route = self.route(image)
        t0 = time.perf_counter()
        total = sum(w for _, w in route.members)
        targets = {key: self.members[key].nucleus_diameter for key, _ in route.members}
        kept: dict[str, np.ndarray] = {}
        if any(targets.values()):
            route, kept = self._estimate_scales(image, route, targets)
        scales = dict(route.scales) or {key: 1.0 for key, _ in route.members}
        self.timings.network.stage = "final"
        out = self._final_pass(image, route, scales, kept, total)
        views = self.ensemble.colour_views(route.image_type)
        if views and not is_gray(image):
            self.timings.network.stage = "colour views"
            for name in views:
                out += self._final_pass(colour_view(image, name), route, scales, {}, total)
            out /= np.float32(1 + len(views))
            route = dataclasses.replace(route, colour_views=tuple(views))
        self.timings.network.stage = ""
        self.timings.predict += time.perf_counter() - t0
        self.timings.n_images += 1
        return out, route

    def _final_pass(self, image: np.ndarray, route: Route, scales: dict[str, float], kept: dict[str, np.ndarray],
                    total: float) -> np.ndarray:
        """The routed members' weighted mean at ``scales`` with TTA (``kept``: identity views
        the last size pass already computed at those scales)."""
        transforms = tta_transforms(self.tta)
        out: np.ndarray | None = None
        for key, weight in route.members:
            identity = kept.get(key)
            if identity is not None and 0 in transforms:
                # the last size pass ran this member at this scale without TTA: that is the
                # identity view; only the other views go through the network
                self.timings.reused_views += 1
                rest = tuple(k for k in transforms if k != 0)
                probs = identity
                if rest:
                    others = predict_scaled(self.members[key], image, scales[key], tta=self.tta, tiling=self.tiling,
                                            device=self.device, timer=self.timings.network, views=rest)
                    probs = (identity + others * len(rest)) / len(transforms)
            else:
                probs = predict_scaled(
                    self.members[key], image, scales[key], tta=self.tta, tiling=self.tiling, device=self.device,
                    timer=self.timings.network,
                )
            if out is None:
                out = probs * (weight / total)
            else:
                out += probs * (weight / total)
        assert out is not None
        return out


    def _estimate_scales(self, image: np.ndarray, route: Route,
                         targets: dict[str, float]) -> tuple[Route, dict[str, np.ndarray]]:
        """Size passes for members trained at a fixed nucleus diameter (no TTA).

        The first pass (the survey) looks at ``survey_factors`` from the largest down (by
        default the native size, then the :data:`SURVEY_FACTORS` below it, a quarter and a
        sixteenth of the cost): the routed members' mean probabilities, post-processed with
        the type's parameters, give a median diameter at each factor. The largest factor at
        which the nuclei measure within ``survey_range`` of the members' diameter (in the
        network's input) is trusted, and the smaller ones are not run: large, dim nuclei break
        up at the native size, where they are several times what the network was trained on,
        and come out whole when shrunk; but a shrunk view can also merge a cluster of small
        nuclei into one blob of the trained size, so the sharpest view that fits wins. When
        the native view measures small nuclei, the survey also looks at the image enlarged by
        ``survey_upscale`` (within :meth:`upscale_limit`), where touching small nuclei come
        apart. Where no factor fits, the one that came closest wins. That is the ``fit``
        rule; under ``survey_rule="confidence"`` every survey factor runs (the enlarged view
        as above) and the view where the members' body probability is highest over the
        pixels they call nucleus wins (views under :data:`CONFIDENCE_MIN_SIDE` px excepted;
        none left: the closest). Each further pass
        (``size_passes``) predicts at the current factors and measures again.
        An image above ``size_max_pixels`` is measured on :func:`size_windows` of it.

        Factors within ``rescale_tolerance`` octaves of ones a pass already ran at are
        replaced by those (the estimate moving by less is well inside its own error and the
        members' training jitter), so a pass is never repeated at nearly the same size, and
        the last pass's probabilities at the factors kept (whole images only) are returned
        for :meth:`predict` to use as the identity view of the final pass.

        Returns:
            (the route with its diameter and scales, member key -> probabilities at those
            scales without TTA; empty when the last pass ran elsewhere or on windows).
        """
        from competition.postprocess import watershed_instances
        from competition.scale import diameter_of_areas, object_areas, scale_factor

        t0 = time.perf_counter()
        total = sum(w for _, w in route.members)
        target = float(np.exp(np.mean([np.log(t) for t in targets.values() if t > 0])))
        windows = size_windows(image.shape[:2], self.size_max_pixels)
        whole = len(windows) == 1 and windows[0][0] == (slice(0, image.shape[0]), slice(0, image.shape[1]))
        #: factors a pass ran at (sorted member items) -> (its estimate, the members' probabilities if whole)
        ran: dict[tuple[tuple[str, float], ...], tuple[float | None, dict[str, np.ndarray]]] = {}
        #: the same key -> the members' mean body probability over the pixels above 0.5
        sure: dict[tuple[tuple[str, float], ...], float] = {}

        def measure(factors: dict[str, float]) -> float | None:
            key = tuple(sorted(factors.items()))
            if key in ran:
                return ran[key][0]
            areas, kept, body_sum, body_n = [], {}, 0.0, 0
            # the pixel counts of a type tuned in the network's pixels follow the factors
            params = self.ensemble.params_for(route.image_type, scale=mean_factor(factors.values()))[0]
            for window, inner in windows:
                view = image[window]
                mean: np.ndarray | None = None
                for member, weight in route.members:
                    p = predict_scaled(self.members[member], view, factors[member], tta="none", tiling=self.tiling,
                                       device=self.device, timer=self.timings.network)
                    if whole:
                        kept[member] = p
                    mean = p * (weight / total) if mean is None else mean + p * (weight / total)
                assert mean is not None
                areas.append(object_areas(watershed_instances(mean, params, self.channels), cut_edges=inner))
                if self.survey_rule == "confidence":
                    body = mean[0][mean[0] > 0.5]
                    body_sum, body_n = body_sum + float(body.sum(dtype=np.float64)), body_n + body.size
            estimate = diameter_of_areas(np.concatenate(areas), min_area=params.min_size)
            ran[key] = (estimate, kept)
            sure[key] = body_sum / body_n if body_n else 0.0
            return estimate

        def settle(factors: dict[str, float]) -> dict[str, float]:
            best, closest = self.rescale_tolerance, None
            for key in ran:
                off = max(abs(math.log2(factors[m] / f)) for m, f in key)
                if off <= best + 1e-9:
                    best, closest = off, dict(key)
            return closest or factors

        smallest = min(min(image[w].shape[:2]) for w, _ in windows)
        hi = self.upscale_limit(image.shape)
        lo_fit, hi_fit = target / self.survey_range, target * self.survey_range
        surveyed: dict[float, float] = {}  # factor -> the diameter measured there (in native pixels)

        def survey(factor: float, stage: str = "survey") -> bool:
            """Measure at ``factor``; True when the nuclei come out within the trained range."""
            if smallest * factor < 32:
                return False
            self.timings.network.stage = stage
            estimate = measure({k: factor for k, _ in route.members})
            if estimate is None:
                return False
            surveyed[factor] = estimate
            return lo_fit <= estimate * factor <= hi_fit

        top, trusted = max(self.survey_factors), None
        for factor in sorted(self.survey_factors, reverse=True):
            fits = survey(factor)
            up = factor * self.survey_upscale
            if (factor == top and self.survey_upscale > 1 and up <= hi and factor in surveyed
                    and surveyed[factor] * up <= hi_fit and survey(up, "enlarged survey")):
                trusted = up  # the enlarged view resolves the nuclei within the trained range
                if self.survey_rule == "fit":
                    break
            if fits and self.survey_rule == "fit":
                trusted = factor  # a smaller view could only merge what this one resolves
                break
        if self.survey_rule == "confidence":
            candidates = [f for f in surveyed if smallest * f >= CONFIDENCE_MIN_SIDE]
            trusted = max(candidates, key=lambda f: sure[tuple(sorted((k, f) for k, _ in route.members))],
                          default=None)
        if trusted is None and surveyed:  # nowhere within the range: the view that came closest
            trusted = min(surveyed, key=lambda f: abs(math.log(surveyed[f] * f / target)))
        diameter = surveyed.get(trusted)

        def scales_for(d: float | None) -> dict[str, float]:
            return settle({k: snap_scale(scale_factor(d, self.nucleus_px or targets[k], hi=hi),
                                         self.scale_steps) for k, _ in route.members})

        scales = scales_for(diameter)
        for _ in range(self.size_passes - 1):
            if diameter is None or tuple(sorted(scales.items())) in ran:
                break  # a pass at these factors ran already: it would measure the same again
            self.timings.network.stage = "refinement"
            estimate = measure(scales)
            if estimate is None:  # nothing found at this scale: keep the previous estimate
                break
            diameter = estimate
            scales = scales_for(diameter)
        if diameter is not None:  # the final pass shrinks only to the top of the trained sizes
            limited = {k: self._shrink_limited(k, f, diameter, self.nucleus_px or targets[k]) for k, f in scales.items()}
            if limited != scales:
                scales = settle(limited)
        kept = ran.get(tuple(sorted(scales.items())), (None, {}))[1]
        self.timings.size_estimate += time.perf_counter() - t0
        return dataclasses.replace(route, diameter=diameter, scales=tuple(scales.items())), kept

    def _shrink_limited(self, key: str, factor: float, diameter: float, target: float) -> float:
        """``factor``, raised where it shrinks the image's nuclei (``diameter`` px) below
        ``shrink_range`` (0: the member's scale jitter) times ``target``, and never above 1."""
        if factor >= 1.0 or not target or not diameter > 0:
            return factor
        top = target * (self.shrink_range or self.members[key].scale_jitter)
        return min(1.0, max(factor, snap_scale(top / diameter, self.scale_steps)))


def size_windows(shape: tuple[int, int], max_pixels: int | None) -> list[tuple[tuple[slice, slice], tuple[bool, bool, bool, bool]]]:
    """Where the size passes look in an image of ``shape``: the whole image when it holds at
    most ``max_pixels`` (or ``max_pixels`` is None), else four windows of ``max_pixels / 4``
    each, centred on the image's quarters (clamped inside it).

    Returns:
        (the window's (rows, cols) slices, which of its edges top/bottom/left/right lie
        inside the image), per window: objects cut by an inner edge are not measured.
    """
    height, width = int(shape[0]), int(shape[1])
    if max_pixels is None or height * width <= max_pixels:
        return [((slice(0, height), slice(0, width)), (False, False, False, False))]
    side = math.sqrt(max_pixels / 4)
    wh = int(min(height, side))
    ww = int(min(width, max_pixels / 4 / wh))
    wh = int(min(height, max_pixels / 4 / ww))
    out = []
    for cy in (height / 4, 3 * height / 4):
        for cx in (width / 4, 3 * width / 4):
            top = int(min(max(0, round(cy - wh / 2)), height - wh))
            left = int(min(max(0, round(cx - ww / 2)), width - ww))
            inner = (top > 0, top + wh < height, left > 0, left + ww < width)
            out.append(((slice(top, top + wh), slice(left, left + ww)), inner))
    return out


# ----------------------------------------------------------------------------- reading ahead


def prefetch(items: Sequence, read, *, depth: int = 2) -> Iterator[tuple[Any, Any, BaseException | None]]:
    """Yield ``(item, read(item), None)`` in order, reading up to ``depth`` items ahead in a
    background thread so the network does not wait for the disk; a failed read yields
    ``(item, None, exception)``.
    """
    from concurrent.futures import ThreadPoolExecutor

    def safe(item):
        try:
            return read(item), None
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            return None, exc

    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="read") as pool:
        pending = []
        iterator = iter(items)
        for item in iterator:
            pending.append((item, pool.submit(safe, item)))
            if len(pending) > depth:
                break
        while pending:
            item, future = pending.pop(0)
            nxt = next(iterator, _END)
            if nxt is not _END:
                pending.append((nxt, pool.submit(safe, nxt)))
            value, error = future.result()
            yield item, value, error


_END = object()
