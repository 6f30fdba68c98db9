"""The ensemble file: which members predict each image type, their weights, and the tuned
post-processing per type.

``models/<recipe>/ensemble.json`` (machine-written, user-editable)::

    {
      "recipe": "cpu",
      "types": {
        "all":          {"members": [{"member": "all/r18", "weight": 1.0}],
                         "postprocess": {...} | null, "tuning": {...} | null},
        "fluorescence": {"members": [{"member": "fluorescence/r18-ft", "weight": 1.0}], ...},
        "histology":    {...},
        "brightfield":  {"members": [], "postprocess": {...}, ...}
      }
    }

``member`` is the member folder relative to ``models/<recipe>/``. An image type with no
member falls back to the ``all`` members. ``postprocess`` holds the
:class:`~competition.postprocess.PostprocessParams` tuned for that image type (by
``python -m competition tune``); ``tuning`` records how (scores before and after, images,
members). The file is built from the finished member folders when it is absent
(:func:`build_ensemble`); a user may edit the weights or drop members. It is validated
(strictly: unknown keys, bad weights, missing member folders) before any prediction starts.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from competition.csvio import atomic_write
from competition.errors import DataError, UserError, check_keys

log = logging.getLogger(__name__)

__all__ = [
    "ENSEMBLE_FILE",
    "ENTRY_NAMES",
    "MemberRef",
    "TypeEntry",
    "Ensemble",
    "recipe_dir",
    "finished_members",
    "build_ensemble",
    "read_ensemble",
    "write_ensemble",
    "load_ensemble",
]

ENSEMBLE_FILE = "ensemble.json"
#: The entries of an ensemble: the ``all`` pseudo-type (the fallback), then the image types
#: (:data:`competition.data.types.IMAGE_TYPES`).
ENTRY_NAMES = ("all", "fluorescence", "histology", "brightfield")
IMAGE_TYPES = ENTRY_NAMES[1:]
_TOP_KEYS = ("recipe", "types", "comment")
_ENTRY_KEYS = ("members", "postprocess", "tuning")
_MEMBER_KEYS = ("member", "weight")


@dataclass(frozen=True)
class MemberRef:
    """One member of a type's ensemble: its folder relative to the recipe folder and weight."""

    key: str
    weight: float = 1.0


@dataclass(frozen=True)
class TypeEntry:
    """The ensemble of one image type (or of ``all``).

    Attributes:
        members: the members averaged for this type (empty: fall back to ``all``).
        postprocess: tuned :class:`~competition.postprocess.PostprocessParams` as a dict, or
            None (not tuned).
        tuning: what tuning recorded (scores before/after, number of images, members), or
            None.
    """

    members: tuple[MemberRef, ...] = ()
    postprocess: dict | None = None
    tuning: dict | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "members": [{"member": m.key, "weight": m.weight} for m in self.members],
            "postprocess": self.postprocess,
            "tuning": self.tuning,
        }


