"""Out-of-fold probability maps of an ensemble's members (``oof.npz``), gathered per image
type, and the labelled training split they came from.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from competition.ensemble import Ensemble
from competition.errors import UserError

log = logging.getLogger(__name__)

__all__ = ["OOFSet", "read_oof", "collect_oof", "oof_ids", "member_config", "training_split_dir", "with_other_folds"]


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


def oof_ids(folder: str | Path) -> set[str]:
    """The image ids a member's ``oof.npz`` holds: the images it held out (empty when it has
    none)."""
    import numpy as np

    try:
        with np.load(Path(folder) / "oof.npz", allow_pickle=False) as z:
            return {str(i) for i in z["ids"]}
    except (OSError, KeyError, ValueError):
        return set()


def collect_oof(ensemble: Ensemble, entry: str, image_type: str | None) -> OOFSet:
    """The out-of-fold maps of ``entry``'s members for images of ``image_type``.

    Members trained on different folds hold maps of different images: every image gets the
    weighted mean of the members that hold it (its map then comes only from models that did
    not train on it). Members of the same fold share images and are averaged, as at
    inference. A member's folders in the ensemble's ``other_folds`` (the same recipe trained
    on other folds) add the images they held out, counted under their folder's path. A member
    without ``oof.npz`` (no validation images) is skipped with a warning.

    Raises:
        UserError: members with different channels.
    """
    sums: dict[str, Any] = {}
    weights: dict[str, float] = {}
    n_views: dict[str, int] = {}
    contributed: dict[str, int] = {}
    channels: tuple[str, ...] | None = None
    for ref in ensemble.members_of(entry):
        for folder in ensemble.member_folders(ref.key):
            label = ref.key if folder == ensemble.member_folder(ref.key) else str(folder)
            if not (folder / "oof.npz").is_file():
                log.warning("member %s has no oof.npz (no validation images?): not used for tuning", label)
                continue
            member_channels, items = read_oof(folder, image_type)
            if channels is None:
                channels = member_channels
            elif member_channels != channels:
                raise UserError(f"member {label} has channels {list(member_channels)}, others {list(channels)}")
            count = 0
            for image_id, _, probs in items:
                if image_id in sums:
                    if sums[image_id].shape != probs.shape:
                        raise UserError(f"member {label}: out-of-fold map of {image_id} has shape {probs.shape}, "
                                        f"another member's {sums[image_id].shape}")
                    sums[image_id] += ref.weight * probs
                else:
                    sums[image_id] = ref.weight * probs
                weights[image_id] = weights.get(image_id, 0.0) + ref.weight
                n_views[image_id] = n_views.get(image_id, 0) + 1
                count += 1
            contributed[label] = count
    probs = {i: sums[i] / weights[i] for i in sorted(sums)}
    return OOFSet(probs, channels or (), contributed, {i: n_views[i] for i in sorted(n_views)})


def member_config(folder: str | Path) -> dict[str, Any]:
    """A member folder's ``config.json`` ({} when it is missing or unreadable)."""
    try:
        return json.loads((Path(folder) / "config.json").read_text())
    except (OSError, ValueError):
        return {}


def with_other_folds(ensemble: Ensemble, models_dirs) -> Ensemble:
    """``ensemble`` with the same recipe's members trained on other folds
    (``MODELS_DIR/<recipe>/<type>/<name>``, from ``make train-all TRAIN_FOLD=N
    MODELS=MODELS_DIR``) joining its tuning (:attr:`Ensemble.other_folds`).

    Raises:
        UserError: a folder without the recipe or without any of the ensemble's members, or a
            member validated on a fold already counted (its images would count twice).
    """
    import dataclasses

    roots: list[Path] = []
    configs = {k: member_config(ensemble.member_folder(k)) for k in ensemble.member_keys()}
    folds: dict[str, set] = {k: {c.get("fold")} for k, c in configs.items()}
    for models_dir in models_dirs:
        root = Path(models_dir) / ensemble.recipe
        if not root.is_dir():
            raise UserError(f"{root} not found: train recipe {ensemble.recipe} on another fold there first "
                            f"(make train-all RECIPE={ensemble.recipe} TRAIN_FOLD=N MODELS={models_dir})")
        found = []
        for key in ensemble.member_keys():
            config = member_config(root / key)
            if not config:
                log.warning("%s has no member %s: its images come from the other folds only", root, key)
                continue
            if config.get("fold") in folds[key]:
                raise UserError(f"{root / key} was validated on fold {config.get('fold')}, like another folder of "
                                f"{key} in the tuning: its images would count twice")
            folds[key].add(config.get("fold"))
            mine = dict(configs[key].get("member") or {})
            theirs = dict(config.get("member") or {})
            differ = sorted(k for k in (set(mine) | set(theirs)) - {"fold"}
                            if (mine.get(k) or None) != (theirs.get(k) or None))
            if differ:
                log.warning("%s differs from %s in %s: not the same recipe on another fold?", root / key,
                            ensemble.member_folder(key), ", ".join(differ))
            found.append(key)
        if not found:
            raise UserError(f"{root} holds none of the members of {ensemble.path}")
        roots.append(root)
    return dataclasses.replace(ensemble, other_folds=tuple(roots))


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
            recorded = member_config(ensemble.member_folder(key)).get("data_dir")
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
