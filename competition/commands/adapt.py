"""Fine-tune the members an ensemble routes to on their training images plus a split's images
labelled by a submission of them (pseudo-labels), into ``MODELS/<recipe>-adapt/``, and write
the ensemble file and holdout calibration beside them: ``make adapt RECIPE=cpu-refit
LABELS=submissions/stage1_test-cpu.csv``, then ``make submit RECIPE=cpu-refit-adapt``. Reruns
resume an interrupted member and skip finished ones. See :mod:`competition.train.adapt`."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "fine-tune an ensemble's members on a split's images labelled by its own submission (MODELS/<recipe>-adapt)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from competition.commands.train_all import add_common_arguments
    from competition.train.adapt import AdaptSettings

    add_common_arguments(parser)
    defaults = AdaptSettings()
    g = parser.add_argument_group("pseudo-labels")
    g.add_argument("--labels", type=Path, required=True,
                   help="a submission CSV of the split's images (its objects are the labels)")
    g.add_argument("--split", default="stage1_test",
                   help="the labelled images: a split of --data (stage1_test) or a folder in Kaggle's layout "
                        "(build/holdout-f0/stage1_test)")
    g.add_argument("--epochs", type=int, default=defaults.epochs)
    g.add_argument("--samples-per-epoch", type=int, default=defaults.samples_per_epoch)
    g.add_argument("--lr", type=float, default=defaults.lr, help="peak of the cosine schedule")
    g.add_argument("--min-lr", type=float, default=defaults.min_lr)


def run(args: argparse.Namespace) -> int:
    import logging
    import os
    import time

    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as train-all: see run_training

    import torch

    from competition.errors import UserError
    from competition.network import configure_device
    from competition.train import distributed as ddp
    from competition.train.adapt import (PSEUDO_PREFIX, AdaptSettings, adapt_members, adapt_name, adapt_record, load_pseudo_images,
                                         read_source, unfinished, write_adapt)
    from competition.train.dataset import load_training_images
    from competition.train.loop import TrainingDiverged, fit
    from competition.train.members import member_dir

    log = logging.getLogger("competition.train")
    if ddp.from_env().world > 1:
        raise UserError("adapt runs in one process (a short fine-tune): run it without torchrun/GPUS")
    t0 = time.perf_counter()
    settings = AdaptSettings(args.epochs, args.samples_per_epoch, args.lr, args.min_lr)
    source = read_source(args.models, args.recipe)
    members = adapt_members(source, settings)
    name = adapt_name(source.recipe)
    split = Path(args.split) if Path(args.split).is_dir() else Path(args.data) / args.split
    pseudo = load_pseudo_images(split, args.labels)
    record = adapt_record(args.labels, split, settings, pseudo)
    print(f"adapt {source.path}: {', '.join(m.key for m, _, _ in members)} fine-tuned on their training images plus "
          f"{record['n_images']} images of {split} labelled by {args.labels} ({record['n_objects']} objects) "
          f"-> {args.models / name}")
    device = configure_device(args.device)
    if args.threads and device.type == "cpu":
        torch.set_num_threads(args.threads)
    cache = args.cache_dir if str(args.cache_dir) not in ("", ".") else None
    data = load_training_images(args.data, folds_path=args.folds, types_path=args.types, cache_dir=cache)
    labelled = {im.image_id.removeprefix(PSEUDO_PREFIX) for im in pseudo}
    status = 0
    for member, parent, channels in members:
        overlap = sorted(im.image_id for im in data if im.fold != member.fold and im.image_id in labelled)
        if overlap:
            raise UserError(f"{overlap[0]} and {len(overlap) - 1} more of {split} are training images of {member.key} "
                            f"(fold {member.fold} holds out others): its true labels would meet its pseudo-labels")
        try:
            fit(member, data + pseudo, member_dir(args.models, name, member), device, channels=channels,
                recipe_name=name, data_dir=str(args.data), folds_path=str(args.folds), init_dir=parent,
                stop_after=args.max_epochs, records={"adapt": {**record, "of": str(parent)}})
        except TrainingDiverged as exc:
            log.error("%s", exc)
            status = 1
    left = unfinished(members, name, args.models)
    if status or left:
        print(f"not finished: {', '.join(left) or 'a member failed'}; rerun to continue "
              f"({args.models / name}/{source.path.name} is written once every member is done)")
        return status or 0
    ensemble = write_adapt(source, name, record, args.models)
    for line in ensemble.describe():
        print(f"ensemble {line}")
    print(f"wrote {ensemble.path} in {(time.perf_counter() - t0) / 60:.1f} min (post-processing and calibration of "
          f"{source.path}); predict with: make submit RECIPE={name}")
    return 0

