"""Model folders: where members live, rebuilding them for inference, training them in order.

A member's folder ``models/<recipe>/<type>/<name>/`` holds:

- ``config.json``: the resolved member config, channels, normalisation, invert decision,
  data dir, fold, git commit;
- ``best.pt`` (``{"model": state_dict, "epoch", "score"}``) and ``last.pt`` (resume state);
- ``log.csv``, ``metrics.json``, ``curves.png``, ``lr.png``;
- ``oof.npz``: best-epoch probabilities of the validation images (see
  :func:`competition.train.loop.write_oof`);
- ``done``: written last; finished members are skipped.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from competition.errors import UserError
from competition.train.recipe import Member, Recipe

log = logging.getLogger(__name__)


def member_dir(models_dir: str | Path, recipe_name: str, member: Member | str) -> Path:
    """``models_dir/<recipe>/<type>/<name>`` (``member`` a Member or ``"type/name"``)."""
    key = member.key if isinstance(member, Member) else member
    return Path(models_dir) / recipe_name / key


def load_member(folder: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Rebuild a trained member from its ``config.json`` and ``best.pt`` alone.

    Args:
        folder: the member folder.
        device: where to put the network (eval mode).

    Returns:
        (model, config dict); use with :func:`competition.predict.members.predict_scaled`.

    Raises:
        UserError: the folder lacks ``config.json`` or ``best.pt``.
    """
    from competition.network import build_network

    folder = Path(folder)
    for name in ("config.json", "best.pt"):
        if not (folder / name).is_file():
            raise UserError(f"{folder} is not a trained member folder: no {name}")
    config = json.loads((folder / "config.json").read_text())
    model = build_network(config["arch"], config["encoder"], len(config["channels"]),
                          config.get("member", {}).get("decoder_channels", ()))
    best = torch.load(folder / "best.pt", map_location="cpu", weights_only=True)
    model.load_state_dict(best["model"])
    model.to(device).eval()
    return model, config


def train_members(
    recipe: Recipe,
    data,
    models_dir: str | Path,
    device: torch.device,
    *,
    keys: Sequence[str] | None = None,
    only: str | None = None,
    stop_after: int | None = None,
    data_dir: str = "",
    folds_path: str = "",
    with_parents: bool = True,
) -> dict[str, str]:
    """Train the recipe's members in order (``all`` first, then per type); skip finished ones.

    Args:
        recipe: the recipe.
        data: every training image (:class:`~competition.train.dataset.TrainImage`).
        models_dir: root of the model folders.
        device: torch device.
        keys: only these members (``"type/name"``); default all.
        only: only members of this type (the ``all`` parents they need are trained too).
        stop_after: see :func:`competition.train.loop.fit`.
        data_dir, folds_path: recorded in each config.json.
        with_parents: also train the ``init_from`` parents of the chosen members.

    Returns:
        member key -> outcome: ``"done"``, ``"stopped"``, ``"skipped: ..."`` or
        ``"failed: ..."``. A failure (NaN loss) does not stop the other members except
        those fine-tuned from it.
    """
    from competition.train import distributed as ddp
    from competition.train.loop import TrainingDiverged, fit

    info = ddp.from_env()
    wanted = list(recipe.members)
    if keys:
        wanted = [recipe.member(k) for k in keys]
    if only:
        types = ("all",) + tuple(sorted({m.type for m in recipe.members} - {"all"}))
        if only not in types:
            raise UserError(f"--only {only!r}: valid types are {', '.join(types)}")
        wanted = [m for m in wanted if m.type == only]
    # Parents first: add and order the init_from members the wanted ones need.
    needed = {m.key for m in wanted}
    if with_parents:
        needed |= {m.init_from for m in wanted if m.init_from}
    todo = [m for m in recipe.members if m.key in needed]
    present = {t for im in data for t in (im.type,)}
    outcomes: dict[str, str] = {}
    for m in todo:
        out = member_dir(models_dir, recipe.name, m)
        if m.type != "all" and m.type not in present:
            log.warning("%s: no %s images in the data; member skipped", m.key, m.type)
            outcomes[m.key] = "skipped: no images of this type"
            continue
        if m.init_from and outcomes.get(m.init_from, "").startswith(("failed", "skipped")):
            log.error("%s: skipped because its init_from %s %s", m.key, m.init_from,
                      outcomes[m.init_from])
            outcomes[m.key] = f"skipped: init_from {m.init_from} not trained"
            continue
        init_dir = member_dir(models_dir, recipe.name, m.init_from) if m.init_from else None
        try:
            metrics = fit(m, data, out, device, channels=recipe.channels,
                          recipe_name=recipe.name, data_dir=data_dir, folds_path=folds_path,
                          init_dir=init_dir, stop_after=stop_after, info=info)
        except TrainingDiverged as exc:
            log.error("%s", exc)
            outcomes[m.key] = f"failed: {exc}"
            continue
        if metrics is None:
            outcomes[m.key] = "skipped: no training images"
        else:
            outcomes[m.key] = "done" if metrics.get("finished") else "stopped"
    return outcomes


def summarise(recipe: Recipe, models_dir: str | Path) -> list[dict]:
    """One row per member: key, finished, best epoch and score, per-type scores."""
    rows = []
    for m in recipe.members:
        path = member_dir(models_dir, recipe.name, m) / "metrics.json"
        if path.is_file():
            met = json.loads(path.read_text())
            rows.append({"member": m.key, "finished": met.get("finished"),
                         "best_epoch": met.get("best_epoch"), "best_score": met.get("best_score"),
                         **{f"score_{k}": v for k, v in met.get("best_by_type", {}).items()}})
        else:
            rows.append({"member": m.key, "finished": False})
    return rows
