"""Write the seeded synthetic dataset in Kaggle's layout (the data of ``make demo``).

OUT_DIR gets ``stage1_train`` (images and one mask PNG per nucleus), ``stage1_test``
(images), ``stage1_sample_submission.csv``, ``stage1_solution.csv`` (the test labels),
``types.csv`` (the true type of every image) and ``synth.json``. The same seed gives
byte-identical files. See :mod:`competition.synth`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "generate the seeded synthetic Kaggle-layout dataset (all three image types)"


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR", help="dataset folder (must be empty unless --overwrite)")
    parser.add_argument("--n-train", type=_count, default=24, help="training images (with masks)")
    parser.add_argument("--n-test", type=_count, default=12, help="test images (labels in stage1_solution.csv)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed gives identical files")
    parser.add_argument(
        "--overwrite", action="store_true", help="replace a synthetic dataset already in OUT_DIR (never real data)"
    )


def run(args: argparse.Namespace) -> int:
    from competition.synth import generate_dataset

    summary = generate_dataset(
        args.out_dir, n_train=args.n_train, n_test=args.n_test, seed=args.seed, overwrite=args.overwrite
    )
    for name, folder, n_images, n_nuclei, types in (
        ("train", summary.train_dir, summary.n_train, summary.n_train_nuclei, summary.train_types),
        ("test", summary.test_dir, summary.n_test, summary.n_test_nuclei, summary.test_types),
    ):
        kinds = ", ".join(f"{n} {kind}" for kind, n in types.items())
        print(f"{name}: {n_images} images ({kinds}), {n_nuclei} nuclei -> {folder}")
    print(f"sample submission: {summary.sample_submission}")
    print(f"solution: {summary.solution}")
    print(f"types: {summary.types_csv}")
    print(f"seed {args.seed}, {summary.seconds:.1f} s")
    return 0
