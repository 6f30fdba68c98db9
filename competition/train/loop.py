"""The training loop: :func:`train_one_epoch`, :func:`evaluate` and :func:`fit`.

``fit`` trains one member into its folder (see :mod:`competition.train.members` for the
layout), resuming from ``last.pt`` and skipping finished members. ``best.pt`` is chosen by
the competition score on the whole, un-augmented validation images (default
post-processing), not by the loss. The validation loss is computed on the same whole-image
forward pass (no extra cost).
"""

from __future__ import annotations

import csv
import functools
import io
import json
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from competition import cpu_model, git_commit, source_hash
from competition.csvio import atomic_write
from competition.errors import UserError
from competition.train import distributed as ddp
from competition.train.dataset import CropDataset, EpochSampler, TrainImage, steps_per_epoch, worker_init
from competition.train.losses import MaskedLoss
from competition.network import (
    autocast_for,
    build_network,
    compute_precision,
    cudnn_autotune,
    load_encoder_weights,
    set_encoder_frozen,
    unwrap,
    uses_channels_last,
)
from competition.predict.preprocess import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    LIGHT_BACKGROUND_THRESHOLD,
    is_dark_on_light,
)
from competition.train.recipe import MEMBER_TYPES, REFIT_FOLD, Member

log = logging.getLogger(__name__)

IMAGE_TYPES = MEMBER_TYPES[1:]
#: oof.npz stores probabilities as uint8: probs = stored / OOF_SCALE.
OOF_SCALE = 255.0
LOG_COLUMNS = ["epoch", "train_loss", "valid_loss", "valid_score",
               *(f"score_{t}" for t in IMAGE_TYPES), "lr", "seconds"]


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the member was stopped, checkpoints kept."""


# ----------------------------------------------------------------------------- optimiser


def build_optimizer(member: Member, params) -> torch.optim.Optimizer:
    """SGD (momentum, nesterov off) or AdamW at ``member.lr``."""
    builders: dict[str, Callable] = {
        "sgd": lambda: torch.optim.SGD(params, lr=member.lr, momentum=member.momentum,
                                       weight_decay=member.weight_decay),
        "adamw": lambda: torch.optim.AdamW(params, lr=member.lr,
                                           weight_decay=member.weight_decay),
    }
    return builders[member.optimizer]()


def _cyclic(m: Member, opt, total: int):
    # The tutorial's triangle: base (min_lr) -> max (lr) at mid-training -> base.
    up = max(total // 2, 1)
    return torch.optim.lr_scheduler.CyclicLR(
        opt, base_lr=m.min_lr, max_lr=m.lr, step_size_up=up, step_size_down=max(total - up, 1),
        cycle_momentum=False)


def _onecycle(m: Member, opt, total: int):
    return torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=m.lr, total_steps=max(total, 2),
                                               cycle_momentum=m.optimizer == "sgd")


def _cosine(m: Member, opt, total: int):
    return torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(total, 1), eta_min=m.min_lr)


def _constant(m: Member, opt, total: int):
    return torch.optim.lr_scheduler.ConstantLR(opt, factor=1.0, total_iters=0)


#: recipe ``schedule`` -> builder(member, optimizer, total_steps); stepped once per batch.
SCHEDULERS: dict[str, Callable] = {"cyclic": _cyclic, "onecycle": _onecycle,
                                   "cosine": _cosine, "constant": _constant}


def build_scheduler(member: Member, optimizer, total_steps: int):
    """The member's schedule over ``total_steps`` optimiser steps (stepped per batch)."""
    return SCHEDULERS[member.schedule](member, optimizer, total_steps)


def schedule_lrs(member: Member, total_steps: int) -> list[float]:
    """The learning rate at each of ``total_steps`` steps (simulated on a dummy parameter)."""
    p = nn.Parameter(torch.zeros(1))
    opt = build_optimizer(member, [p])
    sched = build_scheduler(member, opt, total_steps)
    lrs = []
    for _ in range(total_steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return lrs


# ----------------------------------------------------------------------------- epochs


def _progress(iterable, total: int, desc: str, enabled: bool = True):
    from tqdm import tqdm

    return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True,
                disable=not (enabled and sys.stderr.isatty()))


