"""Speed figures: the metric and RLE against simple references on the same inputs (and, once
models exist, inference). Prints one line per measurement with the speed-up."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "print speed figures against simple reference implementations"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, default=Path("data/dsb2018"), help="DATA_DIR with stage1_train (synthetic data is generated when absent)")
    parser.add_argument("--n-images", type=int, default=65, help="images to score (65 = the stage-1 test set)")
    parser.add_argument("--max-side", type=int, default=696, help="largest image side drawn (the stage-1 test set's)")
    parser.add_argument("--seed", type=int, default=0)


def run(args: argparse.Namespace) -> int:
    import logging
    import tempfile

    import numpy as np

    from competition import bench
    from competition.data.io import list_samples, load_split, read_image_shape

    log = logging.getLogger("competition.bench")
    train_dir = args.data / "stage1_train"
    with tempfile.TemporaryDirectory() as tmp:
        if not train_dir.is_dir():
            from competition.synth import generate_dataset

            log.warning("%s not found: benchmarking on synthetic data", train_dir)
            generate_dataset(Path(tmp), n_train=args.n_images, n_test=3, seed=args.seed)
            train_dir = Path(tmp) / "stage1_train"
        samples = list_samples(train_dir)
        small = [s.image_id for s in samples if max(read_image_shape(s.image_path)) <= args.max_side]
        rng = np.random.default_rng(args.seed)
        ids = sorted(rng.choice(small, size=min(args.n_images, len(small)), replace=False).tolist())
        loaded, _ = load_split(train_dir, ids=ids)
    labels = [s.label for s in loaded]
    n_objects = sum(len(np.unique(label)) - 1 for label in labels)
    print(f"data: {len(labels)} labelled images from {train_dir} (sides <= {args.max_side}), {n_objects} objects")
    print(bench.bench_metric(bench.benchmark_pairs(labels, args.seed)).line())
    for timing in bench.bench_rle(labels):
        print(timing.line())
    return 0