@dataclass(frozen=True)
class Ensemble:
    """A validated ensemble file.

    Attributes:
        recipe: the recipe name.
        root: the recipe's model folder (``models/<recipe>``); member keys are relative to it.
        entries: ``all`` and every image type -> :class:`TypeEntry`.
        comment: free text kept from the file.
    """

    recipe: str
    root: Path
    entries: Mapping[str, TypeEntry]
    comment: str = ""

    @property
    def path(self) -> Path:
        return self.root / ENSEMBLE_FILE

    def member_keys(self) -> list[str]:
        """Every member used by some entry, each once, in entry order."""
        keys: dict[str, None] = {}
        for name in ENTRY_NAMES:
            for m in self.entries[name].members:
                keys.setdefault(m.key)
        return list(keys)

    def routed_member_keys(self) -> list[str]:
        """The members some image type routes to (the ``all`` members only when a type falls
        back to them), each once."""
        keys: dict[str, None] = {}
        for image_type in IMAGE_TYPES:
            entry, _ = self.route(image_type)
            for m in self.entries[entry].members:
                keys.setdefault(m.key)
        return list(keys)

    def member_folder(self, key: str) -> Path:
        return self.root / key

    def members_of(self, entry: str) -> tuple[MemberRef, ...]:
        return self.entries[entry].members

    def route(self, image_type: str) -> tuple[str, bool]:
        """(entry used, fallback?) for an image of ``image_type``.

        Raises:
            UserError: neither the type nor ``all`` has a member.
        """
        if image_type not in self.entries:
            raise UserError(f"unknown image type {image_type!r}; valid: {', '.join(IMAGE_TYPES)}")
        if self.entries[image_type].members:
            return image_type, False
        if self.entries["all"].members:
            return "all", True
        raise UserError(f"{self.path}: no member for {image_type} images and no 'all' member to fall back to")

    def params_for(self, image_type: str):
        """The post-processing parameters for an image type and where they come from.

        The type's own tuned parameters; else those tuned for ``all``; else the defaults.

        Returns:
            (:class:`~competition.postprocess.PostprocessParams`, source: ``"tuned <type>"``,
            ``"tuned all"`` or ``"default"``).
        """
        from competition.postprocess import PostprocessParams

        for name in (image_type, "all"):
            entry = self.entries.get(name)
            if entry is not None and entry.postprocess is not None:
                return PostprocessParams.from_dict(entry.postprocess), f"tuned {name}"
        return PostprocessParams(), "default"

    def crossfit_params_for(self, image_type: str, image_id: str):
        """The parameters tuned without ``image_id``'s condition (see
        :func:`crossfit_postprocess`), from the entry :meth:`params_for` takes; None when
        that entry's tuning did not cross-fit this image."""
        from competition.postprocess import PostprocessParams

        for name in (image_type, "all"):
            entry = self.entries.get(name)
            if entry is not None and entry.postprocess is not None:
                crossfit = (entry.tuning or {}).get("crossfit") or {}
                part = (crossfit.get("parts") or {}).get(image_id)
                if part is None or not crossfit.get("params"):
                    return None
                return PostprocessParams.from_dict(crossfit["params"][int(part)]), f"cross-fitted {name} part {part}"
        return None

    def with_tuning(self, entry: str, params: Mapping[str, Any], tuning: Mapping[str, Any]) -> Ensemble:
        """A copy with ``entry``'s post-processing parameters and tuning record replaced."""
        entries = dict(self.entries)
        entries[entry] = dataclasses.replace(entries[entry], postprocess=dict(params), tuning=dict(tuning))
        return dataclasses.replace(self, entries=entries)

    def without_members(self, entry: str) -> Ensemble:
        """A copy where ``entry`` has no member of its own (it falls back to ``all``)."""
        entries = dict(self.entries)
        entries[entry] = dataclasses.replace(entries[entry], members=())
        return dataclasses.replace(self, entries=entries)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"recipe": self.recipe}
        if self.comment:
            out["comment"] = self.comment
        out["types"] = {name: self.entries[name].to_dict() for name in ENTRY_NAMES}
        return out

    def describe(self) -> list[str]:
        """One line per entry: members and weights, fallback, post-processing source."""
        lines = []
        for name in ENTRY_NAMES:
            members = self.entries[name].members
            if members:
                used = ", ".join(f"{m.key} (w {m.weight:g})" for m in members)
            elif name != "all" and self.entries["all"].members:
                used = "no member: falls back to 'all'"
            else:
                used = "no member"
            source = self.params_for(name)[1] if name != "all" else ("tuned" if self.entries[name].postprocess else "default")
            lines.append(f"{name:<13} {used}; post-processing {source}")
        return lines


# ----------------------------------------------------------------------------- member folders


def recipe_dir(models_dir: str | Path, recipe: str) -> Path:
    """``models_dir/<recipe name>``; ``recipe`` may be a recipe file path (its stem is used)."""
    name = Path(recipe).stem if str(recipe).endswith(".toml") else str(recipe)
    return Path(models_dir) / name


def _is_finished(folder: Path) -> bool:
    if (folder / "done").is_file():
        return True
    metrics = folder / "metrics.json"
    if metrics.is_file():
        try:
            return bool(json.loads(metrics.read_text()).get("finished"))
        except (OSError, ValueError):
            return False
    return False