def train_one_epoch(
    model: nn.Module,
    loader,
    optimizer: torch.optim.Optimizer,
    scheduler,
    loss_fn: Callable,
    device: torch.device,
    scaler: torch.amp.GradScaler,
    *,
    grad_clip: float = 0.0,
    precision: str = "auto",
    info: ddp.DistInfo = ddp.DistInfo(),
    desc: str = "train",
) -> float:
    """One pass over ``loader``; the scheduler is stepped after every optimizer step (not after
    one that float16 loss scaling skipped for an overflow: the schedule stays on the steps taken).

    Args:
        model: in train mode here (DDP-wrapped under torchrun).
        loader: yields ``(x, targets, mask)`` batches (see :class:`CropDataset`).
        optimizer, scheduler, loss_fn, scaler: as built by :func:`fit`.
        device: where the batches go.
        grad_clip: gradient-norm clip; 0 disables.
        precision: the member's ``precision`` (see
            :func:`competition.network.autocast_for`); the loss is float32.
        info: DDP rank info (the loss check is agreed across ranks).

    Returns:
        mean training loss over the epoch's batches (averaged over ranks).

    Raises:
        TrainingDiverged: a non-finite loss (the optimiser step is not taken).
    """
    model.train()
    cuda = device.type == "cuda"
    total, n, skipped = 0.0, 0, 0
    bar = _progress(loader, len(loader), desc, info.is_main)
    for step, (x, targets, mask) in enumerate(bar):
        x = x.to(device, non_blocking=cuda)
        targets = targets.to(device, non_blocking=cuda)
        mask = mask.to(device, non_blocking=cuda)
        if uses_channels_last(device, precision):
            x = x.contiguous(memory_format=torch.channels_last)
        optimizer.zero_grad(set_to_none=True)
        with autocast_for(device, precision):
            logits = model(x)
        loss = loss_fn(logits.float(), targets, mask)
        finite = bool(torch.isfinite(loss).item())
        if not ddp.all_true(finite, info, device):
            raise TrainingDiverged(f"loss became {loss.item()} at step {step + 1} of {len(loader)}")
        scaler.scale(loss).backward()
        if grad_clip > 0:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        scale = scaler.get_scale() if scaler.is_enabled() else 0.0
        scaler.step(optimizer)
        scaler.update()
        if scaler.get_scale() >= scale:  # the scaler lowers its scale when float16 overflowed and it skipped the step
            scheduler.step()
        else:
            skipped += 1
        total += float(loss.item())
        n += 1
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{total / n:.4f}", refresh=False)
    if skipped and info.is_main:
        log.info("%s: %d of %d optimizer steps skipped by float16 loss scaling (overflow); the learning-rate "
                 "schedule waited for them", desc, skipped, n)
    return ddp.mean_over_ranks(total / max(n, 1), info, device)


@dataclass
class EvalResult:
    """Validation of one member on whole images.

    Attributes:
        loss: mean whole-image loss (nan without a loss function or images).
        score: competition score, mean over images (nan without images).
        by_type: image type -> mean score.
        image_scores: image_id -> score.
        probs: image_id -> C×H×W uint8 quantised probabilities (when kept).
    """

    loss: float
    score: float
    by_type: dict[str, float]
    image_scores: dict[str, float] = field(default_factory=dict)
    probs: dict[str, np.ndarray] = field(default_factory=dict)


