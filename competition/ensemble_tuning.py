"""Tuning an ensemble's post-processing per image type on its members' out-of-fold maps,
cross-fitted over whole imaging conditions when the folds name them.

:func:`tune_ensemble` writes the tuned parameters and a record of the tuning into the
ensemble file (:mod:`competition.ensemble`); :func:`crossfit_postprocess` gives the
out-of-sample score (each part of whole conditions scored with parameters tuned on the
others) that ``make holdout`` then reproduces on the submit path. Given candidate colour
views, each image type's maps are also averaged with those of colour views of its images
(:func:`colour_view_oof`), and the views are kept where that scores better (cross-fitted
when conditions are given).
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from competition.ensemble import ENTRY_NAMES, SIZE_UNITS, Ensemble, write_ensemble
from competition.errors import DataError, UserError
from competition.oof import OOFSet, collect_oof, oof_ids, training_split_dir

log = logging.getLogger(__name__)

__all__ = ["TypeTuning", "tune_ensemble", "condition_parts", "crossfit_postprocess", "colour_view_oof"]


@dataclass(frozen=True)
class TypeTuning:
    """The outcome of tuning one entry.

    Attributes:
        entry: the ensemble entry (``all`` or an image type).
        image_type: the image type tuned on (None for ``all``: every type).
        members: the members whose out-of-fold maps were used.
        n_images: images tuned on.
        result: the :class:`competition.tuning.TuneResult`; None when there was no image.
        params: the parameters written (the defaults when tuning gained nothing), or None.
        note: why nothing was tuned, or why the defaults were kept.
        choice: own members against the all-type fallback (and, with ``average_with_all``,
            against both averaged: the type's members and the all-type ones, each with its
            weight), when they could be compared: ``own_score``, ``all_score``
            (``both_score``) tuned on the same images, with conditions also ``own_crossfit``
            and ``all_crossfit`` (``both_crossfit``) out of sample, ``by`` (``crossfit`` when
            every side could be cross-fitted, else ``tuned``) and ``kept`` (``own``, ``all`` or
            ``both``; a tie keeps the type's own members, then the all-type ones rather than
            both).
        crossfit: the out-of-sample record of :func:`crossfit_postprocess`, when conditions
            were given.
        views: when candidate colour views were tried: ``candidates``, ``n_colour_images``,
            ``plain_score`` and ``views_score`` (tuned), with conditions ``plain_crossfit``
            and ``views_crossfit``, ``by`` and ``kept`` (the views kept; empty: none); the
            tuning record's ``colour_views``.
    """

    entry: str
    image_type: str | None
    members: tuple[str, ...]
    n_images: int
    result: Any = None
    params: dict | None = None
    note: str = ""
    choice: dict | None = None
    crossfit: dict | None = None
    views: dict | None = None


def tune_ensemble(
    ensemble: Ensemble,
    *,
    data_dir: str | Path | None = None,
    grid: Mapping[str, Any] | None = None,
    n_rounds: int = 2,
    entries: Iterable[str] | None = None,
    write: bool = True,
    conditions: Mapping[str, str] | None = None,
    n_parts: int = 3,
    colour_views: Sequence[str] = (),
    size_units: str = "image",
    device: str = "auto",
    loader=None,
    average_with_all: bool = False,
) -> tuple[Ensemble, list[TypeTuning]]:
    """Tune the post-processing of every image type on its members' out-of-fold maps.

    Per image type: the maps of the members it routes to (its own, or the ``all`` members on
    fallback, restricted to images of that type; with the ensemble's ``other_folds``, those
    of the same members trained on other folds too), averaged per image (:func:`collect_oof`),
    with the true labels read from the training split, go to
    :func:`competition.tuning.tune_postprocess`. The ``all`` entry is tuned on every
    out-of-fold image of its members (those parameters serve a type that had no image to tune
    on). The parameters and a record of the tuning go into the ensemble file, written
    atomically after each entry when ``write``.

    Args:
        ensemble: the validated ensemble.
        data_dir: DATA_DIR (or the labelled split); default: the one recorded in the members'
            ``config.json``.
        grid: the tuning grid; default :data:`competition.tuning.DEFAULT_GRID`.
        n_rounds: coordinate-descent rounds.
        entries: only these entries (default: ``all`` and every image type).
        write: write the ensemble file.
        conditions: ImageId -> imaging condition (a condition-out folds file's column): when
            given, every entry is also cross-fitted (:func:`crossfit_postprocess`), and its
            out-of-sample score and per-part parameters go into the tuning record.
        n_parts: parts of whole conditions for the cross-fitting.
        colour_views: candidate colour views
            (:data:`~competition.predict.preprocess.COLOUR_VIEWS`): for every image type,
            once its members are chosen, its maps averaged with those of these views
            (:func:`colour_view_oof`) are tuned too, and the views are kept (the entry's
            ``colour_views``) when that scores higher: cross-fitted when ``conditions`` are
            given, else tuned in sample. Empty: no views, and a tuned type's colour views are
            cleared (its parameters are tuned on maps without them).
        size_units: what the pixel counts (``min_seed_size``, ``min_size``, ``grow``,
            ``seed_dilation``) are tuned and written in: ``"image"`` (default), the image's
            own pixels; ``"network"``, the pixels of the network's input: each out-of-fold map
            counts with the factor its image was resized by (the true median nucleus to the
            members' diameter), and prediction converts them with each image's own factor.
        average_with_all: where a type has its own members, also tune them averaged with the
            all-type members, a third side of its choice (off by default: it puts a second
            network on that type's images at prediction).
        device, loader: where and how the members are loaded to predict the colour views
            (``loader``: ``folder, device -> (model, config)``, default
            :func:`competition.train.members.load_member`).

    Returns:
        (the updated ensemble, one :class:`TypeTuning` per entry tuned or skipped).
    """
    from competition.data.io import load_split
    from competition.postprocess import PostprocessParams
    from competition.tuning import DEFAULT_GRID, tune_postprocess

    grid = DEFAULT_GRID if grid is None else grid
    if size_units not in SIZE_UNITS:
        raise UserError(f"size units must be one of {list(SIZE_UNITS)}, got {size_units!r}")
    if colour_views:
        from competition.predict.preprocess import check_colour_views

        try:
            colour_views = check_colour_views(list(colour_views), "colour views")
        except ValueError as exc:
            raise UserError(str(exc)) from None
    wanted = list(entries) if entries is not None else list(ENTRY_NAMES)
    unknown = [e for e in wanted if e not in ENTRY_NAMES]
    if unknown:
        raise UserError(f"unknown type(s) {unknown}; valid: {', '.join(ENTRY_NAMES)}")
    plans: list[tuple[str, str, str | None]] = []  # (entry, members' entry, image type)
    for name in wanted:
        if name == "all":
            if ensemble.entries["all"].members:
                plans.append(("all", "all", None))
            continue
        source, _ = ensemble.route(name)
        plans.append((name, source, name))
    oofs: dict[str, OOFSet] = {}
    fallbacks: dict[str, OOFSet] = {}  # the all-type members on a type that has its own
    for name, source, image_type in plans:
        oofs[name] = collect_oof(ensemble, source, image_type)
        if name != "all" and source == name and ensemble.entries["all"].members:
            fallbacks[name] = collect_oof(ensemble, "all", image_type)
    needed = sorted({i for oof in [*oofs.values(), *fallbacks.values()] for i in oof.probs})
    labels: dict[str, Any] = {}
    images: dict[str, Any] = {}
    if needed:
        split = training_split_dir(ensemble, data_dir)
        log.info("reading %d true labels from %s", len(needed), split)
        try:
            loaded, _ = load_split(split, ids=needed)
        except DataError as exc:
            raise DataError(f"{exc} (the out-of-fold images must come from this split: pass --data DATA_DIR)") from None
        labels = {s.image_id: s.label for s in loaded}
        if colour_views:
            images = {s.image_id: s.image for s in loaded}
    outcomes: list[TypeTuning] = []
    base = PostprocessParams()  # start from the defaults: re-tuning does not drift
    # In network units each out-of-fold map counts with the factor its image was predicted at
    # (its true median nucleus brought to the members' diameter).
    diameters = {entry: members_diameter(ensemble, entry) if size_units == "network" else 0.0
                 for entry in {s for _, s, _ in plans} | {"all"}}

    def _samples(o: OOFSet, entry: str) -> list[tuple[Any, Any, float]]:
        return _samples_at(o, labels, diameters[entry])

    def _samples_by_id(o: OOFSet, entry: str) -> dict[str, tuple[Any, Any, float]]:
        return dict(zip(o.probs, _samples(o, entry)))

    def _leave_to_all(name: str, image_type: str, members: tuple[str, ...], o: OOFSet, record: dict) -> None:
        """A type whose out-of-fold images all come from one imaging condition, served by the
        all-type members: no parameters of its own. Nothing out of sample could judge them, and
        a holdout would score these images with parameters tuned on them."""
        nonlocal ensemble
        note = (f"its {len(o.probs)} out-of-fold image(s) come from 1 imaging condition: no parameters of its "
                "own (nothing out of sample could judge them); the all-type parameters, cross-fitted over every "
                "condition, apply")
        log.info("%s: %s", name, note)
        record = {**record, "note": note}
        if ensemble.other_folds:
            record["other_folds"] = [str(r) for r in ensemble.other_folds]
        ensemble = ensemble.with_tuning(name, None, record, colour_views=())
        if write:
            write_ensemble(ensemble)
        outcomes.append(TypeTuning(name, image_type, members, len(o.probs), note=note, crossfit=record["crossfit"]))

    for name, source, image_type in plans:
        oof = oofs[name]
        crossfits: dict[str, dict] = {}  # side ("own"/"all") -> its cross-fitting, when compared
        members = tuple(m.key for m in ensemble.members_of(source))
        if not oof.probs:
            note = (f"no out-of-fold {image_type or ''} image in the members of '{source}'; "
                    f"{'the all parameters' if name != 'all' else 'the defaults'} apply")
            log.warning("%s: %s", name, note)
            outcomes.append(TypeTuning(name, image_type, members, 0, note=note))
            continue
        parts = (condition_parts(oof.probs, conditions, n_parts)
                 if conditions is not None and name != "all" and source == "all"
                 and ensemble.entries["all"].postprocess is not None else None)
        if parts is not None and max(parts.values(), default=0) < 1:
            # decided before tuning it in sample, which would be thrown away
            _leave_to_all(name, image_type, members, oof,
                          {"image_type": image_type, "n_images": len(oof.probs), "members": dict(oof.members),
                           "from_entry": source, "crossfit": _not_crossfitted(parts)})
            continue
        log.info("tuning %s on %d image(s) from %s", name, len(oof.probs), ", ".join(k for k, n in oof.members.items() if n))
        result = tune_postprocess(_samples(oof, source), grid, base, n_rounds=n_rounds, channels=oof.channels)
        record = _tuning_record(result, oof, image_type, source, n_rounds, ensemble.entries[name].postprocess)
        alternative = fallbacks.get(name)
        averaged: OOFSet | None = None  # the type's own and the all-type members together
        if alternative is not None and set(alternative.probs) == set(oof.probs):
            # Keep what scores best on the same images: the type's own (fine-tuned) members,
            # the all-type model it would otherwise fall back to, or both averaged (a per-type
            # ensemble of two different networks).
            log.info("tuning %s on the same %d image(s) with the all-type members%s", name, len(oof.probs),
                     ", and with both" if average_with_all else "")
            fallback = tune_postprocess(_samples(alternative, "all"), grid, base, n_rounds=n_rounds,
                                        channels=alternative.channels)
            record["choice"] = {
                "own_members": [m.key for m in ensemble.members_of(name)],
                "own_score": round(result.score_after, 6),
                "all_members": [m.key for m in ensemble.members_of("all")],
                "all_score": round(fallback.score_after, 6),
                "by": "tuned",
            }
            keys = {"own": result.score_after, "all": fallback.score_after}
            sides = [("own", oof, source), ("all", alternative, "all")]
            if average_with_all:
                both_ensemble = ensemble.with_members(name, ensemble.members_of(name) + ensemble.members_of("all"))
                averaged = collect_oof(both_ensemble, name, image_type)
                together = tune_postprocess(_samples(averaged, source), grid, base, n_rounds=n_rounds,
                                            channels=averaged.channels)
                record["choice"]["both_score"] = round(together.score_after, 6)
                keys["both"] = together.score_after
                sides.append(("both", averaged, source))
            if conditions is not None:
                # Every side scored out of sample: the in-sample tuned scores reward the side
                # whose parameters fit these very images best (a fine-tune on a handful of
                # images), not the one that holds on conditions it has not seen.
                crossfits = {side: crossfit_postprocess(_samples_by_id(o, e), conditions, grid, base,
                                                        n_rounds=n_rounds, channels=o.channels, n_parts=n_parts)
                             for side, o, e in sides}
                if all(c["score"] is not None for c in crossfits.values()):
                    keys = {side: c["score"] for side, c in crossfits.items()}
                    record["choice"].update({f"{side}_crossfit": key for side, key in keys.items()}, by="crossfit")
            kept = max(keys, key=lambda side: keys[side])  # a tie: own, then the fewer members
            others = f"{keys['own']:.4f} for {name}'s own" + (f" and {keys['both']:.4f} for both" if "both" in keys
                                                               else "")
            if kept == "all":
                record = {**_tuning_record(fallback, alternative, image_type, "all", n_rounds,
                                           ensemble.entries[name].postprocess), "choice": record["choice"]}
                record["note"] = (f"the all-type members score {keys['all']:.4f} against {others} "
                                  f"({record['choice']['by']}): {name} falls back to 'all' "
                                  f"(dropped: {', '.join(record['choice']['own_members'])})")
                ensemble = ensemble.without_members(name)
                result, members = fallback, tuple(record["choice"]["all_members"])
            elif kept == "both":
                record = {**_tuning_record(together, averaged, image_type, source, n_rounds,
                                           ensemble.entries[name].postprocess), "choice": record["choice"]}
                record["note"] = (f"{name}'s own members and the all-type ones averaged score {keys['both']:.4f} "
                                  f"against {keys['own']:.4f} for its own and {keys['all']:.4f} for the all-type "
                                  f"({record['choice']['by']}): {name} averages both")
                ensemble = both_ensemble
                result, members = together, tuple(m.key for m in both_ensemble.members_of(name))
            record["choice"]["kept"] = kept
        elif alternative is not None and alternative.probs:
            log.warning("%s: the all-type members hold other out-of-fold images than %s's own; "
                        "not compared", name, name)
        side = record.get("choice", {}).get("kept", "own")
        chosen = {"all": alternative, "both": averaged}.get(side, oof)
        chosen_entry = "all" if side == "all" else source
        if conditions is not None:
            record["crossfit"] = crossfits.get(side) or crossfit_postprocess(
                _samples_by_id(chosen, chosen_entry), conditions, grid, base, n_rounds=n_rounds,
                channels=chosen.channels, n_parts=n_parts)
            if (name != "all" and chosen_entry == "all" and record["crossfit"]["score"] is None
                    and ensemble.entries["all"].postprocess is not None):
                _leave_to_all(name, image_type, members, chosen, record)  # its own members dropped for them
                continue
        kept_views: tuple[str, ...] | None = None if name == "all" else ()
        if colour_views and name != "all":
            viewed, n_colour = colour_view_oof(ensemble, "all" if side == "all" else source, chosen, images, labels,
                                               colour_views, device=device, loader=loader)
            views_record: dict[str, Any] = {"candidates": list(colour_views), "n_colour_images": n_colour}
            if n_colour:
                log.info("tuning %s with colour views %s (%d of %d images in colour)", name,
                         ",".join(colour_views), n_colour, len(chosen.probs))
                vresult = tune_postprocess(_samples(viewed, chosen_entry), grid, base, n_rounds=n_rounds,
                                           channels=viewed.channels)
                views_record.update(plain_score=round(result.score_after, 6), views_score=round(vresult.score_after, 6),
                                    by="tuned")
                plain_key, views_key = result.score_after, vresult.score_after
                vcross = None
                if conditions is not None:
                    vcross = crossfit_postprocess(_samples_by_id(viewed, chosen_entry), conditions, grid, base,
                                                  n_rounds=n_rounds, channels=viewed.channels, n_parts=n_parts)
                    if vcross["score"] is not None and record["crossfit"]["score"] is not None:
                        plain_key, views_key = record["crossfit"]["score"], vcross["score"]
                        views_record.update(plain_crossfit=plain_key, views_crossfit=views_key, by="crossfit")
                if views_key > plain_key:
                    kept_views, result = tuple(colour_views), vresult
                    record.update(score_before=round(vresult.score_before, 6), score_after=round(vresult.score_after, 6))
                    if vcross is not None:
                        record["crossfit"] = vcross
            else:
                views_record["note"] = "every image is grey: the colour views equal it"
            views_record["kept"] = list(kept_views or ())
            record["colour_views"] = views_record
        params = result.params
        if result.score_after <= result.score_before:
            params = base  # nothing gained: do not move the parameters on a tie
            record["note"] = "; ".join(filter(None, [record.get("note"), "no gain over the defaults on these images: defaults kept"]))
        if ensemble.other_folds:
            record["other_folds"] = [str(r) for r in ensemble.other_folds]
        ensemble = ensemble.with_tuning(name, params.to_dict(), record, colour_views=kept_views, size_units=size_units)
        if write:
            write_ensemble(ensemble)
        outcomes.append(TypeTuning(name, image_type, members, result.n_images, result, params.to_dict(),
                                   record.get("note", ""), record.get("choice"), record.get("crossfit"),
                                   record.get("colour_views")))
    return ensemble, outcomes


def condition_parts(image_ids: Iterable[str], conditions: Mapping[str, str], n_parts: int) -> dict[str, int]:
    """Deal whole conditions to ``n_parts`` parts, biggest first, each to the smallest part.

    Images missing from ``conditions`` are each their own condition.
    """
    members: dict[str, list[str]] = {}
    for image_id in sorted(image_ids):
        members.setdefault(conditions.get(image_id, f"?{image_id}"), []).append(image_id)
    n_parts = max(1, min(n_parts, len(members)))
    sizes = [0] * n_parts
    parts: dict[str, int] = {}
    for cond in sorted(members, key=lambda c: (-len(members[c]), c)):
        p = min(range(n_parts), key=lambda k: (sizes[k], k))
        sizes[p] += len(members[cond])
        parts.update({i: p for i in members[cond]})
    return dict(sorted(parts.items()))


def _not_crossfitted(parts: Mapping[str, int]) -> dict[str, Any]:
    """The cross-fitting record of images dealt to one part (fewer than 2 conditions)."""
    return {"score": None, "n_parts": 1, "part_scores": [], "params": [], "parts": dict(parts),
            "note": "fewer than 2 conditions: nothing to cross-fit"}


def crossfit_postprocess(samples: Mapping[str, tuple[Any, Any]], conditions: Mapping[str, str], grid,
                         base, *, n_rounds: int = 2, channels=None, n_parts: int = 3) -> dict[str, Any]:
    """Out-of-sample score of the post-processing tuning: the images are split into parts of
    whole conditions (:func:`condition_parts`); each part is scored with parameters tuned on
    the other parts only, so no image is scored by parameters that saw its condition.

    Args:
        samples: ImageId -> (probs C×H×W, true label H×W), or with a third item, the
            factor the probabilities were predicted at (see
            :func:`competition.tuning.tune_postprocess`).
        conditions: ImageId -> condition.

    Returns:
        ``{"score", "n_parts", "part_scores", "params" (one dict per part), "parts"
        (ImageId -> part)}``; with fewer than 2 conditions, ``score`` is None.
    """
    from competition.metric import score_images
    from competition.postprocess import watershed_instances
    from competition.tuning import tune_postprocess

    parts = condition_parts(samples, conditions, n_parts)
    k = max(parts.values(), default=0) + 1
    if k < 2:
        return _not_crossfitted(parts)
    params_out, part_scores, pairs = [], [], []
    for p in range(k):
        train = [samples[i] for i, q in parts.items() if q != p]
        held = [i for i, q in parts.items() if q == p]
        tuned = tune_postprocess(train, grid, base, n_rounds=n_rounds, channels=channels).params
        params_out.append(tuned.to_dict())
        scored = [(i, samples[i][1], watershed_instances(samples[i][0], tuned.at_scale(_factor(samples[i])), channels))
                  for i in held]
        part_scores.append(round(float(score_images(scored).score), 6))
        pairs.extend(scored)
    return {"score": round(float(score_images(pairs).score), 6), "n_parts": k, "part_scores": part_scores,
            "params": params_out, "parts": parts}


def colour_view_oof(ensemble: Ensemble, entry: str, oof: OOFSet, images: Mapping[str, Any],
                    labels: Mapping[str, Any], views: Sequence[str], *, device: str = "auto",
                    loader=None) -> tuple[OOFSet, int]:
    """``oof`` with each colour image's map averaged with the maps of its colour views.

    Each view goes through the path training's out-of-fold maps came from
    (:func:`~competition.predict.members.predict_scaled`, no TTA, at the true nucleus
    size) with every member of ``entry`` whose ``oof.npz`` holds the image (weighted mean; in
    the ensemble's ``other_folds`` too);
    the image's map becomes the mean of its own map and its views' maps, as
    :meth:`~competition.predict.EnsemblePredictor.predict` averages them. Grey images keep
    their map (every view of them is the image).

    Args:
        images, labels: ImageId -> image H×W×3 uint8 and true label H×W (for the nucleus
            size).
        views: colour view names.

    Returns:
        (the new set, number of colour images).
    """
    import numpy as np

    from competition.predict.forward import resolve_device
    from competition.predict.members import LoadedMember, predict_scaled
    from competition.predict.preprocess import colour_view, is_gray
    from competition.scale import label_scale

    colour = [i for i in oof.probs if not is_gray(images[i])]
    if not colour or not views:
        return oof, 0
    if loader is None:
        from competition.train.members import load_member as loader
    device = resolve_device(device)
    sums: dict[str, Any] = {}
    weights: dict[str, float] = {}
    for ref in ensemble.members_of(entry):
        for folder in ensemble.member_folders(ref.key):  # other folds' copies predict their own images
            holds = oof_ids(folder)
            held = [i for i in colour if i in holds]
            if not held:
                continue
            model, config = loader(folder, device)
            model.eval()
            member = LoadedMember(ref.key, Path(folder), model, config)
            for i in held:
                scale = label_scale(labels[i], member.nucleus_diameter) if member.nucleus_diameter else 1.0
                maps = [predict_scaled(member, colour_view(images[i], v), scale, tta="none", device=device)
                        for v in views]
                mean = np.mean(maps, axis=0, dtype=np.float32)
                sums[i] = sums.get(i, 0) + mean * np.float32(ref.weight)
                weights[i] = weights.get(i, 0.0) + ref.weight
    probs = dict(oof.probs)
    for i, total in sums.items():
        probs[i] = ((oof.probs[i] + total * np.float32(len(views) / weights[i])) / np.float32(1 + len(views))).astype(np.float32)
    return OOFSet(probs, oof.channels, dict(oof.members), dict(oof.n_views)), len(sums)


def _factor(sample: tuple) -> float:
    return float(sample[2]) if len(sample) > 2 else 1.0


def members_diameter(ensemble: Ensemble, entry: str) -> float:
    """The nucleus diameter (px) ``entry``'s members were trained at (their geometric mean,
    as :class:`~competition.predict.EnsemblePredictor` resizes to it); 0 when none was
    trained at one size. Read from each member's ``config.json``."""
    diameters = []
    for m in ensemble.members_of(entry):
        path = ensemble.member_folder(m.key) / "config.json"
        try:
            config = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read {path}: {exc}") from None
        d = float((config.get("member") or {}).get("nucleus_diameter", 0.0) or 0.0)
        if d > 0:
            diameters.append(d)
    return math.exp(sum(math.log(d) for d in diameters) / len(diameters)) if diameters else 0.0


def _samples_at(oof: OOFSet, labels: Mapping[str, Any], target: float = 0.0) -> list[tuple[Any, Any, float]]:
    """(probs, true label, factor) of an out-of-fold set, checked for matching shapes.

    ``factor``: the resize factor the maps were predicted at, the one that brings the image's
    true median nucleus to the members' diameter ``target``
    (:func:`competition.scale.label_scale`, as training validation resizes); 1 for members
    not trained at one nucleus size (``target`` 0).
    """
    from competition.scale import label_scale

    samples = []
    for image_id, probs in oof.probs.items():
        label = labels[image_id]
        if label.shape != probs.shape[1:]:
            raise UserError(f"out-of-fold map of {image_id} is {probs.shape[1:]}, its label {label.shape}: "
                            "was the member trained on other data? pass --data")
        samples.append((probs, label, label_scale(label, target) if target > 0 else 1.0))
    return samples


def _tuning_record(result, oof: OOFSet, image_type: str | None, source: str, n_rounds: int,
                   previous: dict | None) -> dict[str, Any]:
    multi = sum(1 for n in oof.n_views.values() if n > 1)
    return {
        "score_before": round(result.score_before, 6),
        "score_after": round(result.score_after, 6),
        "n_images": result.n_images,
        "image_type": image_type or "all types",
        "members": dict(oof.members),
        "from_entry": source,
        "averaging": (
            f"{multi} image(s) averaged over several members, {len(oof.n_views) - multi} from one member "
            "(members of different folds hold different out-of-fold images)"
        ),
        "n_rounds": n_rounds,
        "previous": previous,
    }