def finished_members(root: str | Path) -> dict[str, list[str]]:
    """Finished member folders under ``root`` (``models/<recipe>``), per entry name.

    A member is finished when its folder holds ``done`` (or ``metrics.json`` with
    ``"finished": true``) and ``best.pt`` and ``config.json``. Unfinished ones are logged.

    Returns:
        entry name -> sorted keys ``"<type>/<name>"``.
    """
    root = Path(root)
    found: dict[str, list[str]] = {name: [] for name in ENTRY_NAMES}
    for name in ENTRY_NAMES:
        type_dir = root / name
        if not type_dir.is_dir():
            continue
        for folder in sorted(p for p in type_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
            complete = (folder / "best.pt").is_file() and (folder / "config.json").is_file()
            if complete and _is_finished(folder):
                found[name].append(f"{name}/{folder.name}")
            else:
                log.warning("member folder %s is not finished (no done/best.pt/config.json): not used", folder)
    return found


def build_ensemble(root: str | Path, recipe: str | None = None) -> Ensemble:
    """An ensemble of every finished member under ``root``, weight 1 each, not tuned.

    Raises:
        UserError: ``root`` does not exist or holds no finished member.
    """
    root = Path(root)
    recipe = recipe or root.name
    if not root.is_dir():
        raise UserError(
            f"no models for recipe {recipe!r}: {root} does not exist. Train them with "
            f"`python -m competition train-all --recipe {recipe} --data DATA_DIR --models {root.parent}`"
        )
    found = finished_members(root)
    if not any(found.values()):
        raise UserError(
            f"no finished member in {root} (a member folder needs best.pt, config.json and done); "
            f"finish training with `python -m competition train-all --recipe {recipe} --models {root.parent} ...`"
        )
    entries = {name: TypeEntry(tuple(MemberRef(k) for k in found[name])) for name in ENTRY_NAMES}
    ensemble = Ensemble(recipe, root, entries, comment="built from the finished members; weights may be edited")
    _check_routable(ensemble)
    return ensemble


# ----------------------------------------------------------------------------- the file


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def parse_ensemble(data: Any, root: str | Path, *, where: str = "ensemble") -> Ensemble:
    """Validate a parsed ensemble file (strict) and check its member folders exist.

    Raises:
        UserError: unknown keys, an unknown type, a weight that is not a positive number, a
            duplicate member, invalid post-processing parameters, a member folder without
            ``config.json``/``best.pt``, or an image type with neither members nor an ``all``
            fallback. The message names the file and the entry.
    """
    from competition.postprocess import PostprocessParams

    root = Path(root)
    check_keys(data, _TOP_KEYS, where)
    types = data.get("types")
    check_keys(types, ENTRY_NAMES, f"{where}: types")
    entries: dict[str, TypeEntry] = {}
    for name in ENTRY_NAMES:
        table = types.get(name, {"members": []})
        ewhere = f"{where}: types.{name}"
        check_keys(table, _ENTRY_KEYS, ewhere)
        members_raw = table.get("members", [])
        if not isinstance(members_raw, list):
            raise UserError(f"{ewhere}.members: expected a list")
        members: list[MemberRef] = []
        for i, m in enumerate(members_raw):
            mwhere = f"{ewhere}.members[{i}]"
            check_keys(m, _MEMBER_KEYS, mwhere)
            key = m.get("member")
            if not isinstance(key, str) or not key:
                raise UserError(f"{mwhere}.member: expected a folder name like '{name}/r18', got {key!r}")
            weight = _number(m.get("weight", 1.0), f"{mwhere}.weight")
            if weight <= 0:
                raise UserError(f"{mwhere}.weight: must be > 0 (drop the member instead), got {weight}")
            if any(r.key == key for r in members):
                raise UserError(f"{mwhere}: member {key} listed twice")
            folder = root / key
            missing = [f for f in ("config.json", "best.pt") if not (folder / f).is_file()]
            if missing:
                what = "does not exist" if not folder.is_dir() else f"has no {' and no '.join(missing)}"
                raise UserError(f"{mwhere}: member folder {folder} {what}")
            if not _is_finished(folder):
                log.warning("%s: member %s is not finished; using its best.pt so far", where, key)
            members.append(MemberRef(key, weight))
        post = table.get("postprocess")
        if post is not None:
            if not isinstance(post, dict):
                raise UserError(f"{ewhere}.postprocess: expected an object or null")
            try:
                PostprocessParams.from_dict(post)
            except ValueError as exc:
                raise UserError(f"{ewhere}.postprocess: {exc}") from None
        tuning = table.get("tuning")
        if tuning is not None and not isinstance(tuning, dict):
            raise UserError(f"{ewhere}.tuning: expected an object or null")
        entries[name] = TypeEntry(tuple(members), post, tuning)
    recipe = data.get("recipe", root.name)
    if not isinstance(recipe, str):
        raise UserError(f"{where}: recipe must be a string")
    ensemble = Ensemble(recipe, root, entries, comment=str(data.get("comment", "")))
    _check_routable(ensemble)
    return ensemble


def _check_routable(ensemble: Ensemble) -> None:
    if ensemble.entries["all"].members:
        return
    orphans = [t for t in IMAGE_TYPES if not ensemble.entries[t].members]
    if orphans:
        raise UserError(
            f"{ensemble.path}: no member for {', '.join(orphans)} images and no 'all' member to fall back to; "
            "train an 'all' member or add members for those types"
        )


def read_ensemble(path: str | Path) -> Ensemble:
    """Read and validate ``models/<recipe>/ensemble.json``.

    Raises:
        UserError: unreadable or invalid JSON, or anything :func:`parse_ensemble` rejects.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise UserError(f"cannot read ensemble file {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UserError(f"{path}: invalid JSON: {exc}") from None
    return parse_ensemble(data, path.parent, where=str(path))


def write_ensemble(ensemble: Ensemble) -> Path:
    """Write the ensemble file atomically (``ensemble.path``)."""
    path = ensemble.path
    with atomic_write(path) as handle:
        json.dump(ensemble.to_dict(), handle, indent=2)
        handle.write("\n")
    return path


def load_ensemble(models_dir: str | Path, recipe: str, *, create: bool = True) -> Ensemble:
    """The recipe's ensemble: read ``models_dir/<recipe>/ensemble.json``, or build it from the
    finished members (and write it, when ``create``) when it is absent.

    Finished members on disk that the file does not list are logged (the file is the user's:
    it is not changed).

    Raises:
        UserError: no model folder, no finished member, or an invalid file.
    """
    root = recipe_dir(models_dir, recipe)
    path = root / ENSEMBLE_FILE
    if not path.is_file():
        ensemble = build_ensemble(root, root.name)
        if create:
            write_ensemble(ensemble)
            log.info("wrote %s from the finished members: %s", path, ", ".join(ensemble.member_keys()))
        return ensemble
    ensemble = read_ensemble(path)
    listed = set(ensemble.member_keys())
    unlisted = [k for keys in finished_members(root).values() for k in keys if k not in listed]
    if unlisted:
        log.warning(
            "%s does not list finished member(s) %s; add them to the file (or delete it to rebuild)",
            path,
            ", ".join(unlisted),
        )
    return ensemble


# ----------------------------------------------------------------------------- tuning


@dataclass(frozen=True)
class OOFSet:
    """Out-of-fold probabilities of one entry's members, one map per image.

    Attributes:
        probs: ImageId -> C×H×W float32, the weighted mean over the members whose ``oof.npz``
            holds that image.
        channels: the channel names.
        members: member key -> number of images it contributed.
        n_views: ImageId -> number of members averaged for it.
    """

    probs: dict
    channels: tuple[str, ...]
    members: dict[str, int]
    n_views: dict[str, int]


def read_oof(folder: str | Path, image_type: str | None = None):
    """Iterate over a member's ``oof.npz``: ``(image_id, type, probs C×H×W float32)``.

    Args:
        folder: the member folder.
        image_type: only images of this type (None: all).

    Returns:
        (channels, iterator); the iterator decodes one map at a time (``p_<id> / scale``).

    Raises:
        UserError: no or unreadable ``oof.npz``.
    """
    import numpy as np

    path = Path(folder) / "oof.npz"
    try:
        z = np.load(path, allow_pickle=False)
        ids = [str(i) for i in z["ids"]]
        types = [str(t) for t in z["types"]]
        channels = tuple(str(c) for c in z["channels"])
        scale = float(z["scale"]) if "scale" in z.files else 1.0
    except (OSError, KeyError, ValueError) as exc:
        raise UserError(f"cannot read out-of-fold maps {path}: {exc}") from None

    def items():
        with z:
            for image_id, kind in zip(ids, types):
                if image_type is None or kind == image_type:
                    yield image_id, kind, z[f"p_{image_id}"].astype(np.float32) / np.float32(scale)

    return channels, items()


def collect_oof(ensemble: Ensemble, entry: str, image_type: str | None) -> OOFSet:
    """The out-of-fold maps of ``entry``'s members for images of ``image_type``.

    Members trained on different folds hold maps of different images: every image gets the
    weighted mean of the members that hold it (its map then comes only from models that did
    not train on it). Members of the same fold share images and are averaged, as at
    inference. A member without ``oof.npz`` (no validation images) is skipped with a warning.

    Raises:
        UserError: members with different channels.
    """
    sums: dict[str, Any] = {}
    weights: dict[str, float] = {}
    n_views: dict[str, int] = {}
    contributed: dict[str, int] = {}
    channels: tuple[str, ...] | None = None
    for ref in ensemble.members_of(entry):
        folder = ensemble.member_folder(ref.key)
        if not (folder / "oof.npz").is_file():
            log.warning("member %s has no oof.npz (no validation images?): not used for tuning", ref.key)
            continue
        member_channels, items = read_oof(folder, image_type)
        if channels is None:
            channels = member_channels
        elif member_channels != channels:
            raise UserError(f"member {ref.key} has channels {list(member_channels)}, others {list(channels)}")
        count = 0
        for image_id, _, probs in items:
            if image_id in sums:
                if sums[image_id].shape != probs.shape:
                    raise UserError(f"member {ref.key}: out-of-fold map of {image_id} has shape {probs.shape}, "
                                    f"another member's {sums[image_id].shape}")
                sums[image_id] += ref.weight * probs
            else:
                sums[image_id] = ref.weight * probs
            weights[image_id] = weights.get(image_id, 0.0) + ref.weight
            n_views[image_id] = n_views.get(image_id, 0) + 1
            count += 1
        contributed[ref.key] = count
    probs = {i: sums[i] / weights[i] for i in sorted(sums)}
    return OOFSet(probs, channels or (), contributed, {i: n_views[i] for i in sorted(n_views)})


def training_split_dir(ensemble: Ensemble, data_dir: str | Path | None = None) -> Path:
    """The labelled split the members were validated on: ``data_dir`` when given, else the
    ``data_dir`` recorded in the members' ``config.json``; ``DATA_DIR/stage1_train`` when that
    folder exists, else the folder itself.

    Raises:
        UserError: no data dir given or recorded, or it does not exist.
    """
    candidates: list[Path] = []
    if data_dir is not None:
        candidates.append(Path(data_dir))
    else:
        for key in ensemble.member_keys():
            try:
                recorded = json.loads((ensemble.member_folder(key) / "config.json").read_text()).get("data_dir")
            except (OSError, ValueError):
                continue
            if recorded:
                candidates.append(Path(recorded))
        if not candidates:
            raise UserError("the members' config.json record no data dir: pass --data DATA_DIR")
    for base in dict.fromkeys(candidates):
        for split in (base / "stage1_train", base):
            if split.is_dir():
                return split
    raise UserError(
        f"training data {candidates[0]} not found (recorded in the members' config.json): pass --data DATA_DIR"
    )


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
        choice: own members against the all-type fallback, when both could be compared:
            ``own_score``, ``all_score`` (tuned, same images) and ``kept`` (``own`` or ``all``).
        crossfit: the out-of-sample record of :func:`crossfit_postprocess`, when conditions
            were given.
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
) -> tuple[Ensemble, list[TypeTuning]]:
    """Tune the post-processing of every image type on its members' out-of-fold maps.

    Per image type: the maps of the members it routes to (its own, or the ``all`` members on
    fallback, restricted to images of that type), averaged per image (:func:`collect_oof`),
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

    Returns:
        (the updated ensemble, one :class:`TypeTuning` per entry tuned or skipped).
    """
    from competition.data.io import load_split
    from competition.postprocess import PostprocessParams
    from competition.tuning import DEFAULT_GRID, tune_postprocess

    grid = DEFAULT_GRID if grid is None else grid
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
    if needed:
        split = training_split_dir(ensemble, data_dir)
        log.info("reading %d true labels from %s", len(needed), split)
        try:
            loaded, _ = load_split(split, ids=needed)
        except DataError as exc:
            raise DataError(f"{exc} (the out-of-fold images must come from this split: pass --data DATA_DIR)") from None
        labels = {s.image_id: s.label for s in loaded}
    outcomes: list[TypeTuning] = []
    base = PostprocessParams()  # start from the defaults: re-tuning does not drift
    for name, source, image_type in plans:
        oof = oofs[name]
        members = tuple(m.key for m in ensemble.members_of(source))
        if not oof.probs:
            note = (f"no out-of-fold {image_type or ''} image in the members of '{source}'; "
                    f"{'the all parameters' if name != 'all' else 'the defaults'} apply")
            log.warning("%s: %s", name, note)
            outcomes.append(TypeTuning(name, image_type, members, 0, note=note))
            continue
        log.info("tuning %s on %d image(s) from %s", name, len(oof.probs), ", ".join(k for k, n in oof.members.items() if n))
        result = tune_postprocess(_samples(oof, labels), grid, base, n_rounds=n_rounds, channels=oof.channels)
        record = _tuning_record(result, oof, image_type, source, n_rounds, ensemble.entries[name].postprocess)
        alternative = fallbacks.get(name)
        if alternative is not None and set(alternative.probs) == set(oof.probs):
            # Keep what scores better on the same images: the type's own (fine-tuned) members
            # or the all-type model it would otherwise fall back to.
            log.info("tuning %s on the same %d image(s) with the all-type members", name, len(oof.probs))
            fallback = tune_postprocess(_samples(alternative, labels), grid, base, n_rounds=n_rounds,
                                        channels=alternative.channels)
            record["choice"] = {
                "own_members": [m.key for m in ensemble.members_of(name)],
                "own_score": round(result.score_after, 6),
                "all_members": [m.key for m in ensemble.members_of("all")],
                "all_score": round(fallback.score_after, 6),
            }
            if fallback.score_after > result.score_after:
                record = {**_tuning_record(fallback, alternative, image_type, "all", n_rounds,
                                           ensemble.entries[name].postprocess), "choice": record["choice"]}
                record["choice"]["kept"] = "all"
                record["note"] = (f"the all-type members score {fallback.score_after:.4f} against "
                                  f"{result.score_after:.4f} for {name}'s own: {name} falls back to 'all' "
                                  f"(dropped: {', '.join(record['choice']['own_members'])})")
                ensemble = ensemble.without_members(name)
                result, members = fallback, tuple(record["choice"]["all_members"])
            else:
                record["choice"]["kept"] = "own"
        elif alternative is not None and alternative.probs:
            log.warning("%s: the all-type members hold other out-of-fold images than %s's own; "
                        "not compared", name, name)
        if conditions is not None:
            chosen = alternative if record.get("choice", {}).get("kept") == "all" else oof
            record["crossfit"] = crossfit_postprocess(_samples_by_id(chosen, labels), conditions, grid, base,
                                                      n_rounds=n_rounds, channels=chosen.channels,
                                                      n_parts=n_parts)
        params = result.params
        if result.score_after <= result.score_before:
            params = base  # nothing gained: do not move the parameters on a tie
            record["note"] = "; ".join(filter(None, [record.get("note"), "no gain over the defaults on these images: defaults kept"]))
        ensemble = ensemble.with_tuning(name, params.to_dict(), record)
        if write:
            write_ensemble(ensemble)
        outcomes.append(TypeTuning(name, image_type, members, result.n_images, result, params.to_dict(),
                                   record.get("note", ""), record.get("choice"), record.get("crossfit")))
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


def crossfit_postprocess(samples: Mapping[str, tuple[Any, Any]], conditions: Mapping[str, str], grid,
                         base, *, n_rounds: int = 2, channels=None, n_parts: int = 3) -> dict[str, Any]:
    """Out-of-sample score of the post-processing tuning: the images are split into parts of
    whole conditions (:func:`condition_parts`); each part is scored with parameters tuned on
    the other parts only, so no image is scored by parameters that saw its condition.

    Args:
        samples: ImageId -> (probs C×H×W, true label H×W).
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
        return {"score": None, "n_parts": k, "part_scores": [], "params": [], "parts": parts,
                "note": "fewer than 2 conditions: nothing to cross-fit"}
    params_out, part_scores, pairs = [], [], []
    for p in range(k):
        train = [samples[i] for i, q in parts.items() if q != p]
        held = [i for i, q in parts.items() if q == p]
        tuned = tune_postprocess(train, grid, base, n_rounds=n_rounds, channels=channels).params
        params_out.append(tuned.to_dict())
        scored = [(i, samples[i][1], watershed_instances(samples[i][0], tuned, channels)) for i in held]
        part_scores.append(round(float(score_images(scored).score), 6))
        pairs.extend(scored)
    return {"score": round(float(score_images(pairs).score), 6), "n_parts": k, "part_scores": part_scores,
            "params": params_out, "parts": parts}


def _samples_by_id(oof: OOFSet, labels: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
    return dict(zip(oof.probs, _samples(oof, labels)))


def _samples(oof: OOFSet, labels: Mapping[str, Any]) -> list[tuple[Any, Any]]:
    """(probs, true label) pairs of an out-of-fold set, checked for matching shapes."""
    samples = []
    for image_id, probs in oof.probs.items():
        label = labels[image_id]
        if label.shape != probs.shape[1:]:
            raise UserError(f"out-of-fold map of {image_id} is {probs.shape[1:]}, its label {label.shape}: "
                            "was the member trained on other data? pass --data")
        samples.append((probs, label))
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
