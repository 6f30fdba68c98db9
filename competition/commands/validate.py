"""Check a submission the way Kaggle did: header, every ImageId present, runs sorted,
positive and inside the image, no pixel in two objects of one image. Every problem is reported
with its ImageId; exit status 1 when there is any."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "validate a submission CSV before uploading it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("submission", type=Path, help="submission CSV (ImageId,EncodedPixels)")
    parser.add_argument("--sample", type=Path, help="sample submission: its ImageIds must all be present, and no other")
    parser.add_argument("--data", type=Path, help="split dir (DATA_DIR/stage1_test): image sizes for the bounds check; its ids are required when --sample is not given")
    parser.add_argument("--solution", type=Path, help="solution CSV: sizes and required ids from it")
    parser.add_argument("--max-problems", type=int, default=50, help="print at most this many problems")


def run(args: argparse.Namespace) -> int:
    from competition.submission import read_sample_ids, validate_submission

    required, shapes = None, {}
    if args.solution is not None:
        from competition.solution import read_solution

        truth = read_solution(args.solution)
        required, shapes = list(truth), {i: s.shape for i, s in truth.items()}
    if args.data is not None:
        from competition.data.io import list_samples, read_image_shape

        samples = list_samples(args.data)
        shapes.update({s.image_id: read_image_shape(s.image_path) for s in samples})
        required = required or [s.image_id for s in samples]
    if args.sample is not None:
        required = read_sample_ids(args.sample)
    submission, problems = validate_submission(args.submission, required_ids=required, shapes=shapes)
    n_objects = sum(len(v) for v in submission.rles.values())
    for problem in problems[: args.max_problems]:
        print(f"problem {problem}")
    if len(problems) > args.max_problems:
        print(f"... and {len(problems) - args.max_problems} more")
    checked = "bounds checked" if shapes else "bounds not checked (give --data or --solution)"
    ids = f"{len(required)} required ids" if required is not None else "no id list (give --sample or --data)"
    status = "INVALID" if problems else "valid"
    print(f"{status}: {args.submission}: {len(submission.rles)} images, {n_objects} objects, {ids}, {checked}, {len(problems)} problems")
    return 1 if problems else 0
