"""The ensemble file: which members predict each image type, their weights, and the tuned
post-processing per type.

``models/<recipe>/ensemble.json`` (machine-written, user-editable)::

    {
      "recipe": "cpu",
      "types": {
        "all":          {"members": [{"member": "all/r18", "weight": 1.0}],
                         "postprocess": {...} | null, "tuning": {...} | null},
        "fluorescence": {"members": [{"member": "fluorescence/r18-ft", "weight": 1.0}], ...},
        "histology":    {"members": [], "postprocess": {...}, "tuning": {...},
                         "colour_views": ["gray", "gbr", "brg"]},
        "brightfield":  {"members": [], "postprocess": {...}, ...}
      }
    }

``member`` is the member folder relative to ``models/<recipe>/``. An image type with no
member falls back to the ``all`` members. ``colour_views`` (optional, image types only; chosen
by tuning): the members' probabilities of that type's images are averaged over the image and
these colour views of it (:data:`competition.predict.preprocess.COLOUR_VIEWS`).
``size_units`` (optional, written by tuning): ``"network"`` when the entry's pixel counts
(``min_seed_size``, ``min_size``, ``seed_dilation``, ``grow``) count the pixels of the network's input,
so that they scale with each image's resize factor
(:meth:`~competition.postprocess.PostprocessParams.at_scale`); absent (``"image"``): the
image's own pixels, as files tuned before 2026-12-05 hold them. ``refit`` (top level, written by
``competition refit``): the ensemble's members are refits, on every training image, of the
members of the tuned ensemble it names (its post-processing and tuning records are that
ensemble's). ``adapt`` (top level, written by ``competition adapt``): the members are
fine-tunes of the named ensemble's members on their training images plus images labelled by
a submission of them (:mod:`competition.train.adapt`). ``postprocess`` holds the
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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from competition.csvio import atomic_write
from competition.errors import UserError, check_keys

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
_TOP_KEYS = ("recipe", "types", "comment", "refit", "adapt")
_ENTRY_KEYS = ("members", "postprocess", "tuning", "colour_views", "size_units")
#: what an entry's pixel counts count: the image's pixels or the network input's
SIZE_UNITS = ("image", "network")
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
        tuning: what tuning recorded (scores before and after, number of images, members), or
            None.
        colour_views: colour views (:data:`~competition.predict.preprocess.COLOUR_VIEWS`)
            whose probabilities are averaged with the image's for images of this type; empty:
            none (the file then has no ``colour_views`` key).
        size_units: one of :data:`SIZE_UNITS`: what ``postprocess``'s pixel counts count
            (the file has the key only for ``"network"``).
    """

    members: tuple[MemberRef, ...] = ()
    postprocess: dict | None = None
    tuning: dict | None = None
    colour_views: tuple[str, ...] = ()
    size_units: str = "image"

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "members": [{"member": m.key, "weight": m.weight} for m in self.members],
            "postprocess": self.postprocess,
            "tuning": self.tuning,
        }
        if self.colour_views:
            out["colour_views"] = list(self.colour_views)
        if self.size_units != "image":
            out["size_units"] = self.size_units
        return out


@dataclass(frozen=True)
class Ensemble:
    """A validated ensemble file.

    Attributes:
        recipe: the recipe name.
        root: the recipe's model folder (``models/<recipe>``); member keys are relative to it.
        entries: ``all`` and every image type -> :class:`TypeEntry`.
        comment: free text kept from the file.
        refit: for the ensemble of a refit (``competition refit``): the tuned ensemble its
            members were refit from (``of``, ``sha256``) and each member's fold there; None
            otherwise. Its members trained on every image, so they have no out-of-fold maps
            and no holdout of their own.
        adapt: for an ensemble adapted to pseudo-labelled images (``competition adapt``): the
            ensemble it came from (``of``), the labels file and its SHA-256, the split and the
            fine-tune settings; None otherwise.
        other_folds: recipe folders (``<models>/<recipe>``) of the same recipe trained on
            other folds (``make train-all TRAIN_FOLD=N``): their members' out-of-fold maps
            join the tuning's (:meth:`member_folders`), so it sees the conditions of every
            fold. Set by ``tune --other-folds`` for one run; never written to the file, never
            used to predict.
    """

    recipe: str
    root: Path
    entries: Mapping[str, TypeEntry]
    comment: str = ""
    refit: dict | None = None
    adapt: dict | None = None
    other_folds: tuple[Path, ...] = ()

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

    def member_folders(self, key: str) -> tuple[Path, ...]:
        """The member's folder, then its folders in :attr:`other_folds` that exist: where its
        out-of-fold maps are."""
        return (self.root / key, *(r / key for r in self.other_folds if (r / key).is_dir()))

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

    def params_for(self, image_type: str, *, crossfit_id: str | None = None, scale: float = 1.0):
        """The post-processing parameters for an image type and where they come from.

        The type's own tuned parameters; else those tuned for ``all``; else the defaults.
        With ``crossfit_id``, an image the tuning cross-fitted gets the parameters tuned
        without its condition instead (see
        :func:`competition.ensemble_tuning.crossfit_postprocess`). ``scale``: the resize
        factor the image's probabilities were predicted at; parameters of an entry in
        ``"network"`` size units are converted to the image's pixels with it
        (:meth:`~competition.postprocess.PostprocessParams.at_scale`).

        Returns:
            (:class:`~competition.postprocess.PostprocessParams`, source: ``"tuned <type>"``,
            ``"tuned all"``, ``"cross-fitted <entry> part <k>"`` or ``"default"``).
        """
        from competition.postprocess import PostprocessParams

        for name in (image_type, "all"):
            entry = self.entries.get(name)
            if entry is not None and entry.postprocess is not None:
                crossfit = (entry.tuning or {}).get("crossfit") or {}
                part = (crossfit.get("parts") or {}).get(crossfit_id) if crossfit_id is not None else None
                factor = scale if entry.size_units == "network" else 1.0
                if part is not None and crossfit.get("params"):
                    return (PostprocessParams.from_dict(crossfit["params"][int(part)]).at_scale(factor),
                            f"cross-fitted {name} part {part}")
                return PostprocessParams.from_dict(entry.postprocess).at_scale(factor), f"tuned {name}"
        return PostprocessParams(), "default"

    def colour_views(self, image_type: str) -> tuple[str, ...]:
        """The colour views averaged for images of ``image_type`` (empty: none)."""
        entry = self.entries.get(image_type)
        return entry.colour_views if entry is not None else ()

    def with_tuning(self, entry: str, params: Mapping[str, Any] | None, tuning: Mapping[str, Any],
                    colour_views: tuple[str, ...] | None = None, size_units: str | None = None) -> Ensemble:
        """A copy with ``entry``'s post-processing parameters and tuning record replaced (and
        its colour views and size units, when given); ``params`` None: none of its own (its
        images take the ``all`` entry's)."""
        entries = dict(self.entries)
        views = entries[entry].colour_views if colour_views is None else tuple(colour_views)
        units = entries[entry].size_units if size_units is None else size_units
        if units not in SIZE_UNITS:
            raise ValueError(f"size_units must be one of {list(SIZE_UNITS)}, got {units!r}")
        entries[entry] = dataclasses.replace(entries[entry], postprocess=None if params is None else dict(params),
                                             tuning=dict(tuning),
                                             colour_views=views, size_units=units)
        return dataclasses.replace(self, entries=entries)

    def with_members(self, entry: str, members: tuple[MemberRef, ...]) -> Ensemble:
        """A copy where ``entry`` averages ``members``."""
        entries = dict(self.entries)
        entries[entry] = dataclasses.replace(entries[entry], members=tuple(members))
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
        if self.refit is not None:
            out["refit"] = self.refit
        if self.adapt is not None:
            out["adapt"] = self.adapt
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
            views = self.entries[name].colour_views
            extra = f"; colour views {', '.join(views)}" if views else ""
            if self.entries[name].size_units == "network" and self.entries[name].postprocess is not None:
                extra += "; sizes in the network's pixels"
            lines.append(f"{name:<13} {used}; post-processing {source}{extra}")
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


