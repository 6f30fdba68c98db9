"""Training recipes: strict TOML files loaded into frozen dataclasses.

A recipe (``recipes/<name>.toml``) lists, per image type plus the ``all`` pseudo-type, the
members of that type's ensemble. A ``[defaults]`` table is merged into every member (nested
``[defaults.loss]`` too), so members only state what differs::

    description = "..."
    [defaults]
    encoder = "resnet18"
    crop_size = 128
    [defaults.loss]
    soft = "jaccard"

    [[all]]
    name = "r18"
    epochs = 12

    [[histology]]
    name = "r18-ft"
    init_from = "all/r18"

A member table may give ``folds = [0, 1, 2]`` instead of ``fold``: it expands into one
member per fold, named ``<name>-f<k>``; an ``init_from`` naming such a family picks the
parent of the same fold (fine-tuning from a parent trained on another fold would leak its
validation images).

A recipe may start from another, ``extends = "cpu"`` (a shipped name, or a path relative to
its own folder), and state only what differs: its ``[defaults]`` (and ``[defaults.loss]``)
keys override the base's one by one, and a member list it gives replaces the base's.

Unknown keys, architectures or encoders raise :class:`~competition.errors.UserError` with
the valid names. This module imports torch/smp only to check arch and encoder names.
"""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from competition.errors import UserError, check_keys
from competition.predict.preprocess import INPUT_NORMS

log = logging.getLogger(__name__)

#: Recipe tables holding members: the ``all`` pseudo-type, then the image types of
#: :data:`competition.data.types.IMAGE_TYPES`.
MEMBER_TYPES = ("all", "fluorescence", "histology", "brightfield")
#: Output channels (same as :data:`competition.targets.CHANNELS`).
DEFAULT_CHANNELS = ("body", "boundary", "gap")
#: Where ``--recipe NAME`` is looked up.
RECIPES_DIR = Path(__file__).resolve().parents[2] / "recipes"

#: ``fold`` of a member trained on every image (no fold held out, no validation).
REFIT_FOLD = -1
ENCODER_WEIGHTS = ("none", "imagenet", "imagenet-offline")  # or a local state-dict file
PRECISIONS = ("auto", "bf16", "fp32")
ON_MISSING_WEIGHTS = ("fail", "random")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cyclic", "onecycle", "cosine", "constant")
SOFT_LOSSES = ("dice", "jaccard", "none")
SAMPLINGS = ("uniform", "balanced", "sqrt")
INVERT_CHOICES = (True, False, "auto")


