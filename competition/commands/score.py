"""Score a submission against a solution file in Kaggle's format, print the score per Usage
and per image type with a 95% bootstrap interval over images, and record the run in the local
leaderboard. The last line printed is ``score 0.xxxx``."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "score a submission against a Kaggle-format solution file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("submission", type=Path, help="submission CSV (ImageId,EncodedPixels)")
    parser.add_argument("solution", type=Path, help="solution CSV (ImageId,EncodedPixels,Height,Width,Usage)")
    types = parser.add_argument_group("image types (for the per-type scores)")
    types.add_argument("--types", type=Path, help="CSV ImageId,type")
    types.add_argument("--data", type=Path, help="split dir with the images (e.g. DATA_DIR/stage1_test); types are computed from them")
    record = parser.add_argument_group("leaderboard")
    record.add_argument("--leaderboard", type=Path, default=Path("submissions/leaderboard.csv"), help="history CSV to append to")
    record.add_argument("--no-record", action="store_true", help="do not append to the leaderboard")


def run(args: argparse.Namespace) -> int:
    from competition import leaderboard
    from competition.scoring import InvalidSubmission, format_report, score_submission

    types = load_types(args.types, args.data)
    try:
        scored = score_submission(args.submission, args.solution, types)
    except InvalidSubmission as exc:
        for problem in exc.problems:
            print(f"problem {problem}")
        raise
    for line in format_report(scored)[:-1]:
        print(line)
    if not args.no_record:
        leaderboard.append_row(
            args.submission,
            args.solution,
            n_images=len(scored.result.images),
            score=scored.score,
            interval=scored.result.bootstrap_interval(),
            groups=scored.groups(),
            path=args.leaderboard,
        )
        print(f"recorded in {args.leaderboard}")
    print(format_report(scored)[-1])
    return 0


def load_types(types_csv: Path | None, split_dir: Path | None) -> dict[str, str]:
    """Image types from a CSV, else classified from the images of ``split_dir``, else {}."""
    if types_csv is None and split_dir is None:
        return {}
    from competition.data import types as image_types

    if types_csv is not None:
        return image_types.read_types(types_csv)
    return image_types.classify_split(split_dir)