def evaluate(
    model: nn.Module,
    samples: Sequence[TrainImage],
    config: Mapping[str, Any],
    device: torch.device,
    *,
    loss_fn: Callable | None = None,
    keep_probs: bool = False,
    desc: str = "valid",
) -> EvalResult:
    """Score whole un-augmented images: the prediction path of submit
    (:func:`competition.predict.members.predict_scaled`, no TTA, at the true nucleus size),
    default watershed, competition metric.

    Args:
        model: the network.
        samples: validation images (with labels and types).
        config: the member's resolved config (``channels``, ``invert``, normalisation).
        device: where to run.
        loss_fn: when given, also the mean loss over whole images (targets from
            ``make_targets`` with the config's widths, no mask).
        keep_probs: return the uint8-quantised probabilities (for ``oof.npz``).

    Returns:
        :class:`EvalResult`.
    """
    from competition.metric import score_images
    from competition.postprocess import watershed_instances
    from competition.targets import make_targets

    from competition.predict.members import LoadedMember, predict_scaled
    from competition.scale import label_scale

    channels = tuple(config["channels"])
    member = config.get("member", {})
    loaded = LoadedMember(str(member.get("type", "")) + "/" + str(member.get("name", "")),
                          Path("."), unwrap(model), dict(config))
    losses, pairs, probs_out = [], [], {}
    target = loaded.nucleus_diameter
    with cudnn_autotune(False):  # whole images: a new shape nearly every time
        for s in _progress(samples, len(samples), desc):
            # the prediction path of submit, at the true nucleus size (see competition.scale)
            scale = label_scale(s.label, target) if target > 0 else 1.0
            probs = predict_scaled(loaded, s.image, scale, tta="none", device=device)
            if loss_fn is not None:
                targets = make_targets(s.label, channels,
                                       boundary_width=member.get("boundary_width", 2),
                                       gap_width=member.get("gap_width", 2))
                t = torch.from_numpy(targets)[None].to(device)
                logits = torch.logit(torch.from_numpy(probs)[None].to(device), eps=1e-6)
                with torch.inference_mode():
                    losses.append(float(loss_fn(logits, t, torch.ones_like(t[:, :1]))))
            pred = watershed_instances(probs, channels=channels)
            pairs.append((s.image_id, s.label, pred))
            if keep_probs:
                probs_out[s.image_id] = np.round(probs * OOF_SCALE).astype(np.uint8)
    if not pairs:
        return EvalResult(math.nan, math.nan, {})
    result = score_images(pairs)
    types = {s.image_id: s.type for s in samples}
    return EvalResult(
        loss=float(np.mean(losses)) if losses else math.nan,
        score=float(result.score),
        by_type={k: float(v) for k, v in result.by_group(types).items()},
        image_scores={im.image_id: float(im.score) for im in result.images},
        probs=probs_out,
    )


# ----------------------------------------------------------------------------- files


def _json_safe(obj):
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_json(path: Path, obj) -> None:
    """Atomic, NaN-free (null) JSON."""
    with atomic_write(path) as fh:
        json.dump(_json_safe(obj), fh, indent=2, allow_nan=False)
        fh.write("\n")


def save_torch(path: Path, obj) -> None:
    """Atomic ``torch.save``."""
    with atomic_write(path, mode="wb") as fh:
        torch.save(obj, fh)


def write_log(path: Path, rows: Sequence[dict]) -> None:
    """``log.csv``: one row per epoch, columns :data:`LOG_COLUMNS`."""
    with atomic_write(path) as fh:
        w = csv.DictWriter(fh, fieldnames=LOG_COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v)
                        for k, v in r.items()})


def write_oof(path: Path, result: EvalResult, samples: Sequence[TrainImage],
              channels: Sequence[str], epoch: int) -> None:
    """``oof.npz``: out-of-fold probabilities of the best epoch.

    Keys: ``ids`` (str), ``types`` (str), ``channels`` (str), ``scale`` (255.0), ``epoch``,
    and ``p_<image_id>``: C×H×W uint8; probabilities are ``p / scale``.
    """
    ids = [s.image_id for s in samples if s.image_id in result.probs]
    arrays = {
        "ids": np.array(ids), "types": np.array([s.type for s in samples if s.image_id in result.probs]),
        "channels": np.array(list(channels)), "scale": np.array(OOF_SCALE),
        "epoch": np.array(epoch),
    }
    arrays.update({f"p_{i}": result.probs[i] for i in ids})
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    with atomic_write(path, mode="wb") as fh:
        fh.write(buf.getvalue())


# ----------------------------------------------------------------------------- fit


def average_weights(state: Mapping[str, torch.Tensor], parent: Mapping[str, torch.Tensor],
                    parent_share: float) -> dict[str, torch.Tensor]:
    """``(1 - parent_share) * state + parent_share * parent``, tensor by tensor, for the
    floating-point tensors (weights, biases, batch-norm statistics); the others (batch-norm
    step counters) are ``state``'s.

    Raises:
        UserError: the two do not hold the same tensors (names and shapes).
    """
    if state.keys() != parent.keys() or any(state[k].shape != parent[k].shape for k in state):
        raise UserError("cannot average a member's weights with its init_from parent's: the networks differ")
    return {k: (torch.lerp(v.float(), parent[k].to(v.device).float(), parent_share).to(v.dtype)
                if v.is_floating_point() else v)
            for k, v in state.items()}