@dataclass(frozen=True)
class LossConfig:
    """Loss weights: ``bce * BCE + soft_weight * soft`` over channels, pad border ignored.

    Attributes:
        bce: weight of the per-pixel binary cross-entropy.
        soft: ``"dice"``, ``"jaccard"`` or ``"none"`` (smp.losses, multilabel mode).
        soft_weight: weight of the soft term.
        log_soft: use ``-log(score)`` instead of ``1 - score`` (the pathology article's
            BCE - log(soft Jaccard)).
        channel_weights: one weight per output channel, for both terms.
    """

    bce: float = 1.0
    soft: str = "dice"
    soft_weight: float = 1.0
    log_soft: bool = False
    channel_weights: tuple[float, ...] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class Member:
    """One ensemble member: a network trained on one image type (or ``all``) and one fold.

    Attributes:
        type: the recipe table (``all`` or an image type); set from the table, not a key.
        name: unique within its type; the folder is ``models/<recipe>/<type>/<name>``.
        arch: smp architecture (``Unet``, ``UnetPlusPlus``, ``FPN``, ...).
        encoder: smp encoder name (``resnet18``, ``efficientnet-b0``, ...).
        decoder_channels: the decoder blocks' widths, deepest first (one per encoder
            stage: 5 ints), for architectures that take them (``Unet``, ``UnetPlusPlus``,
            ``MAnet``); empty = smp's default (256, 128, 64, 32, 16). Narrower blocks make
            a light encoder's UNet much cheaper to run (issue 11).
        encoder_weights: ``"none"``, ``"imagenet"`` (needs internet), ``"imagenet-offline"``
            (ImageNet weights from an installed registry package: the
            ``timm-tf_efficientnet_lite0..2`` encoders) or a local file path.
        on_missing_weights: when imagenet weights cannot be had: ``"fail"`` or ``"random"``.
        crop_size: side of the random training crops (loss region).
        pad: reflection padding around each crop, ignored by the loss;
            ``crop_size + 2 * pad`` must be a multiple of 32.
        batch_size: crops per optimiser step (per process under DDP).
        epochs: training epochs (the schedule spans all of them).
        samples_per_epoch: random crops per epoch; 0 means one per training image.
        sampling: ``"uniform"`` over images, ``"balanced"`` over image types or ``"sqrt"``
            (a type's share proportional to the square root of its image count).
        optimizer: ``"sgd"`` (with ``momentum``) or ``"adamw"``.
        lr: peak learning rate.
        min_lr: floor of the schedule (cyclic base lr, cosine eta_min).
        momentum: SGD momentum.
        weight_decay: optimiser weight decay.
        schedule: ``"cyclic"`` (triangle peaking mid-training), ``"onecycle"``,
            ``"cosine"`` or ``"constant"``; stepped once per batch.
        freeze_encoder_epochs: encoder frozen for the first N epochs.
        loss: see :class:`LossConfig`.
        augment: a strength of :data:`competition.train.augment.PIPELINES` (its keys are the
            valid names).
        fold: validation fold (images of this fold are held out); ``-1``: none held out, a
            refit on every image (no validation: ``best.pt`` is the last epoch), as
            ``competition refit`` trains the members a tuned ensemble kept.
        seed: seeds weights init, crop sampling and augmentation.
        init_from: ``"all/<name>"``: start from that member's ``best.pt``.
        average_with_init: with ``init_from``: the member's weights are averaged with the
            parent's, this share the parent's (``0.5``: the midpoint), wherever they are
            validated and saved as ``best.pt`` ("WiSE-FT", Wortsman et al. 2022: a fine-tune
            interpolated with its start keeps the start's robustness to unseen conditions at
            one network's cost); training itself (``last.pt``) is not averaged. 0 = none.
        invert: invert dark-on-light images before the network: true, false or ``"auto"``
            (inherit from ``init_from``, else true when the training images mix both
            polarities); the decision is recorded in ``config.json``.
        input_norm: what every image goes through before the network, in training and
            prediction alike (:func:`competition.predict.preprocess.equalise_input`):
            ``"imagenet"`` (as it is), ``"stretch"`` (per-image robust intensity stretch,
            colours kept) or ``"gray"`` (stretched grey level in all three channels).
        boundary_width: passed to :func:`competition.targets.make_targets`.
        gap_width: passed to :func:`competition.targets.make_targets`.
        valid_every: validate every N epochs (and always after the last).
        num_workers: DataLoader workers (0 = in the training process).
        grad_clip: clip the gradient norm to this value; 0 disables.
        nucleus_diameter: 0 = native scale; else every image is resized so its median
            nucleus is this many pixels across (see :mod:`competition.scale`): in training
            from the labels, at prediction from a first pass.
        scale_jitter: with ``nucleus_diameter``: each training crop's scale is also
            multiplied by a log-uniform factor in [1/scale_jitter, scale_jitter].
        precision: ``"auto"`` (float16 autocast on CUDA, float32 on the CPU), ``"bf16"``
            (bfloat16 autocast and channels_last, training and prediction) or ``"fp32"``.
        copy_paste: probability that a training crop gets copies of its own nuclei pasted
            into it, some touching others (:func:`competition.train.augment.paste_nuclei`);
            0 disables (and draws nothing, so other settings' crops are unchanged).
        threads: CPU threads torch trains this member with (0: the machine's, or
            ``--threads``). The CPU kernels split their sums by thread, so the same recipe,
            seed and data give the same weights only at the same thread count (measured
            here: bit-identical for a fixed count; 1 against 2 threads differ in the first
            step's loss in the 4th digit): a recipe that must reproduce pins it.
    """

    type: str
    name: str
    arch: str = "Unet"
    encoder: str = "resnet18"
    decoder_channels: tuple[int, ...] = ()
    encoder_weights: str = "none"
    on_missing_weights: str = "fail"
    crop_size: int = 256
    pad: int = 16
    batch_size: int = 8
    epochs: int = 10
    samples_per_epoch: int = 0
    sampling: str = "uniform"
    optimizer: str = "adamw"
    lr: float = 1e-3
    min_lr: float = 0.0
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: str = "cosine"
    freeze_encoder_epochs: int = 0
    loss: LossConfig = field(default_factory=LossConfig)
    augment: str = "light"
    fold: int = 0
    seed: int = 0
    init_from: str | None = None
    average_with_init: float = 0.0
    invert: bool | str = "auto"
    input_norm: str = "imagenet"
    boundary_width: int = 2
    gap_width: int = 2
    valid_every: int = 1
    num_workers: int = 0
    grad_clip: float = 0.0
    nucleus_diameter: float = 0.0
    scale_jitter: float = 1.0
    precision: str = "auto"
    copy_paste: float = 0.0
    threads: int = 0

    @property
    def key(self) -> str:
        """``"<type>/<name>"``, as used by ``init_from`` and ``--member``."""
        return f"{self.type}/{self.name}"

    @property
    def input_size(self) -> int:
        """Side of the network input during training: ``crop_size + 2 * pad``."""
        return self.crop_size + 2 * self.pad

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict (tuples become lists)."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Recipe:
    """A parsed, validated recipe.

    Attributes:
        name: the file stem (``tiny``, ``cpu``, ``gpu``): models go to ``models/<name>/``.
        path: the TOML file.
        description: free text.
        channels: output channels, in order.
        members: all members, parents (``init_from`` targets) before their children.
    """

    name: str
    path: str
    description: str
    channels: tuple[str, ...]
    members: tuple[Member, ...]

    def member(self, key: str) -> Member:
        """The member ``"<type>/<name>"``; UserError listing the valid keys otherwise."""
        for m in self.members:
            if m.key == key:
                return m
        raise UserError(
            f"recipe {self.name!r} has no member {key!r}; valid: "
            + ", ".join(m.key for m in self.members)
        )

    def on_fold(self, fold: int) -> Recipe:
        """The same recipe with every member validated on ``fold`` instead: its members
        trained on another condition-out fold (into another models folder), whose holdout
        calibration pools with the recipe's own (README, "A second fold"). Only a recipe
        whose members share one fold can move."""
        if fold < 0:
            raise UserError(f"--fold: a fold number >= 0, got {fold}")
        folds = sorted({m.fold for m in self.members})
        if len(folds) > 1:
            raise UserError(f"recipe {self.name!r} trains members on folds {folds}: it cannot move to fold {fold} "
                            "as a whole")
        return dataclasses.replace(self, members=tuple(dataclasses.replace(m, fold=fold) for m in self.members))


