"""Tune the post-processing thresholds on out-of-fold probabilities, by the competition score.

:func:`tune_postprocess` runs a coordinate descent over a small grid: for each parameter in
turn it tries every value with the others fixed and keeps the value with the best mean image
score (:func:`competition.metric.score_image`); rounds repeat until nothing changes or
``n_rounds`` is reached. It is deterministic: values are tried in grid order and a tie keeps
the earlier value.

Two caches keep it fast: every parameter set is scored once (a value tried again in a later
round costs nothing), and the watershed of the current parameters is kept, so trying the
values of ``min_size``, ``fill_holes`` and ``grow`` (which only act after the watershed) costs
a size filter, a hole fill and a growth per image, not a watershed.

A sample may carry the resize factor its probabilities were predicted at (``(probs, label,
factor)``): the parameters' pixel counts are then those of the network's input
(:meth:`~competition.postprocess.PostprocessParams.at_scale`), so one ``min_size`` means the
same fraction of a nucleus in every image whatever its magnification.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

import numpy as np

from competition.metric import score_image
from competition.postprocess import PostprocessParams, finish_instances, watershed_raw
from competition.targets import CHANNELS

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_GRID", "TuneResult", "score_params", "tune_postprocess"]

DEFAULT_GRID: Mapping[str, tuple] = MappingProxyType(
    {
        "grow": (0, 1, 2, 3, 4),
        "body_threshold": (0.3, 0.4, 0.5, 0.6, 0.7),
        "seed_threshold": (0.3, 0.4, 0.5, 0.6, 0.7, 0.8),
        "min_seed_size": (0, 4, 8, 16, 32),
        "watershed_on": ("seed", "body"),
        "min_size": (0, 8, 16, 32, 48),
        "fill_holes": (True, False),
    }
)
"""The grid tuned by default, in the order the descent visits it (read-only; copy it with
``dict(DEFAULT_GRID)`` to change it). ``grow`` comes first: it trades against
``body_threshold`` (a lower threshold also enlarges the outlines, but merges neighbours),
and a descent that visits the threshold first settles at its lowest value without growth.
On the stained images of condition-out fold 0 that stopped at 0.4078 (threshold 0.3, no
growth) where threshold 0.5 with 1 px of growth scores 0.4401 (both conditions better)."""

# Fields that act after the watershed: trying their values reuses the watershed's output.
_FINISH_FIELDS = ("min_size", "fill_holes", "grow")
# The ones the descent visits last whatever the grid's order (``grow`` keeps its place).
_LAST_FIELDS = ("min_size", "fill_holes")

#: ``(probs, true label)`` or ``(probs, true label, resize factor)``
Sample = tuple[np.ndarray, np.ndarray] | tuple[np.ndarray, np.ndarray, float]


@dataclass(frozen=True)
class TuneResult:
    """What :func:`tune_postprocess` found.

    Attributes:
        params: the best parameters found.
        score_before: mean image score with the ``base`` parameters.
        score_after: mean image score with ``params`` (>= ``score_before``).
        history: every value tried, in order, as ``(parameter, value, mean score)``.
        n_images: number of images tuned on.
    """

    params: PostprocessParams
    score_before: float
    score_after: float
    history: list[tuple[str, Any, float]]
    n_images: int = 0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (``params`` as :meth:`PostprocessParams.to_dict`)."""
        return {
            "params": self.params.to_dict(),
            "score_before": self.score_before,
            "score_after": self.score_after,
            "n_images": self.n_images,
            "history": [[name, value, score] for name, value, score in self.history],
        }


def score_params(
    samples: Sequence[Sample],
    params: PostprocessParams = PostprocessParams(),
    channels: Sequence[str] = CHANNELS,
) -> float:
    """Mean competition score of :func:`competition.postprocess.watershed_instances` on samples.

    Args:
        samples: ``(probs, true_label)`` pairs, probs C×H×W in ``channels`` order, or
            ``(probs, true_label, factor)``: the parameters count the pixels of the
            network's input, resized by ``factor`` (:meth:`PostprocessParams.at_scale`).
        params: the post-processing parameters.
        channels: the channel names of the probabilities.

    Returns:
        The mean image score (0.0 for no sample).

    Shapes: samples [((C, H, W) float, (H, W) int)] -> float.
    """
    samples = _check_samples(samples)
    return _Evaluator(samples, tuple(channels)).score(params)


class _Evaluator:
    """Scores parameter sets on fixed samples, with the two caches described above."""

    def __init__(self, samples: list[tuple[np.ndarray, np.ndarray, float]], channels: tuple[str, ...]) -> None:
        self.samples = samples
        self.channels = channels
        self.scores: dict[PostprocessParams, float] = {}
        self._raw_key: tuple | None = None
        self._raw: list[np.ndarray] = []
        self.n_watersheds = 0

    @staticmethod
    def _key(params: PostprocessParams) -> tuple:
        return tuple((k, v) for k, v in params.to_dict().items() if k not in _FINISH_FIELDS)

    def _raw_labels(self, params: PostprocessParams) -> list[np.ndarray]:
        key = self._key(params)
        if key != self._raw_key:
            self._raw = [watershed_raw(probs, params.at_scale(factor), self.channels)
                         for probs, _, factor in self.samples]
            self._raw_key = key
            self.n_watersheds += 1
        return self._raw

    def score(self, params: PostprocessParams) -> float:
        if params not in self.scores:
            raw = self._raw_labels(params)
            per_image = [
                score_image(true_label, finish_instances(label, params.at_scale(factor))).score
                for label, (_, true_label, factor) in zip(raw, self.samples)
            ]
            self.scores[params] = float(np.mean(per_image)) if per_image else 0.0
        return self.scores[params]