def resolve_invert(member: Member, train: Sequence[TrainImage], parent_config: Mapping | None
                   ) -> tuple[bool, str]:
    """The member's invert decision and why (recorded in ``config.json``)."""
    if parent_config is not None:
        if member.invert != "auto" and bool(member.invert) != bool(parent_config["invert"]):
            raise UserError(f"member {member.key}: invert = {member.invert} but its init_from "
                            f"parent was trained with invert = {parent_config['invert']}")
        return bool(parent_config["invert"]), "inherited from init_from parent"
    if member.invert != "auto":
        return bool(member.invert), "set in the recipe"
    n_light = sum(is_dark_on_light(s.image) for s in train)
    mixed = 0 < n_light < len(train)
    return mixed, (f"auto: {n_light} of {len(train)} training images are dark-on-light "
                   f"(median grey > {LIGHT_BACKGROUND_THRESHOLD:g}); invert "
                   f"{'them: polarities mixed' if mixed else 'nothing: one polarity'}")


def split_member_data(member: Member, data: Sequence[TrainImage]
                      ) -> tuple[list[TrainImage], list[TrainImage]]:
    """(training, validation) images of a member: its type (all for ``all``), fold held out."""
    mine = [s for s in data if member.type == "all" or s.type == member.type]
    return [s for s in mine if s.fold != member.fold], [s for s in mine if s.fold == member.fold]


def same_member(old: Mapping | None, new: Mapping) -> bool:
    """The member config of a run to resume matches: keys added to :class:`Member` since the
    old run count as equal when the new config leaves them at their default."""
    if old is None:
        return False
    defaults = member_json(Member(type=str(new.get("type", "all")), name=str(new.get("name", "x"))))
    filled = {**{k: v for k, v in new.items() if k not in old and v == defaults.get(k)}, **old}
    return filled == dict(new)


def member_json(member: Member) -> dict:
    return json.loads(json.dumps(member.to_dict()))


def _epoch_row(epoch, train_loss, ev: EvalResult | None, lr, seconds) -> dict:
    row = {"epoch": epoch, "train_loss": train_loss,
           "valid_loss": ev.loss if ev else math.nan,
           "valid_score": ev.score if ev else math.nan, "lr": lr, "seconds": round(seconds, 1)}
    for t in IMAGE_TYPES:
        row[f"score_{t}"] = ev.by_type.get(t, math.nan) if ev else math.nan
    return row


def _format_row(row: dict, best: bool) -> str:
    def f(v, spec):
        return " " * len(format(0.0, spec)) if isinstance(v, float) and math.isnan(v) else format(v, spec)

    return (f"{row['epoch']:>5d}  {f(row['train_loss'], '10.4f')}  {f(row['valid_loss'], '10.4f')}  "
            f"{f(row['valid_score'], '11.4f')}{'+' if best else ' '}  {row['lr']:9.2e}  "
            f"{row['seconds']:7.1f}")


TABLE_HEADER = "epoch  train_loss  valid_loss  valid_score   lr          dur"


