"""Refits: the members a tuned ensemble kept, trained again on every training image.

A tuned ensemble (``models/<recipe>/ensemble.json``) holds members validated on one fold: its
post-processing was tuned on their out-of-fold maps, and ``make holdout`` measured the whole
submit path on conditions they never saw. The submission need not leave that fold unused.
``competition refit`` (``make refit``) trains every member the ensemble routes to, and the
``init_from`` parents they start from, again with the recipe's settings and seed but no fold
held out (``fold = -1``: no validation, ``best.pt`` is the last epoch), into
``models/<recipe>-refit/``. It writes there the tuned ensemble (routing, weights,
post-processing and tuning records) with a ``refit`` record naming its source, and the
source's holdout calibration files, so ``make submit RECIPE=<recipe>-refit`` predicts with the
refits.

A refit has no local score of its own, since every training image is in its training set.
Its post-processing and expected score are the source's, measured on members that had not
seen the holdout fold. The expected score recomputes the distances to the training
conditions for the larger training set, so test images near the added conditions count as
nearer. ``tune`` and ``holdout`` refuse a refit ensemble.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

from competition.ensemble import ENSEMBLE_FILE, Ensemble, read_ensemble, recipe_dir, write_ensemble
from competition.errors import UserError
from competition.train.recipe import REFIT_FOLD, Recipe

log = logging.getLogger(__name__)

#: the holdout calibration files of a recipe folder that a refit takes over
CALIBRATION_GLOB = "calibration-f*.json"


def refit_name(recipe_name: str) -> str:
    """The recipe name (and models folder) of a recipe's refit."""
    return f"{recipe_name}-refit"


def refit_recipe(recipe: Recipe, ensemble: Ensemble) -> Recipe:
    """The recipe of the refit: the members ``ensemble`` routes to and their ``init_from``
    parents, in the recipe's order, each with ``fold = -1``.

    Raises:
        UserError: the ensemble is a refit itself, it routes to a member the recipe does not
            define, a member's ``config.json`` records other settings than the recipe now
            gives (the tuned post-processing belongs to those), or two of the members differ
            only in their fold (their refits would be one network twice).
    """
    from competition.train.loop import member_json, same_member

    if ensemble.refit is not None:
        raise UserError(f"{ensemble.path} is a refit already (of {ensemble.refit.get('of')}); "
                        "refit the ensemble it came from")
    needed: set[str] = set()

    def add(key: str) -> None:
        if key in needed:
            return
        try:
            member = recipe.member(key)
        except UserError:
            raise UserError(f"{ensemble.path} routes to member {key}, which recipe {recipe.name!r} does not "
                            f"define ({', '.join(m.key for m in recipe.members)}): a refit trains each member "
                            "from its recipe settings") from None
        config = ensemble.member_folder(key) / "config.json"
        if config.is_file():
            trained, wanted = json.loads(config.read_text()).get("member"), member_json(member)
            if not same_member(trained, wanted):
                changed = sorted(k for k, v in wanted.items() if (trained or {}).get(k, v) != v)
                raise UserError(f"member {key} of {ensemble.path} was trained with other settings than recipe "
                                f"{recipe.name!r} now gives ({', '.join(changed) or 'see its config.json'}): the "
                                "tuned post-processing belongs to those; restore the recipe, or retrain and retune")
        needed.add(key)
        if member.init_from:
            add(member.init_from)

    for key in ensemble.routed_member_keys():
        add(key)
    sources = [m for m in recipe.members if m.key in needed]
    members = [dataclasses.replace(m, fold=REFIT_FOLD) for m in sources]
    seen: dict[tuple, str] = {}
    for source, member in zip(sources, members):
        settings = tuple(sorted((k, repr(v)) for k, v in dataclasses.asdict(member).items()
                                if k not in ("name", "init_from")))
        if settings in seen:
            raise UserError(f"members {seen[settings]} and {source.key} of {ensemble.path} differ only in their "
                            "fold: refit on every image they would be the same network; keep one of them")
        seen[settings] = source.key
    return Recipe(name=refit_name(recipe.name), path=recipe.path,
                  description=f"refit of {recipe.name} on every training image: {recipe.description}",
                  channels=recipe.channels, members=tuple(members))


def write_refit(source: Ensemble, refit: Recipe, source_folds: dict[str, int], models_dir: str | Path) -> Ensemble:
    """Write the refit's ``ensemble.json`` (the source's, with a ``refit`` record) and its
    copies of the source's holdout calibration files into ``models_dir/<refit name>``.

    ``source_folds``: each refit member's fold in the source recipe. Calibration copies keep
    the source's rows (scores of members that had not seen the holdout fold); their key names
    the refit's recipe, and ``refit_of`` names the source.
    """
    from competition.leaderboard import file_hash

    record = {
        "of": str(source.path),
        "sha256": file_hash(source.path),
        "source_folds": {m.key: source_folds[m.key] for m in refit.members},
        "note": ("members trained on every training image (fold -1) with the source members' settings; "
                 "post-processing, routing and calibration are the source's, measured on its held-out fold"),
    }
    return write_derived(source, refit.name, models_dir, refit=record,
                         comment=f"refit of {source.recipe}: written by `competition refit`; "
                                 "edit the source and rerun refit instead of this file")


def write_derived(source: Ensemble, name: str, models_dir: str | Path, *, comment: str, **record) -> Ensemble:
    """Write ``source``'s ensemble file as recipe ``name`` into ``models_dir/<name>`` with one
    more top-level record (``refit=`` or ``adapt=``), and copies of the source's holdout
    calibration files (their key renamed, ``<record>_of`` naming the copied file); return it
    read back (which checks that the member folders are there)."""
    from competition.expected import read_calibration, write_calibration

    (kind, value), = record.items()
    root = recipe_dir(models_dir, name)
    write_ensemble(dataclasses.replace(source, recipe=name, root=root, comment=comment, **{kind: value}))
    for path in sorted(source.root.glob(CALIBRATION_GLOB)):
        calibration = read_calibration(path)
        write_calibration(root / path.name, calibration["rows"], key={**calibration.get("key", {}), "recipe": name},
                          extra={f"{kind}_of": str(path)})
    return read_ensemble(root / ENSEMBLE_FILE)


def refit_source(models_dir: str | Path, recipe: Recipe) -> Ensemble:
    """The recipe's tuned ensemble, which a refit copies (not built when missing). Its members'
    weights need not be there: a clone holds the committed ensemble file and configs only."""
    path = recipe_dir(models_dir, recipe.name) / ENSEMBLE_FILE
    if not path.is_file():
        raise UserError(f"no {path}: train and tune the recipe first (make train-all tune RECIPE={recipe.name}); "
                        "a refit repeats the members its tuned ensemble kept")
    ensemble = read_ensemble(path, members_on_disk=False)
    if not any(e.tuning for e in ensemble.entries.values()):
        log.warning("%s is not tuned: the refit takes its default post-processing (make tune RECIPE=%s first)",
                    path, recipe.name)
    return ensemble


def unfinished(refit: Recipe, models_dir: str | Path) -> list[str]:
    """The refit's members that are not finished yet."""
    root = recipe_dir(models_dir, refit.name)
    return [m.key for m in refit.members if not (root / m.key / "done").is_file()]


__all__ = ["refit_name", "refit_recipe", "write_refit", "write_derived", "refit_source", "unfinished"]