def _check_samples(samples: Sequence[Sample]) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """The samples as ``(probs, label, factor)`` triples (factor 1 when not given), checked."""
    checked = []
    for i, sample in enumerate(samples):
        if len(sample) not in (2, 3):
            raise ValueError(f"sample {i}: expected (probs, label) or (probs, label, factor), got {len(sample)} items")
        probs, true_label = sample[0], sample[1]
        factor = float(sample[2]) if len(sample) == 3 else 1.0
        if not np.isfinite(factor) or factor <= 0:
            raise ValueError(f"sample {i}: the resize factor must be a positive number, got {sample[2]!r}")
        probs, true_label = np.asarray(probs), np.asarray(true_label)
        if probs.ndim == 2:
            probs = probs[None]
        if probs.ndim != 3 or true_label.ndim != 2 or probs.shape[1:] != true_label.shape:
            raise ValueError(
                f"sample {i}: probs must be C×H×W and the label H×W, "
                f"got {probs.shape} and {true_label.shape}"
            )
        checked.append((probs, true_label, factor))
    return checked


def _check_grid(grid: Mapping[str, Sequence], base: PostprocessParams) -> dict[str, tuple]:
    valid = PostprocessParams.field_names()
    unknown = sorted(set(grid) - set(valid))
    if unknown:
        raise ValueError(
            f"unknown post-processing parameter(s) in grid {unknown}; valid names: {list(valid)}"
        )
    checked = {}
    for name, values in grid.items():
        if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or len(values) == 0:
            raise ValueError(f"grid values for {name!r} must be a non-empty list, got {values!r}")
        for value in values:
            dataclasses.replace(base, **{name: value})  # raises ValueError on a bad value
        checked[name] = tuple(values)
    return checked


def tune_postprocess(
    samples: Sequence[Sample],
    grid: Mapping[str, Sequence] = DEFAULT_GRID,
    base: PostprocessParams = PostprocessParams(),
    *,
    n_rounds: int = 2,
    channels: Sequence[str] = CHANNELS,
) -> TuneResult:
    """Coordinate descent over ``grid``, maximising the mean competition score.

    For each parameter of ``grid`` in turn (in the grid's order, except that ``min_size`` and
    ``fill_holes``, which act after the watershed, come last), every listed value is tried
    with the other parameters fixed, and the value with the best mean score is kept; on a
    tie the earlier value wins. The current value, when not listed, is tried after the listed
    ones, so the score never goes down. A round visits every parameter; rounds repeat until
    one changes nothing, at most ``n_rounds``.

    Args:
        samples: ``(probs, true_label)`` pairs: out-of-fold C×H×W probabilities (in
            ``channels`` order) and the true H×W label image, typically all the validation
            images of one image type; a third item, the factor the probabilities were
            predicted at, makes the pixel counts tuned those of the network's input.
        grid: parameter name -> values to try (names of :class:`PostprocessParams` fields).
        base: the starting parameters (and the values of parameters not in ``grid``).
        n_rounds: the most rounds over the grid (>= 1).
        channels: the channel names of the probabilities.

    Returns:
        :class:`TuneResult` with the best parameters, the scores before and after, and the
        history of every value tried.

    Raises:
        ValueError: an unknown parameter name (the valid ones are listed), a bad value, an
            empty value list, a bad sample shape, no sample, or ``n_rounds < 1``.

    Shapes: samples [((C, H, W) float, (H, W) int)] -> TuneResult.
    """
    if n_rounds < 1:
        raise ValueError(f"n_rounds must be >= 1, got {n_rounds}")
    checked = _check_samples(samples)
    if not checked:
        raise ValueError("tune_postprocess needs at least one sample")
    grid = _check_grid(grid, base)
    started = time.perf_counter()
    evaluator = _Evaluator(checked, tuple(channels))
    # min_size and fill_holes go last in each round: their sweeps reuse the watershed of the rest.
    order = [n for n in grid if n not in _LAST_FIELDS] + [n for n in grid if n in _LAST_FIELDS]
    current = base
    best_score = score_before = evaluator.score(base)
    history: list[tuple[str, Any, float]] = []
    log.info("tuning on %d images: score %.4f with %s", len(checked), score_before, base.to_dict())
    for round_index in range(n_rounds):
        before_round = current
        for name in order:
            values = list(grid[name])
            if getattr(current, name) not in values:
                values.append(getattr(current, name))
            best_value, best_score = None, -np.inf
            for value in values:
                score = evaluator.score(dataclasses.replace(current, **{name: value}))
                history.append((name, value, score))
                log.debug("%s=%r: %.4f", name, value, score)
                if score > best_score:
                    best_value, best_score = value, score
            current = dataclasses.replace(current, **{name: best_value})
        log.info("round %d: score %.4f with %s", round_index + 1, best_score, current.to_dict())
        if current == before_round:
            break
    log.info(
        "tuned %d images in %.1f s (%d parameter sets, %d watershed passes): %.4f -> %.4f",
        len(checked),
        time.perf_counter() - started,
        len(evaluator.scores),
        evaluator.n_watersheds,
        score_before,
        best_score,
    )
    return TuneResult(
        params=current,
        score_before=score_before,
        score_after=evaluator.score(current),
        history=history,
        n_images=len(checked),
    )
