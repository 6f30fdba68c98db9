"""Train one member of a recipe (resuming it, or skipping it when finished). Its ``init_from``
parent must be trained already (``train-one --member all/NAME`` or ``train-all``)."""

from __future__ import annotations

import argparse

from competition.commands.train_all import add_common_arguments, add_fold_argument

HELP = "train one member of a recipe (TYPE/NAME)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_common_arguments(parser)
    add_fold_argument(parser)
    parser.add_argument("--member", required=True, help="TYPE/NAME, e.g. all/r18")


def run(args: argparse.Namespace) -> int:
    from competition.commands.train_all import run_training

    return run_training(args, keys=[args.member], with_parents=False)
