"""Inference speed: predict + post-process + encode the stage-1 test images with a recipe's
ensemble, without and with flip TTA.

Reports images per second and the share of the time spent in the network (forward passes),
in the rest of the ensemble prediction (normalisation, tiling, blending), in post-processing
(watershed) and in run-length encoding. Image reading is done before the clock starts. Target
for the ``cpu`` recipe: the 65 images with flip TTA in at most 2 minutes on 2 CPU cores.

Run: ``python -m competition.bench_inference --models models --recipe cpu --data DATA_DIR``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

__all__ = ["InferenceTiming", "bench_inference", "main"]


@dataclass(frozen=True)
class InferenceTiming:
    """One benchmark line: a TTA mode over ``n_images`` images.

    Attributes:
        tta: the TTA mode.
        n_images: images timed.
        total_s: wall time of predict + post-process + encode.
        network_s: time in forward passes.
        predict_s: the whole ensemble prediction (network included).
        postprocess_s: watershed post-processing.
        encode_s: run-length encoding.
        n_objects: objects found.
        size_pass_s: part of ``network_s``..``predict_s``: the passes that estimate the
            nucleus size (members trained at a ``nucleus_diameter``).
    """

    tta: str
    n_images: int
    total_s: float
    network_s: float
    predict_s: float
    postprocess_s: float
    encode_s: float
    n_objects: int
    size_pass_s: float = 0.0

    @property
    def images_per_s(self) -> float:
        return self.n_images / self.total_s if self.total_s > 0 else float("inf")

    def line(self) -> str:
        share = lambda s: 100.0 * s / self.total_s if self.total_s > 0 else 0.0  # noqa: E731
        other = self.predict_s - self.network_s
        return (
            f"inference TTA {self.tta:<5} {self.n_images:3d} images {self.total_s:7.1f} s "
            f"({self.images_per_s:5.2f} img/s): network {share(self.network_s):4.1f}%, "
            f"tiling/normalise/blend {share(other):4.1f}%, post-processing {share(self.postprocess_s):4.1f}%, "
            f"encoding {share(self.encode_s):4.1f}%; {self.n_objects} objects"
            + (f"; size passes {share(self.size_pass_s):4.1f}% of the time" if self.size_pass_s else "")
        )


def bench_inference(
    models_dir: str | Path,
    recipe: str,
    data_dir: str | Path,
    n_images: int | None = None,
    tta: Sequence[str] = ("none", "flips"),
    *,
    device: str = "auto",
    stage: str = "stage1",
    tiling=None,
    loader=None,
    threads: int | None = None,
) -> list[InferenceTiming]:
    """Time the ensemble of ``recipe`` on the test images of ``data_dir``.

    Args:
        models_dir: the models folder (``models_dir/<recipe>/ensemble.json`` or member folders).
        recipe: recipe name.
        data_dir: DATA_DIR with ``<stage>_test``.
        n_images: the first N test images (sorted by id); default all (65 for stage 1).
        tta: TTA modes to time, one line each.
        device: ``auto``, ``cpu`` or ``cuda``.
        stage: ``stage1`` or ``stage2``.
        tiling: :class:`competition.predict.Tiling` (default: the default tiling).
        loader: member loader (tests).
        threads: torch CPU threads (default: torch's); see
            :func:`competition.predict.set_threads`.

    Returns:
        One :class:`InferenceTiming` per TTA mode.
    """
    from competition.data.io import read_image
    from competition.ensemble import load_ensemble
    from competition.predict import EnsemblePredictor, Tiling, set_threads
    from competition.postprocess import watershed_instances
    from competition.rle import label_to_rles
    from competition.submit import find_test_split, image_path, list_test_ids

    split, sample = find_test_split(data_dir, stage)
    ids = list_test_ids(split, sample)[: n_images or None]
    images = [read_image(image_path(split, i)) for i in ids]
    ensemble = load_ensemble(models_dir, recipe, create=False)
    set_threads(threads)
    timings = []
    for mode in tta:
        predictor = EnsemblePredictor(ensemble, device=device, tta=mode, tiling=tiling or Tiling(), loader=loader)
        if predictor.device.type == "cuda":  # warm-up: cuDNN autotuning is not inference time
            predictor.predict(images[0])
            predictor = EnsemblePredictor(ensemble, device=device, tta=mode, tiling=tiling or Tiling(), loader=loader)
        post = encode = 0.0
        n_objects = 0
        started = time.perf_counter()
        for image in images:
            probs, route = predictor.predict(image)
            t0 = time.perf_counter()
            label = watershed_instances(probs, ensemble.params_for(route.image_type)[0], predictor.channels)
            t1 = time.perf_counter()
            n_objects += len(label_to_rles(label))
            t2 = time.perf_counter()
            post += t1 - t0
            encode += t2 - t1
        total = time.perf_counter() - started
        timing = InferenceTiming(mode, len(images), total, predictor.timings.network.seconds, predictor.timings.predict,
                                 post, encode, n_objects, predictor.timings.size_estimate)
        log.info("%s", timing.line())
        timings.append(timing)
    return timings


def main(argv: list[str] | None = None) -> int:
    """Command line: print one line per TTA mode."""
    parser = argparse.ArgumentParser(prog="python -m competition.bench_inference", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--models", type=Path, default=Path("models"), help="models folder")
    parser.add_argument("--recipe", default="cpu", help="recipe name")
    parser.add_argument("--data", type=Path, default=Path("data/dsb2018"), help="DATA_DIR with stage1_test")
    parser.add_argument("--n-images", type=int, help="time only the first N test images")
    parser.add_argument("--tta", nargs="+", default=["none", "flips"], choices=("none", "flips", "d4"))
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, help="torch CPU threads (default: one per core)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from competition.errors import UserError

    try:
        timings = bench_inference(args.models, args.recipe, args.data, args.n_images, args.tta, device=args.device,
                                  threads=args.threads)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for timing in timings:
        print(timing.line())
    return 0


if __name__ == "__main__":
    sys.exit(main())
