"""Train the members a recipe's tuned ensemble kept once more, on every training image (no
fold held out), into ``MODELS/<recipe>-refit/``, and write the tuned ensemble and the holdout
calibration beside them: ``make refit``, then ``make submit RECIPE=<recipe>-refit``. Reruns
resume an interrupted member and skip finished ones. See :mod:`competition.train.refit`."""

from __future__ import annotations

import argparse

from competition.commands.train_all import add_common_arguments

HELP = "train the tuned ensemble's members again on every training image (MODELS/<recipe>-refit)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)


def run(args: argparse.Namespace) -> int:
    from competition.commands.train_all import run_training
    from competition.train import distributed as ddp
    from competition.train.recipe import load_recipe
    from competition.train.refit import refit_recipe, refit_source, unfinished, write_refit

    recipe = load_recipe(args.recipe)
    source = refit_source(args.models, recipe)
    refit = refit_recipe(recipe, source)
    main = ddp.from_env().is_main
    if main:
        print(f"refit of {source.path}: {', '.join(m.key for m in refit.members)} on every training image "
              f"-> {args.models / refit.name}")
    status = run_training(args, recipe=refit)
    if not main:
        return status
    left = unfinished(refit, args.models)
    if status or left:
        print(f"not finished: {', '.join(left) or 'a member failed'}; rerun to continue "
              f"({args.models / refit.name}/{source.path.name} is written once every member is done)")
        return status
    ensemble = write_refit(source, refit, {m.key: recipe.member(m.key).fold for m in refit.members}, args.models)
    for line in ensemble.describe():
        print(f"ensemble {line}")
    print(f"wrote {ensemble.path} (post-processing and calibration of {source.path}); "
          f"predict with: make submit RECIPE={refit.name}")
    return 0
