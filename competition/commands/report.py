"""Write an HTML report of a submission into a self-contained folder: the score per image type
and per Usage (with a solution file), the distribution of the image scores (or of the object
counts without one), and overlays of the predicted (and true) contours on the worst and best
images of each type.

``--against OTHER.csv`` compares the submission with another of the same test set instead
(:mod:`competition.compare`): per image their agreement (the score of one against the other),
and both sets of contours side by side on the images where they agree least."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "HTML report of a submission: scores per type, histogram, contour overlays"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("submission", type=Path, help="submission CSV")
    parser.add_argument("--solution", type=Path, help="solution CSV: scores and true contours")
    parser.add_argument("--data", type=Path, help="split folder with the images, e.g. DATA_DIR/stage1_test (default: the one in the submission's .json)")
    parser.add_argument("--out", type=Path, help="report folder (default: reports/<submission name>/)")
    parser.add_argument("--examples", type=int, default=3, help="worst and best images shown per type")
    parser.add_argument("--against", type=Path, metavar="OTHER",
                        help="another submission of the same test set: where the two disagree (no solution needed)")


def run(args: argparse.Namespace) -> int:
    if args.against is not None:
        from competition.compare import build_comparison
        from competition.errors import UserError

        if args.solution is not None:
            raise UserError("--against compares two submissions without a solution; score each with --solution instead")
        index = build_comparison(args.submission, args.against, data_dir=args.data, out_dir=args.out,
                                 n_examples=args.examples)
        print(f"comparison {index}")
        return 0
    from competition.report import build_report

    index = build_report(args.submission, solution=args.solution, data_dir=args.data, out_dir=args.out,
                         n_examples=args.examples)
    print(f"report {index}")
    return 0