# ----------------------------------------------------------------------------- parsing


def _field_names(cls) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


def _merge(defaults: dict, table: dict) -> dict:
    """``table`` over ``defaults``; nested tables (``loss``) are merged key by key."""
    out = dict(defaults)
    for key, value in table.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = {**out[key], **value}
        else:
            out[key] = value
    return out


def _coerce(value: Any, default: Any, where: str) -> Any:
    """Check a TOML value against the type of the dataclass default; lists -> tuples."""
    if isinstance(default, bool) or default is None or isinstance(default, str):
        return value  # checked by the enumerations in _validate_member
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{where}: expected an integer, got {value!r}")
        return value
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if isinstance(default, tuple):
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{where}: expected a list, got {value!r}")
        return tuple(float(v) for v in value)
    return value


def _build_loss(table: dict, where: str) -> LossConfig:
    if not isinstance(table, dict):
        raise UserError(f"{where}.loss: expected a table, got {table!r}")
    check_keys(table, _field_names(LossConfig), f"{where}.loss")
    base = LossConfig()
    kwargs = {k: _coerce(v, getattr(base, k), f"{where}.loss.{k}") for k, v in table.items()}
    return LossConfig(**kwargs)


def _build_member(mtype: str, table: dict, where: str) -> Member:
    valid = [n for n in _field_names(Member) if n != "type"]
    check_keys(table, valid, where)
    if "name" not in table:
        raise UserError(f"{where}: every member needs a name")
    kwargs: dict[str, Any] = {"type": mtype}
    base = Member(type=mtype, name="?")
    for key, value in table.items():
        if key == "loss":
            kwargs["loss"] = _build_loss(value, where)
        elif key == "decoder_channels":
            if not isinstance(value, (list, tuple)) or not all(
                    isinstance(v, int) and not isinstance(v, bool) for v in value):
                raise UserError(f"{where}.decoder_channels: expected a list of integers, "
                                f"got {value!r}")
            kwargs[key] = tuple(value)
        elif key in ("name", "init_from"):
            if not isinstance(value, str) or not value:
                raise UserError(f"{where}.{key}: expected a non-empty string, got {value!r}")
            kwargs[key] = value
        else:
            kwargs[key] = _coerce(value, getattr(base, key), f"{where}.{key}")
    return Member(**kwargs)


