"""Train every member of a recipe that is not finished yet: the ``all``-type members first,
then the per-type members (fine-tuned from them where the recipe says ``init_from``).

Model folders go to ``MODELS/<recipe>/<type>/<member>/``; rerunning resumes interrupted
members from ``last.pt`` and skips finished ones. Several GPUs:
``torchrun --nproc_per_node=4 -m competition train-all ...``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "train every unfinished member of a recipe (all-type members first)"


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments shared by train-all and train-one."""
    g = parser.add_argument_group("inputs")
    g.add_argument("--recipe", required=True,
                   help="recipe name (recipes/NAME.toml: tiny, cpu, gpu) or a TOML path")
    g.add_argument("--data", type=Path, default=Path("data/dsb2018"),
                   help="DATA_DIR holding stage1_train/ (or the split directory itself)")
    g.add_argument("--folds", type=Path, default=Path("build/folds.csv"),
                   help="folds CSV (ImageId,type,fold); made from the data when missing")
    g.add_argument("--types", type=Path, default=None,
                   help="image types CSV; default: the folds file's type column")
    g.add_argument("--cache-dir", type=Path, default=Path("build/cache"),
                   help="cache of the decoded training set ('' disables)")
    g = parser.add_argument_group("outputs and run")
    g.add_argument("--models", type=Path, default=Path("models"), help="root of model folders")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    g.add_argument("--threads", type=int, default=None,
                   help="CPU threads for torch (default: all cores, or cores / processes "
                        "under torchrun)")
    g.add_argument("--max-epochs", type=int, default=None,
                   help="stop each member after this many epochs in total (smoke runs); the "
                        "schedule is unchanged and a later run without it resumes")


def add_fold_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--fold", type=int, default=None,
                        help="validate every member on this fold instead of the recipe's (with another "
                             "--models: a second condition-out fold for the holdout calibration)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    add_fold_argument(parser)
    parser.add_argument("--only", default=None,
                        help="only members of this type (all, fluorescence, histology, "
                             "brightfield); their init_from parents are trained too")


def run_training(args: argparse.Namespace, *, keys=None, only=None, with_parents=True, recipe=None) -> int:
    """Shared body of train-all, train-one and refit (``recipe``: a parsed recipe instead of
    ``args.recipe``); returns the exit status."""
    import logging
    import os
    import time

    # Before torch loads OpenMP: with the default (active, spinning) wait policy, torch's
    # threads slow down 3-4x whenever another process shares the cores (measured here:
    # resnet18 step 7.5 s -> 2.4 s with PASSIVE, both with 2 threads and a busy neighbour).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

    import torch

    from competition.train import distributed as ddp
    from competition.train.dataset import load_training_images
    from competition.train.members import summarise, train_members
    from competition.network import configure_device
    from competition.train.recipe import load_recipe

    log = logging.getLogger("competition.train")
    t0 = time.perf_counter()
    if recipe is None:
        recipe = load_recipe(args.recipe)
        if getattr(args, "fold", None) is not None:
            recipe = recipe.on_fold(args.fold)
    if keys:
        for k in keys:
            recipe.member(k)  # UserError listing the valid members
    if args.max_epochs is not None and args.max_epochs < 1:
        from competition.errors import UserError

        raise UserError("--max-epochs must be >= 1")
    info = ddp.from_env()
    device = configure_device(args.device)
    info, device = ddp.setup(device, info)
    if args.threads and device.type == "cpu":
        torch.set_num_threads(args.threads)
    try:
        cache = args.cache_dir if str(args.cache_dir) not in ("", ".") else None
        if info.is_main:  # rank 0 first: it writes the cache and the folds file
            data = load_training_images(args.data, folds_path=args.folds, types_path=args.types,
                                        cache_dir=cache)
        ddp.barrier(info)
        if not info.is_main:
            data = load_training_images(args.data, folds_path=args.folds, types_path=args.types,
                                        cache_dir=cache)
        outcomes = train_members(recipe, data, args.models, device, keys=keys, only=only,
                                 stop_after=args.max_epochs, data_dir=str(args.data),
                                 folds_path=str(args.folds), with_parents=with_parents)
    finally:
        ddp.cleanup(info)
    if not info.is_main:
        return 0
    rows = {r["member"]: r for r in summarise(recipe, args.models)}
    print(f"recipe {recipe.name}: {len(outcomes)} member(s) in "
          f"{(time.perf_counter() - t0) / 60:.1f} min, models in {args.models / recipe.name}")
    for key, outcome in outcomes.items():
        r = rows.get(key, {})
        score = r.get("best_score")
        extra = f"best {score:.4f} at epoch {r.get('best_epoch')}" if score is not None else ""
        print(f"  {key:32s} {outcome.splitlines()[0][:60]:20s} {extra}")
    failed = [k for k, o in outcomes.items() if o.startswith("failed")]
    if failed:
        log.error("%d member(s) failed: %s", len(failed), ", ".join(failed))
        return 1
    return 0


def run(args: argparse.Namespace) -> int:
    return run_training(args, only=args.only)
