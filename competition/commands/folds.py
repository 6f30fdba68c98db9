"""Make cross-validation folds of a training split, stratified by image type.

Uses the types CSV when given (``python -m competition types``), else classifies the images.
Folds are written once: an existing folds file is refused unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "write cross-validation folds (ImageId,type,fold[,condition]) of a split"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("split_dir", type=Path, metavar="SPLIT_DIR", help="e.g. $DATA_DIR/stage1_train")
    parser.add_argument("--types", type=Path, default=None, metavar="CSV", help="ImageId,type CSV (default: classify now)")
    parser.add_argument("--n-folds", type=int, default=5, help="number of folds")
    parser.add_argument("--seed", type=int, default=0, help="shuffling seed")
    parser.add_argument("--out", type=Path, default=Path("build/folds.csv"), help="output CSV")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folds file")
    parser.add_argument("--by", choices=("conditions", "random"), default="conditions",
                        help="whole imaging conditions per fold, or random images stratified by type")
    parser.add_argument("--max-condition", type=int, default=None, metavar="N",
                        help="largest condition (images); bigger ones split (default: half a fold)")


def run(args: argparse.Namespace) -> int:
    from competition.data.folds import make_folds, write_folds
    from competition.data.io import list_samples
    from competition.data.types import IMAGE_TYPES, classify_split, read_types
    from competition.errors import UserError

    if args.out.exists() and not args.overwrite:
        raise UserError(f"{args.out} already exists; folds are written once (use --overwrite to replace them)")
    if args.types is not None:
        types = read_types(args.types)
        on_disk = {s.image_id for s in list_samples(args.split_dir)}
        missing = sorted(set(types) - on_disk)
        if missing:
            raise UserError(f"{args.types} names {len(missing)} image(s) not in {args.split_dir}, e.g. {missing[0]}")
        unlisted = sorted(on_disk - set(types))
        if unlisted:
            raise UserError(f"{len(unlisted)} image(s) of {args.split_dir} are not in {args.types}, e.g. {unlisted[0]}")
    else:
        types = classify_split(args.split_dir)
    conditions = None
    if args.by == "random":
        folds = make_folds(types, n_folds=args.n_folds, seed=args.seed)
    else:
        from competition.data.folds import make_condition_folds
        from competition.data.io import read_image

        images = {s.image_id: read_image(s.image_path) for s in list_samples(args.split_dir)}
        folds, conditions = make_condition_folds(images, types, n_folds=args.n_folds,
                                                 max_size=args.max_condition)
        print(f"{len(set(conditions.values()))} imaging conditions")
    write_folds(args.out, types, folds, overwrite=args.overwrite, conditions=conditions)
    kinds = [k for k in IMAGE_TYPES if k in types.values()] + sorted(set(types.values()) - set(IMAGE_TYPES))
    width = max(len(k) for k in kinds)
    print("fold " + " ".join(f"{k:>{width}}" for k in kinds) + f" {'total':>{width}}")
    for fold in range(args.n_folds):
        counts = [sum(1 for i, f in folds.items() if f == fold and types[i] == k) for k in kinds]
        print(f"{fold:>4} " + " ".join(f"{c:>{width}}" for c in counts) + f" {sum(counts):>{width}}")
    print(f"wrote {args.out}")
    return 0
