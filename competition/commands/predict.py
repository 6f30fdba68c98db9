"""Predict a folder of images with a recipe's ensemble (routed per image type, tuned
post-processing) and write one label PNG per image (16-bit, 0 = background, 1..N = nuclei),
optionally the probability maps (float16 .npz), and routing.json with the route of every
image. The folder is a split in Kaggle's layout (<ImageId>/images/<ImageId>.png) or a flat
folder of PNGs."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "predict label images (and probability maps) for a folder of images"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("images", type=Path, help="split folder (Kaggle layout) or a folder of PNGs")
    parser.add_argument("--recipe", required=True, help="recipe name (models in MODELS/<recipe>/)")
    parser.add_argument("--models", type=Path, default=Path("models"), help="models folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--tta", choices=("none", "flips", "d4"), default="none", help="test-time augmentation")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--engine", choices=("auto", "torch", "onnxruntime", "openvino"), default="auto",
                        help="what runs the network (auto: the fastest installed on the CPU, torch on CUDA)")
    parser.add_argument("--probs", action="store_true", help="also write <id>.npz with the probabilities (float16)")


def _images(folder: Path) -> list[tuple[str, Path]]:
    from competition.errors import DataError

    if not folder.is_dir():
        raise DataError(f"image folder {folder} does not exist")
    found = []
    for entry in sorted(folder.iterdir()):
        if entry.is_dir() and (entry / "images" / f"{entry.name}.png").is_file():
            found.append((entry.name, entry / "images" / f"{entry.name}.png"))
        elif entry.is_file() and entry.suffix.lower() in (".png", ".tif", ".tiff", ".jpg", ".jpeg"):
            found.append((entry.stem, entry))
    if not found:
        raise DataError(f"no images in {folder} (expected <ImageId>/images/<ImageId>.png or image files)")
    return found


def run(args: argparse.Namespace) -> int:
    import io
    import json

    import numpy as np
    from PIL import Image

    from competition.csvio import atomic_write
    from competition.data.io import read_image
    from competition.ensemble import load_ensemble
    from competition.predict import EnsemblePredictor, prefetch
    from competition.postprocess import watershed_instances

    items = _images(args.images)
    ensemble = load_ensemble(args.models, args.recipe)
    predictor = EnsemblePredictor(ensemble, device=args.device, tta=args.tta, engine=args.engine)
    routing: dict[str, dict] = {}
    n_failed = 0
    for (image_id, _), image, error in prefetch(items, lambda item: read_image(item[1])):
        if error is not None:
            print(f"problem {image_id}: {error}")
            routing[image_id] = {"error": str(error)}
            n_failed += 1
            continue
        probs, route = predictor.predict(image)
        params, source = ensemble.params_for(route.image_type, scale=route.scale)
        label = watershed_instances(probs, params, predictor.channels)
        with atomic_write(args.out / f"{image_id}.png", mode="wb") as handle:
            Image.fromarray(label.astype(np.uint16)).save(handle, format="PNG")
        if args.probs:
            buf = io.BytesIO()
            np.savez_compressed(buf, probs=probs.astype(np.float16), channels=np.array(predictor.channels))
            with atomic_write(args.out / f"{image_id}.npz", mode="wb") as handle:
                handle.write(buf.getvalue())
        routing[image_id] = {**route.to_dict(), "postprocess": source, "n_objects": int(label.max())}
    with atomic_write(args.out / "routing.json") as handle:
        json.dump(routing, handle, indent=2)
    print(f"predicted {len(items) - n_failed} of {len(items)} images into {args.out}")
    return 1 if n_failed else 0