def parse_ensemble(data: Any, root: str | Path, *, where: str = "ensemble", members_on_disk: bool = True) -> Ensemble:
    """Validate a parsed ensemble file (strict) and check its member folders exist (unless
    ``members_on_disk`` is false: a refit reads the file of a clone without weights).

    Raises:
        UserError: unknown keys, an unknown type, a weight that is not a positive number, a
            duplicate member, invalid post-processing parameters, invalid colour views, a member folder without
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
            if missing and members_on_disk:
                what = "does not exist" if not folder.is_dir() else f"has no {' and no '.join(missing)}"
                raise UserError(f"{mwhere}: member folder {folder} {what}")
            if members_on_disk and not _is_finished(folder):
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
        views: tuple[str, ...] = ()
        if "colour_views" in table:
            from competition.predict.preprocess import check_colour_views

            if name == "all":
                raise UserError(f"{ewhere}.colour_views: colour views belong to an image type "
                                f"({', '.join(IMAGE_TYPES)}), not to 'all'")
            try:
                views = check_colour_views(table["colour_views"], f"{ewhere}.colour_views")
            except ValueError as exc:
                raise UserError(str(exc)) from None
        units = table.get("size_units", "image")
        if units not in SIZE_UNITS:
            raise UserError(f"{ewhere}.size_units: expected one of {list(SIZE_UNITS)}, got {units!r}")
        entries[name] = TypeEntry(tuple(members), post, tuning, views, units)
    recipe = data.get("recipe", root.name)
    if not isinstance(recipe, str):
        raise UserError(f"{where}: recipe must be a string")
    refit = data.get("refit")
    if refit is not None and not (isinstance(refit, dict) and isinstance(refit.get("of"), str)):
        raise UserError(f"{where}: refit must be an object naming the ensemble refit from ('of')")
    adapt = data.get("adapt")
    if adapt is not None and not (isinstance(adapt, dict) and isinstance(adapt.get("of"), str)
                                  and isinstance(adapt.get("labels"), str)):
        raise UserError(f"{where}: adapt must be an object naming the ensemble adapted ('of') and its labels")
    ensemble = Ensemble(recipe, root, entries, comment=str(data.get("comment", "")), refit=refit, adapt=adapt)
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


def read_ensemble(path: str | Path, *, members_on_disk: bool = True) -> Ensemble:
    """Read and validate ``models/<recipe>/ensemble.json`` (see :func:`parse_ensemble`).

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
    return parse_ensemble(data, path.parent, where=str(path), members_on_disk=members_on_disk)


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
    it is not changed): as a warning, unless tuning recorded dropping them.

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
    # members that tuning compared with the all-type model and dropped are left out on purpose
    choices = [(entry.tuning or {}).get("choice") or {} for entry in ensemble.entries.values()]
    dropped = {k for choice in choices if choice.get("kept") == "all" for k in choice.get("own_members") or []}
    unlisted = [k for keys in finished_members(root).values() for k in keys if k not in listed | dropped]
    if dropped - listed:
        log.info("%s: member(s) %s dropped by tuning (the all-type model scored better)", path,
                 ", ".join(sorted(dropped - listed)))
    if unlisted:
        log.warning(
            "%s does not list finished member(s) %s; add them to the file (or delete it to rebuild)",
            path,
            ", ".join(unlisted),
        )
    return ensemble