def _choice(value: Any, choices: tuple, where: str) -> None:
    if not any(type(value) is type(c) and value == c for c in choices):
        raise UserError(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")


def valid_archs() -> list[str]:
    """smp architecture class names (``Unet``, ``FPN``, ...)."""
    import segmentation_models_pytorch as smp

    return sorted(a.__name__ for a in smp.MODEL_ARCHITECTURES_MAPPING.values())


def arch_takes_decoder_channels(arch: str) -> bool:
    """Whether smp's ``arch`` accepts a ``decoder_channels`` list (Unet, UnetPlusPlus, ...)."""
    import inspect

    import segmentation_models_pytorch as smp

    cls = next((a for a in smp.MODEL_ARCHITECTURES_MAPPING.values() if a.__name__ == arch), None)
    return cls is not None and "decoder_channels" in inspect.signature(cls.__init__).parameters


def valid_encoders() -> list[str]:
    """smp encoder names."""
    import segmentation_models_pytorch as smp

    return list(smp.encoders.get_encoder_names())


def _validate_member(m: Member, channels: tuple[str, ...], where: str) -> None:
    archs = valid_archs()
    if m.arch not in archs:
        raise UserError(f"{where}.arch: unknown architecture {m.arch!r}; valid: {', '.join(archs)}")
    encoders = valid_encoders()
    if m.encoder not in encoders:
        raise UserError(
            f"{where}.encoder: unknown encoder {m.encoder!r}; valid: {', '.join(encoders)}"
        )
    if not isinstance(m.encoder_weights, str) or not m.encoder_weights:
        raise UserError(f"{where}.encoder_weights: expected 'none', 'imagenet' or a file path")
    if m.encoder_weights == "imagenet-offline":
        from competition.network import OFFLINE_ENCODERS

        if m.encoder not in OFFLINE_ENCODERS:
            raise UserError(
                f"{where}.encoder_weights: 'imagenet-offline' exists for encoders "
                f"{', '.join(OFFLINE_ENCODERS)}, not {m.encoder!r}")
    _choice(m.precision, PRECISIONS, f"{where}.precision")
    _choice(m.on_missing_weights, ON_MISSING_WEIGHTS, f"{where}.on_missing_weights")
    _choice(m.optimizer, OPTIMIZERS, f"{where}.optimizer")
    _choice(m.schedule, SCHEDULES, f"{where}.schedule")
    from competition.train.augment import PIPELINES  # the one table of strengths

    _choice(m.augment, tuple(PIPELINES), f"{where}.augment")
    _choice(m.sampling, SAMPLINGS, f"{where}.sampling")
    _choice(m.invert, INVERT_CHOICES, f"{where}.invert")
    _choice(m.input_norm, INPUT_NORMS, f"{where}.input_norm")
    _choice(m.loss.soft, SOFT_LOSSES, f"{where}.loss.soft")
    if not isinstance(m.loss.log_soft, bool):
        raise UserError(f"{where}.loss.log_soft: expected true or false")
    if len(m.loss.channel_weights) != len(channels):
        raise UserError(
            f"{where}.loss.channel_weights: {len(m.loss.channel_weights)} weights for "
            f"{len(channels)} channels {channels}"
        )
    if m.crop_size < 32 or m.pad < 0 or (m.crop_size + 2 * m.pad) % 32:
        raise UserError(
            f"{where}: crop_size + 2 * pad = {m.crop_size + 2 * m.pad} must be a multiple "
            "of 32 (the encoder's output stride), with crop_size >= 32 and pad >= 0"
        )
    positive = ("batch_size", "epochs", "valid_every")
    for name in positive:
        if getattr(m, name) < 1:
            raise UserError(f"{where}.{name}: must be >= 1")
    nonneg = ("samples_per_epoch", "freeze_encoder_epochs", "seed", "num_workers",
              "boundary_width", "gap_width", "threads")
    for name in nonneg:
        if getattr(m, name) < 0:
            raise UserError(f"{where}.{name}: must be >= 0")
    if m.fold < REFIT_FOLD:
        raise UserError(f"{where}.fold: a fold number >= 0, or {REFIT_FOLD} for none held out "
                        "(a refit on every image)")
    if m.nucleus_diameter < 0 or (0 < m.nucleus_diameter < 4):
        raise UserError(f"{where}.nucleus_diameter: 0 (native scale) or at least 4 pixels")
    if m.decoder_channels:
        if len(m.decoder_channels) != 5 or min(m.decoder_channels) < 1:
            raise UserError(f"{where}.decoder_channels: 5 positive widths, one per encoder "
                            f"stage (deepest first), got {list(m.decoder_channels)}")
        if not arch_takes_decoder_channels(m.arch):
            raise UserError(f"{where}.decoder_channels: architecture {m.arch} has no "
                            "decoder_channels (Unet, UnetPlusPlus and MAnet do)")
    if not 0 <= m.average_with_init < 1:
        raise UserError(f"{where}.average_with_init: the parent's share of the weights, in [0, 1)")
    if m.average_with_init and not m.init_from:
        raise UserError(f"{where}.average_with_init: averages with the init_from parent; this member has none")
    if not 0 <= m.copy_paste <= 1:
        raise UserError(f"{where}.copy_paste: a probability in [0, 1]")
    if m.scale_jitter < 1:
        raise UserError(f"{where}.scale_jitter: must be >= 1 (1 = no jitter)")
    if not m.lr > 0 or m.min_lr < 0 or m.min_lr > m.lr:
        raise UserError(f"{where}: need 0 <= min_lr <= lr and lr > 0")


def _expand_folds(table: dict, where: str) -> list[dict]:
    folds = table.get("folds")
    if folds is None:
        return [table]
    if "fold" in table:
        raise UserError(f"{where}: give either fold or folds, not both")
    if not isinstance(folds, list) or not folds or not all(
        isinstance(f, int) and not isinstance(f, bool) for f in folds
    ):
        raise UserError(f"{where}.folds: expected a non-empty list of integers, got {folds!r}")
    rest = {k: v for k, v in table.items() if k != "folds"}
    return [{**rest, "name": f"{rest.get('name', '?')}-f{f}", "fold": f} for f in folds]


def parse_recipe(data: dict, *, name: str, path: str = "") -> Recipe:
    """Build a :class:`Recipe` from a parsed TOML dict (strict).

    Args:
        data: the TOML document.
        name: recipe name (file stem).
        path: the file, for messages.

    Raises:
        UserError: unknown keys, bad values, unknown arch/encoder, duplicate names or a bad
            ``init_from``; the message names the table and lists valid choices.
    """
    where = path or name
    top = ["description", "channels", "defaults", *MEMBER_TYPES]  # "extends": resolved by load_recipe
    check_keys(data, top, where)
    description = data.get("description", "")
    channels = tuple(data.get("channels", DEFAULT_CHANNELS))
    if not channels or not all(isinstance(c, str) for c in channels):
        raise UserError(f"{where}.channels: expected a list of channel names")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict):
        raise UserError(f"{where}.defaults: expected a table")
    check_keys(defaults, [n for n in _field_names(Member) if n not in ("type", "name")]
                + ["folds"], f"{where}.defaults")
    if "loss" in defaults:
        _build_loss(defaults["loss"], f"{where}.defaults")
    if "loss" not in defaults:
        defaults = {**defaults, "loss": {}}
    if "channel_weights" not in defaults["loss"]:
        defaults = {**defaults, "loss": {**defaults["loss"],
                                         "channel_weights": [1.0] * len(channels)}}

    members: list[Member] = []
    folds_of: dict[str, dict[int, str]] = {}  # "type/base" -> fold -> expanded key
    for mtype in MEMBER_TYPES:
        tables = data.get(mtype, [])
        if isinstance(tables, dict):
            tables = [tables]
        if not isinstance(tables, list):
            raise UserError(f"{where}.{mtype}: expected [[{mtype}]] tables")
        for i, table in enumerate(tables):
            twhere = f"{where} [[{mtype}]] #{i + 1}"
            if not isinstance(table, dict):
                raise UserError(f"{twhere}: expected a table")
            merged = _merge(defaults, table)
            if "folds" in table and "fold" in defaults and "fold" not in table:
                merged.pop("fold")
            if "fold" in table and "folds" in defaults and "folds" not in table:
                merged.pop("folds")
            expanded = _expand_folds(merged, twhere)
            for t in expanded:
                m = _build_member(mtype, t, f"{twhere} ({t.get('name', '?')})")
                _validate_member(m, channels, f"{twhere} ({m.name})")
                members.append(m)
            if "folds" in merged:
                folds_of[f"{mtype}/{merged['name']}"] = {
                    t["fold"]: f"{mtype}/{t['name']}" for t in expanded
                }

    keys = [m.key for m in members]
    dupes = sorted({k for k in keys if keys.count(k) > 1})
    if dupes:
        raise UserError(f"{where}: duplicate member names {dupes}")
    by_key = {m.key: m for m in members}
    resolved = []
    for m in members:
        if m.init_from is not None:
            parent_key = m.init_from
            if parent_key in folds_of:
                parent_key = folds_of[parent_key].get(m.fold, parent_key)
            if parent_key not in by_key:
                raise UserError(
                    f"{where} {m.key}: init_from {m.init_from!r} is not a member of the "
                    f"recipe (with fold {m.fold}); members: {', '.join(keys)}"
                )
            parent = by_key[parent_key]
            if parent.type != "all" or (m.type == "all"
                                        and keys.index(parent.key) >= keys.index(m.key)):
                raise UserError(
                    f"{where} {m.key}: init_from must name an 'all/<name>' member (for an "
                    f"'all' member: one listed before it), got {m.init_from!r}"
                )
            if parent.input_norm != m.input_norm:
                raise UserError(
                    f"{where} {m.key}: init_from {parent.key} was trained on input_norm = "
                    f"{parent.input_norm!r} inputs, this member on {m.input_norm!r}")
            if (parent.arch, parent.encoder, parent.decoder_channels) != (
                    m.arch, m.encoder, m.decoder_channels):
                raise UserError(
                    f"{where} {m.key}: init_from {parent.key} is a {parent.arch} "
                    f"{parent.encoder} decoder {list(parent.decoder_channels) or 'default'}, "
                    f"this member a {m.arch} {m.encoder} decoder "
                    f"{list(m.decoder_channels) or 'default'}: its weights would not fit"
                )
            if parent.fold != m.fold:
                raise UserError(
                    f"{where} {m.key}: init_from {parent.key} was validated on fold "
                    f"{parent.fold}, this member on fold {m.fold}: fine-tuning would leak "
                    "validation images"
                )
            m = dataclasses.replace(m, init_from=parent_key)
        resolved.append(m)
    # Parents first: every 'all' member, then the per-type members.
    ordered = sorted(resolved, key=lambda m: (m.type != "all", MEMBER_TYPES.index(m.type)))
    return Recipe(name=name, path=path, description=description, channels=channels,
                  members=tuple(ordered))


