"""Write a solution file in Kaggle's format from labelled images (e.g. one validation fold),
so the fold can be scored exactly like the leaderboard."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "write a Kaggle-format solution file from labelled images"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("split_dir", type=Path, help="labelled split, e.g. DATA_DIR/stage1_train")
    parser.add_argument("out", type=Path, help="solution CSV to write")
    parser.add_argument("--ids", type=Path, help="ImageIds to include: a text file (one per line) or a CSV with an ImageId column (e.g. the folds file); default all")
    parser.add_argument("--fold", type=int, help="with a folds CSV as --ids: only the images of this fold")
    parser.add_argument("--usage", default="Public", choices=("Public", "Private"), help="Usage of every row")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable samples (listed) instead of stopping")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing OUT")


def run(args: argparse.Namespace) -> int:
    from competition.data.io import load_split
    from competition.errors import UserError
    from competition.solution import count_objects, write_solution

    ids = read_id_file(args.ids, args.fold) if args.ids is not None else None
    if args.fold is not None and args.ids is None:
        raise UserError("--fold needs --ids FOLDS_CSV")
    samples, skipped = load_split(args.split_dir, with_labels=True, skip_bad=args.skip_bad, ids=ids)
    for image_id, reason in skipped:
        print(f"skipped {image_id}: {reason}")
    unlabelled = [s.image_id for s in samples if s.label is None]
    if unlabelled:
        raise UserError(f"{len(unlabelled)} images in {args.split_dir} have no masks/, e.g. {unlabelled[0]}")
    if not args.overwrite and args.out.exists():
        raise UserError(f"{args.out} exists; pass --overwrite to replace it")
    write_solution({s.image_id: s.label for s in samples}, args.out, args.usage)
    n_objects = sum(count_objects(s.label) for s in samples)
    print(f"wrote {args.out}: {len(samples)} images, {n_objects} objects, {len(skipped)} skipped")
    return 0


def read_id_file(path: Path, fold: int | None) -> list[str]:
    """ImageIds from a text file (one per line) or a CSV with ImageId (and fold) columns."""
    import csv

    from competition.errors import UserError

    try:
        text = path.read_text()
    except OSError as exc:
        raise UserError(f"cannot read --ids file {path}: {exc.strerror}") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if lines and "ImageId" in lines[0].split(","):
        rows = list(csv.DictReader(lines))
        if fold is not None:
            if rows and "fold" not in rows[0]:
                raise UserError(f"{path} has no fold column for --fold")
            rows = [r for r in rows if int(r["fold"]) == fold]
        ids = [r["ImageId"] for r in rows]
    else:
        if fold is not None:
            raise UserError(f"--fold needs a CSV with ImageId and fold columns, {path} is a plain id list")
        ids = lines
    if not ids:
        raise UserError(f"no ImageIds selected from {path}" + (f" for fold {fold}" if fold is not None else ""))
    return ids
