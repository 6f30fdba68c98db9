"""Adaptation to unlabelled images: the members an ensemble routes to, fine-tuned on their own
training images plus images labelled by the ensemble's own predictions (pseudo-labels).

The test images bring imaging conditions that no training image has. ``competition adapt``
(``make adapt``) takes a submission CSV of a split (``stage1_test``, or a holdout fold's image
folder) as labels for that split's images, and fine-tunes each member the ensemble routes to
on its training images plus those, a short run from its own weights (``init_from``, cosine
schedule, its seed and threads), into ``models/<recipe>-adapt/``. The pseudo-labelled images
never count as validation: a member keeps its fold and validates on it with the true labels
once, after the last epoch. The tuned ensemble file (with an ``adapt`` record: the labels
file, its SHA-256, the split, the settings) and the holdout calibration are copied, as for a
refit (:mod:`competition.train.refit`).

What it is for, measured on condition-out fold 0 (the fold-0 members, labels: their own
holdout CSV of the fold): see the README. The labels are the submission's objects as they
are (no confidence filter); a labelled image without objects teaches background.

Labels must come from predictions, never from annotations of the images: an adapted ensemble
has seen the split's pixels, so a holdout of it only means something when the labels came
from members that had not seen that fold's annotations (the holdout CSV of the same members).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

from competition.ensemble import ENSEMBLE_FILE, Ensemble, read_ensemble, recipe_dir
from competition.errors import UserError
from competition.train.recipe import Member, member_from_dict

log = logging.getLogger(__name__)

#: the fold of pseudo-labelled images: never a member's validation fold (folds are >= -1)
PSEUDO_FOLD = -2
#: image ids of pseudo-labelled images get this prefix, so a holdout fold's images (which are
#: training images too, with their true labels) stay apart from their pseudo-labelled copies
PSEUDO_PREFIX = "pseudo:"


def adapt_name(recipe_name: str) -> str:
    """The models folder (and recipe name) of an adapted ensemble."""
    return f"{recipe_name}-adapt"


@dataclass(frozen=True)
class AdaptSettings:
    """The fine-tune on pseudo-labels (defaults: the fold-0 pilot of 2026-12-05)."""

    epochs: int = 3
    samples_per_epoch: int = 1200
    lr: float = 2e-4
    min_lr: float = 1e-6

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.samples_per_epoch < 1:
            raise UserError(f"adapt: epochs and samples per epoch must be >= 1 (got {self.epochs}, "
                            f"{self.samples_per_epoch})")
        if not 0 < self.lr or self.min_lr < 0 or self.min_lr > self.lr:
            raise UserError(f"adapt: need 0 <= min_lr <= lr and lr > 0 (got lr {self.lr}, min_lr {self.min_lr})")


def load_pseudo_images(split_dir: str | Path, labels: str | Path) -> list:
    """Every image of ``split_dir`` (Kaggle layout) with its label decoded from the submission
    CSV ``labels``, as :class:`~competition.train.dataset.TrainImage` of fold
    :data:`PSEUDO_FOLD`, ids prefixed with :data:`PSEUDO_PREFIX`, types by the classifier.

    Raises:
        InvalidSubmission: ``labels`` is not a valid submission of exactly these images (every
            problem listed: missing or extra images, bad encodings, overlaps, out of bounds).
        DataError: an unreadable image, or a split folder without images.
    """
    from competition.data.io import list_samples, read_image
    from competition.data.types import classify_image
    from competition.scoring import InvalidSubmission
    from competition.submission import validate_submission
    from competition.train.dataset import TrainImage

    samples = list_samples(split_dir)
    images = {s.image_id: read_image(s.image_path) for s in samples}
    shapes = {i: im.shape[:2] for i, im in images.items()}
    submission, problems = validate_submission(labels, required_ids=list(images), shapes=shapes)
    if problems:
        raise InvalidSubmission(Path(labels), problems)
    out = []
    for image_id, image in images.items():
        label = submission.label(image_id, shapes[image_id])
        out.append(TrainImage(PSEUDO_PREFIX + image_id, image, label, classify_image(image), PSEUDO_FOLD))
    return out


def adapt_members(source: Ensemble, settings: AdaptSettings) -> list[tuple[Member, Path, tuple[str, ...]]]:
    """The fine-tunes: for each member ``source`` routes to, its settings as trained (its
    ``config.json``) with the adapt schedule, starting from its ``best.pt``; paired with the
    source member's folder and its output channels (both from one read of its ``config.json``).

    Raises:
        UserError: ``source`` is adapted already, or a routed member has no ``best.pt`` or
            ``config.json`` (a clone holds configs only: train or refit the members first).
    """
    if source.adapt is not None:
        raise UserError(f"{source.path} is adapted already (labels {source.adapt.get('labels')}); adapt the "
                        "ensemble it came from, with new labels")
    out = []
    for key in source.routed_member_keys():
        folder = source.member_folder(key)
        if not (folder / "best.pt").is_file() or not (folder / "config.json").is_file():
            raise UserError(f"{folder} has no best.pt and config.json: train the members of {source.path} first "
                            f"(make train-all, or make refit for a refit)")
        config = json.loads((folder / "config.json").read_text())
        trained = member_from_dict(config["member"])
        member = dataclasses.replace(trained, init_from=key, epochs=settings.epochs,
                                     samples_per_epoch=settings.samples_per_epoch, lr=settings.lr,
                                     min_lr=settings.min_lr, schedule="cosine", freeze_encoder_epochs=0,
                                     valid_every=settings.epochs,
                                     # the adapted weights themselves, not averaged back with the start
                                     average_with_init=0.0)
        out.append((member, folder, tuple(config["channels"])))
    return out


def adapt_record(labels: str | Path, split_dir: str | Path, settings: AdaptSettings, pseudo: list) -> dict:
    """What an adapted member and ensemble record of their labels (config.json, ensemble.json)."""
    from competition.leaderboard import file_hash

    return {"labels": str(labels), "sha256": file_hash(labels), "split": str(split_dir),
            "n_images": len(pseudo), "n_objects": int(sum(int(im.label.max(initial=0)) for im in pseudo)),
            "settings": dataclasses.asdict(settings)}


def write_adapt(source: Ensemble, name: str, record: dict, models_dir: str | Path) -> Ensemble:
    """Write the adapted ensemble file (the source's, with an ``adapt`` record naming it) and
    copies of the source's holdout calibration files into ``models_dir/<name>``."""
    from competition.train.refit import write_derived

    return write_derived(source, name, models_dir, adapt={**record, "of": str(source.path)},
                         comment=f"{source.recipe} adapted to {record['split']}: written by `competition adapt`; "
                                 "edit the source and rerun adapt instead of this file")


def unfinished(members: list[tuple[Member, Path, tuple[str, ...]]], name: str, models_dir: str | Path) -> list[str]:
    root = recipe_dir(models_dir, name)
    return [m.key for m, _, _ in members if not (root / m.key / "done").is_file()]


def read_source(models_dir: str | Path, recipe: str) -> Ensemble:
    """``models_dir/<recipe>/ensemble.json`` (a tuned ensemble, a refit or a link folder)."""
    path = recipe_dir(models_dir, recipe) / ENSEMBLE_FILE
    if not path.is_file():
        raise UserError(f"no {path}: train and tune the recipe first (make train-all tune RECIPE={recipe}), "
                        "or refit it (make refit)")
    return read_ensemble(path)


__all__ = ["PSEUDO_FOLD", "PSEUDO_PREFIX", "AdaptSettings", "adapt_name", "load_pseudo_images", "adapt_members",
           "adapt_record", "write_adapt", "unfinished", "read_source"]
