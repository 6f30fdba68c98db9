"""Turn one validation fold of stage1_train into a test set in Kaggle's layout, so the whole
submission pipeline (routing, size estimate, TTA, tuned post-processing, encoding,
validation) can be run on it and scored like the leaderboard: ``make holdout``.

OUT gets ``stage1_test/<id>/images`` (symbolic links to the training images, no copies),
``stage1_sample_submission.csv`` (the fold's ids) and ``solution.csv`` (their masks).
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "lay out one training fold as a Kaggle test set (links, sample submission, solution)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, required=True, help="DATA_DIR holding stage1_train/ (or the split itself)")
    parser.add_argument("--folds", type=Path, default=Path("build/folds.csv"), help="folds CSV (ImageId, type, fold)")
    parser.add_argument("--fold", type=int, default=0, help="the fold to hold out")
    parser.add_argument("--out", type=Path, required=True, help="folder to create (it must not hold a layout already)")


def run(args: argparse.Namespace) -> int:
    import numpy as np

    from competition.commands.make_solution import read_id_file
    import shutil

    from competition.data.io import load_split
    from competition.errors import UserError
    from competition.solution import write_solution
    from competition.submission import write_sample_submission
    from competition.train.dataset import resolve_split_dir

    split = resolve_split_dir(args.data)
    if not args.folds.is_file():
        raise UserError(f"folds file {args.folds} does not exist; make it with `make folds DATA_DIR=...`")
    ids = read_id_file(args.folds, args.fold)
    test = args.out / "stage1_test"
    if test.exists():
        raise UserError(f"{test} exists; remove {args.out} to lay the fold out again")
    samples, _ = load_split(split, with_labels=True, ids=ids)
    for s in samples:
        if s.label is None:
            raise UserError(f"{split / s.image_id}: no masks/ folder; a holdout fold needs labelled images")
    tmp = args.out / ".stage1_test.tmp"
    if tmp.exists():  # left by an interrupted run: it only holds links
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    for image_id in ids:
        (tmp / image_id).mkdir()
        (tmp / image_id / "images").symlink_to((split / image_id / "images").resolve(), target_is_directory=True)
    write_sample_submission(ids, args.out / "stage1_sample_submission.csv")
    write_solution({s.image_id: s.label for s in samples}, args.out / "solution.csv", "Public")
    tmp.rename(test)
    n_objects = sum(int(np.count_nonzero(np.bincount(s.label.ravel())[1:])) for s in samples)
    print(f"fold {args.fold} of {split}: {len(ids)} images, {n_objects} objects -> {args.out} "
          f"(stage1_test/, stage1_sample_submission.csv, solution.csv)")
    return 0