def resolve_recipe_path(name_or_path: str | Path) -> Path:
    """``tiny`` -> ``recipes/tiny.toml`` in the repository; a path is used as given."""
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.is_file():
            raise UserError(f"recipe file {p} not found")
        return p
    candidate = RECIPES_DIR / f"{name_or_path}.toml"
    if not candidate.is_file():
        names = sorted(q.stem for q in RECIPES_DIR.glob("*.toml"))
        raise UserError(
            f"no recipe {str(name_or_path)!r}: not a file and not in {RECIPES_DIR}; "
            f"shipped recipes: {', '.join(names)}"
        )
    return candidate


def load_recipe(name_or_path: str | Path) -> Recipe:
    """Read and validate a recipe by name (``tiny``) or path.

    Raises:
        UserError: missing file, TOML syntax error, or anything :func:`parse_recipe` rejects.
    """
    path = resolve_recipe_path(name_or_path)
    return parse_recipe(_read_extended(path, ()), name=path.stem, path=str(path))


def _read_extended(path: Path, seen: tuple[Path, ...]) -> dict:
    """The TOML document of ``path`` with its ``extends`` resolved: a recipe may name
    another (a shipped name, or a path relative to its own folder) and state only what
    differs. ``[defaults]`` and its ``[defaults.loss]`` are merged key by key over the
    base's; a member list (``[[all]]``, ``[[histology]]``, ...) or ``channels`` that the
    recipe gives replaces the base's, and so does its ``description``.

    Raises:
        UserError: invalid TOML, a base that is not found, or a cycle of ``extends``.
    """
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise UserError(f"{path}: invalid TOML: {exc}") from None
    base_name = data.pop("extends", None)
    if base_name is None:
        return data
    if not isinstance(base_name, str) or not base_name:
        raise UserError(f"{path}: extends: expected a recipe name or path, got {base_name!r}")
    relative = path.parent / base_name
    base_path = resolve_recipe_path(relative if relative.suffix == ".toml" and relative.is_file()
                                    else base_name)
    chain = (*seen, path.resolve())
    if base_path.resolve() in chain:
        raise UserError(f"{path}: extends {base_name!r} makes a cycle: "
                        + " -> ".join(p.name for p in (*chain, base_path)))
    merged = _read_extended(base_path, chain)
    for key, value in data.items():
        both_tables = key == "defaults" and isinstance(value, dict) and isinstance(merged.get(key), dict)
        merged[key] = _merge(merged[key], value) if both_tables else value
    return merged


def member_from_dict(d: dict) -> Member:
    """Rebuild a :class:`Member` from :meth:`Member.to_dict` output (``config.json``)."""
    d = dict(d)
    loss = LossConfig(**{**d.pop("loss", {})})
    loss = dataclasses.replace(loss, channel_weights=tuple(loss.channel_weights))
    if "decoder_channels" in d:
        d["decoder_channels"] = tuple(d["decoder_channels"])
    known = set(_field_names(Member))
    return Member(loss=loss, **{k: v for k, v in d.items() if k in known})
