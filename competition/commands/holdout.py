"""Turn one validation fold of stage1_train into a test set in Kaggle's layout, so the whole
submission pipeline (routing, size estimate, TTA, tuned post-processing, encoding,
validation) can be run on it and scored like the leaderboard: ``make holdout``.

OUT gets ``stage1_test/<id>/images`` (symbolic links to the training images, no copies),
``stage1_sample_submission.csv`` (the fold's ids) and ``solution.csv`` (their masks).

``--scale F`` lays out the fold resized by F instead (``make holdout HOLDOUT_SCALE=F``): RGB
copies of the images (area averaging down, linear up, as the size passes resize) and the
masks resized to the same shape by nearest neighbour, so every nucleus is F times its size.
Scored like the plain holdout, it measures what the leaderboard's unseen magnifications ask
of the size estimate and the network (a nucleus that shrinks below one pixel drops out of
the solution, and the count says so).
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
    parser.add_argument("--scale", type=float, default=1.0, metavar="F",
                        help=f"resize the fold's images and masks by F ({MIN_HOLDOUT_SCALE}-{MAX_HOLDOUT_SCALE}; "
                             "default 1: links to the images)")


#: the resize factors ``--scale`` accepts: a quarter to four times the nuclei's size
MIN_HOLDOUT_SCALE, MAX_HOLDOUT_SCALE = 0.25, 4.0


def run(args: argparse.Namespace) -> int:
    import shutil

    from competition.commands.make_solution import read_id_file
    from competition.data.io import load_split
    from competition.errors import UserError
    from competition.solution import count_objects, write_solution
    from competition.submission import write_sample_submission
    from competition.train.dataset import resolve_split_dir

    if not MIN_HOLDOUT_SCALE <= args.scale <= MAX_HOLDOUT_SCALE:
        raise UserError(f"--scale must lie in [{MIN_HOLDOUT_SCALE}, {MAX_HOLDOUT_SCALE}], got {args.scale}")
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
    if tmp.exists():  # left by an interrupted run: links, or resized copies
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    labels = {s.image_id: s.label for s in samples}
    n_before = sum(count_objects(label) for label in labels.values())
    if args.scale == 1.0:
        for image_id in ids:
            (tmp / image_id).mkdir()
            (tmp / image_id / "images").symlink_to((split / image_id / "images").resolve(), target_is_directory=True)
    else:
        from PIL import Image

        from competition.scale import resize_image, resize_label

        for s in samples:
            image = resize_image(s.image, args.scale)
            folder = tmp / s.image_id / "images"
            folder.mkdir(parents=True)
            Image.fromarray(image).save(folder / f"{s.image_id}.png")
            labels[s.image_id] = resize_label(s.label, *image.shape[:2])
    write_sample_submission(ids, args.out / "stage1_sample_submission.csv")
    write_solution(labels, args.out / "solution.csv", "Public")
    tmp.rename(test)
    n_objects = sum(count_objects(label) for label in labels.values())
    resized = "" if args.scale == 1.0 else f" resized by {args.scale:g} ({n_before - n_objects} too small to keep)"
    print(f"fold {args.fold} of {split}: {len(ids)} images, {n_objects} objects{resized} -> {args.out} "
          f"(stage1_test/, stage1_sample_submission.csv, solution.csv)")
    return 0