def _fit(
    member: Member,
    data: Sequence[TrainImage],
    out_dir: str | Path,
    device: torch.device | str = "cpu",
    *,
    channels: Sequence[str] = ("body", "boundary", "gap"),
    recipe_name: str = "",
    data_dir: str = "",
    folds_path: str = "",
    init_dir: str | Path | None = None,
    stop_after: int | None = None,
    info: ddp.DistInfo = ddp.DistInfo(),
    loss_fn: Callable | None = None,
    records: Mapping | None = None,
) -> dict | None:
    """Train one member into ``out_dir``, resuming from ``last.pt``; skip it when done.

    Args:
        member: the recipe member.
        data: every training image (with type and fold); the member takes its type and
            holds out ``member.fold``.
        out_dir: the member folder (``models/<recipe>/<type>/<name>``).
        device: torch device.
        channels: output/target channels.
        recipe_name, data_dir, folds_path: recorded in ``config.json``.
        init_dir: the ``init_from`` parent's folder (its ``best.pt`` and ``config.json``).
        stop_after: stop once this many epochs are done (the schedule still spans
            ``member.epochs``, so a later run resumes exactly); the member is not marked done.
        info: DDP rank info; only rank 0 validates and writes.
        loss_fn: override the loss (tests); default :class:`MaskedLoss`.
        records: more top-level ``config.json`` fields that say what the member trained on
            (``competition adapt``: its pseudo-labels); a run to resume must have the same.

    Returns:
        the ``metrics.json`` dict, or None when the member had no training images.

    Raises:
        TrainingDiverged: NaN/inf loss (``last.pt``/``best.pt`` keep the last good epoch).
        UserError: the folder was started with a different config, or a bad init_from.
    """
    out_dir = Path(out_dir)
    device = torch.device(device)
    channels = tuple(channels)
    if records and (out_dir / "config.json").is_file():
        old = json.loads((out_dir / "config.json").read_text())
        changed = sorted(k for k in records if old.get(k) != json.loads(json.dumps(records[k])))
        if changed:
            raise UserError(f"{out_dir}: trained with other {', '.join(changed)} ({old.get(changed[0])}); "
                            "delete the folder to train again with these")
    if (out_dir / "done").is_file():
        log.info("%s: finished earlier (%s/done); skipped", member.key, out_dir)
        return json.loads((out_dir / "metrics.json").read_text())
    train, valid = split_member_data(member, data)
    if not train:
        log.warning("%s: no training images of type %r (fold %d held out); member skipped",
                    member.key, member.type, member.fold)
        return None
    if not valid and member.fold == REFIT_FOLD:
        log.info("%s: a refit on every %s image (no fold held out): no validation; best.pt = "
                 "last epoch", member.key, "training" if member.type == "all" else member.type)
    elif not valid:
        log.warning("%s: fold %d holds no %s images: no validation; best.pt = last epoch",
                    member.key, member.fold, member.type)

    parent_config = None
    if member.init_from:
        init_dir = Path(init_dir) if init_dir else None
        if init_dir is None or not (init_dir / "best.pt").is_file():
            raise UserError(f"{member.key}: init_from {member.init_from} has no best.pt "
                            f"(in {init_dir}); train it first")
        parent_config = json.loads((init_dir / "config.json").read_text())
        if not (init_dir / "done").is_file():
            log.warning("%s: init_from %s is not finished; using its current best.pt",
                        member.key, member.init_from)
    invert, invert_reason = resolve_invert(member, train, parent_config)

    n_per_epoch = member.samples_per_epoch or len(train)
    steps = steps_per_epoch(n_per_epoch, member.batch_size, info.world)
    total_steps = steps * member.epochs
    config = {
        "recipe": recipe_name, "key": member.key, "type": member.type, "name": member.name,
        "arch": member.arch, "encoder": member.encoder, "channels": list(channels),
        "mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD), "stride": 32,
        "invert": invert, "invert_reason": invert_reason,
        "light_background_threshold": LIGHT_BACKGROUND_THRESHOLD,
        "fold": member.fold, "data_dir": str(data_dir), "folds_file": str(folds_path),
        "n_train": len(train), "n_valid": len(valid),
        "train_types": sorted({s.type for s in train}),
        "samples_per_epoch": n_per_epoch, "steps_per_epoch": steps, "total_steps": total_steps,
        "world_size": info.world, "device": device.type,
        "init_from": member.init_from, "member": member_json(member),
        "git_commit": git_commit(), "code_hash": source_hash(), "torch": torch.__version__,
        "torch_threads": torch.get_num_threads() if device.type == "cpu" else None,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_model": cpu_model() if device.type == "cpu" else None,
        # What the member's precision computes in here (bf16 -> fp32 on a CPU without
        # bfloat16 hardware, see competition.network.compute_precision).
        "compute_precision": compute_precision(device, member.precision),
        "valid_loss": "whole validation images, no mask, same forward pass as the score",
        **(records or {}),
    }
    if (out_dir / "config.json").is_file() and (out_dir / "last.pt").is_file():
        old = json.loads((out_dir / "config.json").read_text())
        if not same_member(old.get("member"), config["member"]) or old.get("channels") != config["channels"]:
            raise UserError(f"{out_dir}: started with a different member config; delete the "
                            "folder to retrain, or restore the recipe")
        if old.get("compute_precision", config["compute_precision"]) != config["compute_precision"]:
            log.warning("%s: started in %s, resumed in %s on this machine: the weights will not "
                        "reproduce a run made in one precision", member.key,
                        old["compute_precision"], config["compute_precision"])

    torch.manual_seed(member.seed)
    model = build_network(member.arch, member.encoder, len(channels), member.decoder_channels)
    resume = (out_dir / "last.pt").is_file()
    parent_state, scored_model = None, None
    if parent_config is not None:
        best = torch.load(init_dir / "best.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(best["model"])
        config["encoder_weights_loaded"] = f"init_from {member.init_from} (epoch {best['epoch']})"
        if member.average_with_init:
            parent_state = best["model"]
            config["averaged_with_init"] = (
                f"best.pt (validated, predicted with) = {1 - member.average_with_init:g} x this member's "
                f"weights + {member.average_with_init:g} x init_from {member.init_from}'s (epoch {best['epoch']}); "
                "last.pt holds the training weights")
    elif not resume:
        config["encoder_weights_loaded"] = load_encoder_weights(model, member)
    else:
        config["encoder_weights_loaded"] = json.loads(
            (out_dir / "config.json").read_text()).get("encoder_weights_loaded", "?")
    model.to(device)
    if uses_channels_last(device, member.precision):
        model.to(memory_format=torch.channels_last)
    if parent_state is not None and info.is_main and valid:
        # the averaged network that is validated (the trained one keeps training)
        scored_model = build_network(member.arch, member.encoder, len(channels), member.decoder_channels)
        scored_model.to(device)
        if uses_channels_last(device, member.precision):
            scored_model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(member, model.parameters())
    scheduler = build_scheduler(member, optimizer, total_steps)
    # Loss scaling is for float16 only (bfloat16 has float32's exponent range).
    scaler = torch.amp.GradScaler(device.type, enabled=device.type == "cuda"
                                  and member.precision == "auto")
    loss_fn = loss_fn or MaskedLoss(member.loss).to(device)

    start, best_score, best_epoch, history = 0, -math.inf, 0, []
    if resume:
        ck = torch.load(out_dir / "last.pt", map_location=device, weights_only=True)
        model.load_state_dict(ck["model"])
        optimizer.load_state_dict(ck["optimizer"])
        scheduler.load_state_dict(ck["scheduler"])
        scaler.load_state_dict(ck["scaler"])
        start, best_score, best_epoch = ck["epoch"], ck["best_score"], ck["best_epoch"]
        history = list(ck["history"])
        kept = (f"best score {best_score:.4f} at epoch {best_epoch}" if valid
                else f"no validation, best.pt is epoch {best_epoch}")
        log.info("%s: resuming after epoch %d of %d (%s)", member.key, start, member.epochs, kept)
    if info.is_main:
        write_json(out_dir / "config.json", config)
        from competition.train.plots import plot_lr

        plot_lr(schedule_lrs(member, total_steps), steps, out_dir / "lr.png",
                title=f"{member.key}: {member.schedule}")
    ddp.barrier(info)

    net = ddp.wrap(model, info, device, find_unused=member.freeze_encoder_epochs > 0)
    dataset = CropDataset(train, member, channels, invert, n_per_epoch)
    end = member.epochs if stop_after is None else min(member.epochs, stop_after)
    if start < end and info.is_main:
        log.info("%s: %d train / %d valid images (fold %d), %d crops of %d+2x%d px per epoch, "
                 "%d steps of %d, invert=%s", member.key, len(train), len(valid), member.fold,
                 n_per_epoch, member.crop_size, member.pad, steps, member.batch_size, invert)
        log.info("%s: %s", member.key, TABLE_HEADER)
    for epoch in range(start, end):
        t0 = time.perf_counter()
        torch.manual_seed(member.seed * 1_000_003 + epoch)  # dropout etc.: exact on resume
        set_encoder_frozen(unwrap(net), epoch < member.freeze_encoder_epochs)
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=member.batch_size,
            sampler=EpochSampler(n_per_epoch, epoch, member.batch_size, info.rank, info.world),
            num_workers=member.num_workers, drop_last=True, worker_init_fn=worker_init,
            generator=torch.Generator().manual_seed(member.seed), pin_memory=device.type == "cuda")
        try:
            train_loss = train_one_epoch(net, loader, optimizer, scheduler, loss_fn, device, scaler,
                                         grad_clip=member.grad_clip,
                                         precision=member.precision, info=info,
                                         desc=f"{member.key} {epoch + 1}/{member.epochs}")
        except TrainingDiverged as exc:
            kept = (f"last.pt keeps epoch {epoch}, the last good one, and best.pt the best "
                    f"so far, in {out_dir}" if epoch else "no checkpoint was written")
            raise TrainingDiverged(
                f"{member.key}: {exc} in epoch {epoch + 1}; member stopped ({kept}). Lower lr, "
                "set grad_clip, or check the data") from None
        lr = optimizer.param_groups[0]["lr"]
        # Also validate where this run stops (--max-epochs): it leaves a usable best.pt.
        validate = (epoch + 1) % member.valid_every == 0 or epoch + 1 in (member.epochs, end)
        ev, improved = None, False
        if info.is_main:
            state = {k: v.detach().cpu() for k, v in unwrap(net).state_dict().items()}
            # what is validated and saved as best.pt: the weights, or their average with the parent's
            scored = (average_weights(state, parent_state, member.average_with_init)
                      if validate and parent_state is not None else state)
            if validate and valid:
                if scored_model is not None:
                    scored_model.load_state_dict(scored)
                ev = evaluate(net if scored_model is None else scored_model, valid, config, device,
                              loss_fn=loss_fn, keep_probs=True, desc=f"{member.key} valid")
                improved = ev.score > best_score
            elif validate and not valid:
                improved = True  # nothing to validate on: keep the latest weights
            if improved:
                best_score = ev.score if ev else math.nan
                best_epoch = epoch + 1
                save_torch(out_dir / "best.pt", {"model": scored, "epoch": epoch + 1,
                                                 "score": best_score})
                if ev is not None:
                    write_oof(out_dir / "oof.npz", ev, valid, channels, epoch + 1)
            row = _epoch_row(epoch + 1, train_loss, ev, lr, time.perf_counter() - t0)
            history.append(row)
            save_torch(out_dir / "last.pt", {
                "model": state, "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                "epoch": epoch + 1, "best_score": best_score, "best_epoch": best_epoch,
                "history": history})
            write_log(out_dir / "log.csv", history)
            _write_metrics(out_dir, member, history, best_score, best_epoch, finished=False)
            from competition.train.plots import plot_curves

            plot_curves(history, out_dir / "curves.png", title=member.key)
            log.info("%s: %s", member.key, _format_row(row, improved and ev is not None))
        ddp.barrier(info)
    done = end >= member.epochs
    metrics = {"key": member.key, "finished": done}  # other ranks: outcome only
    if info.is_main:
        metrics = _write_metrics(out_dir, member, history, best_score, best_epoch, finished=done)
        if done:
            with atomic_write(out_dir / "done") as fh:
                fh.write(f"{member.key} finished {len(history)} epochs\n")
            if valid:
                log.info("%s: done; best score %.4f at epoch %d", member.key, best_score, best_epoch)
            else:
                log.info("%s: done; no validation, best.pt is epoch %d", member.key, best_epoch)
        else:
            log.info("%s: stopped after epoch %d of %d (resumable)", member.key, len(history),
                     member.epochs)
    ddp.barrier(info)
    return metrics



@functools.wraps(_fit)
def fit(member: Member, data, out_dir, device: torch.device | str = "cpu", **kwargs):
    threads = member.threads if torch.device(device).type == "cpu" else 0
    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
        log.info("%s: %d CPU thread(s), as the recipe pins", member.key, threads)
    try:
        return _fit(member, data, out_dir, device, **kwargs)
    finally:
        if threads:
            torch.set_num_threads(before)


def _write_metrics(out_dir: Path, member: Member, history: list[dict], best_score: float,
                   best_epoch: int, *, finished: bool) -> dict:
    best_row = next((r for r in history if r["epoch"] == best_epoch), {})
    metrics = {
        "key": member.key, "best_epoch": best_epoch, "best_score": best_score,
        "best_by_type": {t: best_row.get(f"score_{t}") for t in IMAGE_TYPES
                         if not math.isnan(best_row.get(f"score_{t}", math.nan))},
        "best_valid_loss": best_row.get("valid_loss"),
        "epochs_done": len(history), "epochs": member.epochs, "finished": finished,
        "train_seconds": round(sum(r["seconds"] for r in history), 1),
    }
    write_json(out_dir / "metrics.json", metrics)
    return _json_safe(metrics)
