"""INT8 members for the OpenVINO engine: post-training quantization with NNCF.

``--engine openvino-int8`` runs every member through OpenVINO with its convolutions in INT8.
The member's ONNX export (:mod:`competition.predict.engines`) is quantized by NNCF's
post-training quantization on :func:`calibration_inputs`: crops of the member's own
*training* images (never its validation fold, so ``make holdout`` stays out of sample), each
resized to the member's nucleus diameter from its masks and normalised as the prediction
path does. The result is cached beside the export as
``<member>/engine/<export stem>-int8-<calibration key>.xml`` (+ ``.bin``), written to
temporary names and renamed, the ``.xml`` last; it is rebuilt when the weights or the
calibration set change, and like the export never committed.

Measured on an AVX2-only AMD EPYC (1 thread, a lite0 UNet, 4 views of 544×672): OpenVINO
float32 2.26 s, INT8 1.30 s (1.7×; PyTorch float32 6.21 s). README "Inference" holds the
score it costs.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from competition.errors import DataError, UserError

log = logging.getLogger(__name__)

__all__ = ["CALIBRATION_IMAGES", "CALIBRATION_CROP", "calibration_inputs", "calibration_key", "quantized_file",
           "quantize_export"]

#: Training images sampled for the calibration, one crop each.
CALIBRATION_IMAGES = 48

#: Side of a calibration crop before the member's margins (px, at the member's scale).
CALIBRATION_CROP = 256


def _training_ids(config: Mapping[str, Any], split: Path) -> list[str]:
    """The member's training image ids: the folds file's ids outside its validation fold
    (every image of ``split`` when the folds file is gone)."""
    from competition.data.io import list_samples

    ids = [s.image_id for s in list_samples(split, skip_bad=True)]
    folds_file = config.get("folds_file")
    if folds_file and Path(folds_file).is_file():
        from competition.data.folds import read_folds

        frame = read_folds(folds_file)
        held = set(frame.loc[frame["fold"] == int(config.get("fold", 0)), "ImageId"])
        ids = [i for i in ids if i not in held]
    return ids


def calibration_key(config: Mapping[str, Any], n: int | None = None, crop: int | None = None) -> str:
    """12 hex digits naming the calibration set of a member: its data folder, folds file,
    fold, nucleus diameter, normalisation, ``n`` and ``crop`` (default
    :data:`CALIBRATION_IMAGES`, :data:`CALIBRATION_CROP`)."""
    n, crop = n or CALIBRATION_IMAGES, crop or CALIBRATION_CROP
    member = config.get("member") or {}
    what = {"data": str(config.get("data_dir")), "folds": str(config.get("folds_file")), "fold": config.get("fold"),
            "diameter": member.get("nucleus_diameter"), "invert": config.get("invert"),
            "mean": config.get("mean"), "std": config.get("std"), "pad": member.get("pad"), "n": n, "crop": crop}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


def calibration_inputs(config: Mapping[str, Any], n: int | None = None, crop: int | None = None,
                       seed: int = 0, data_dir: str | Path | None = None) -> list[np.ndarray]:
    """``n`` network inputs (1×3×H×W float32, H and W multiples of 32) from the member's
    training images: one seeded crop of side ``crop`` each, at the member's nucleus
    diameter (defaults :data:`CALIBRATION_IMAGES`, :data:`CALIBRATION_CROP`).

    Args:
        config: the member's ``config.json`` (its ``data_dir``, ``folds_file``, ``fold``,
            normalisation and ``member.nucleus_diameter``).
        data_dir: where the training images are instead of the config's ``data_dir``.

    Raises:
        UserError: the training images cannot be found (the message names the folder).
    """
    from competition.data.io import list_samples, load_sample
    from competition.predict.preprocess import (IMAGENET_MEAN, IMAGENET_STD, invert_for, margin_of,
                                                normalise, pad_for_network)
    from competition.scale import label_scale, resize_image
    from competition.train.dataset import resolve_split_dir

    n, crop = n or CALIBRATION_IMAGES, crop or CALIBRATION_CROP
    source = data_dir or config.get("data_dir")
    try:
        split = resolve_split_dir(source)
    except (DataError, TypeError) as exc:
        raise UserError(f"engine openvino-int8 calibrates each member on its training images, and they are "
                        f"not where the member was trained ({source}): {exc}") from None
    ids = _training_ids(config, split)
    if not ids:
        raise UserError(f"engine openvino-int8: no training image of the member left in {split}")
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(ids), size=min(n, len(ids)), replace=False))
    by_id = {s.image_id: s for s in list_samples(split, skip_bad=True)}
    diameter = float((config.get("member") or {}).get("nucleus_diameter") or 0.0)
    margin = margin_of(config)
    inputs = []
    for index in chosen:
        image, label = load_sample(by_id[ids[index]])
        if diameter and label is not None and label.max() > 0:
            image = resize_image(image, label_scale(label, diameter))
        x = normalise(image, invert_for(image, config), config.get("mean", IMAGENET_MEAN), config.get("std", IMAGENET_STD))
        _, height, width = x.shape
        top = int(rng.integers(0, max(1, height - crop + 1)))
        left = int(rng.integers(0, max(1, width - crop + 1)))
        x, _ = pad_for_network(x[:, top:top + crop, left:left + crop], margin)
        inputs.append(np.ascontiguousarray(x[None], dtype=np.float32))
    return inputs


def quantized_file(export: str | Path, key: str) -> Path:
    """Where the INT8 model of ``export`` calibrated on the set ``key`` lives (the .xml)."""
    export = Path(export)
    return export.with_name(f"{export.stem}-int8-{key}.xml")


def quantize_export(export: str | Path, inputs: list[np.ndarray], out: str | Path) -> Path:
    """Quantize the ONNX file ``export`` to INT8 with NNCF on ``inputs`` and save it as the
    OpenVINO model ``out`` (.xml and .bin, renamed into place, the .xml last).

    Raises:
        UserError: NNCF is not installed (``make setup`` installs it).
    """
    try:
        import nncf
    except ImportError:
        raise UserError("engine openvino-int8 needs the nncf package: `make setup` installs it "
                        "(requirements.lock), or pip install nncf") from None
    import openvino as ov

    out = Path(out)
    t0 = time.perf_counter()
    model = ov.Core().read_model(str(export))
    quantized = nncf.quantize(model, nncf.Dataset(inputs), subset_size=len(inputs),
                              preset=nncf.QuantizationPreset.MIXED)
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=f".{out.stem}.") as tmp:
        staged = Path(tmp) / "model.xml"
        ov.save_model(quantized, str(staged), compress_to_fp16=False)
        os.replace(staged.with_suffix(".bin"), out.with_suffix(".bin"))
        os.replace(staged, out)
    for stale in out.parent.glob("*-int8-*.xml"):  # the folder is the member's own
        if stale != out:
            for f in (stale, stale.with_suffix(".bin")):
                with contextlib.suppress(OSError):
                    f.unlink()
    log.info("quantized %s to INT8 on %d calibration crops in %.1f s: %s", export, len(inputs),
             time.perf_counter() - t0, out)
    return out
