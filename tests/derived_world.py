"""Helpers shared by the tests of the commands that derive an ensemble from a trained one
(``refit``, ``adapt``): the CLI, a small recipe's defaults and the submit arguments."""

from __future__ import annotations

from pathlib import Path

#: the ``[defaults]`` table of the small recipes these tests train (seconds per member)
DEFAULTS = """
[defaults]
arch = "Unet"
encoder = "mobilenet_v2"
encoder_weights = "none"
crop_size = 64
pad = 16
batch_size = 4
epochs = 1
samples_per_epoch = 8
optimizer = "adamw"
lr = 3e-3
min_lr = 1e-4
schedule = "cosine"
augment = "light"
fold = 0
seed = 0
"""


def cli(*args) -> int:
    from competition.cli import main

    return main([str(a) for a in args])


def submit_args(world: dict, recipe: str, out: Path) -> list:
    """``submit`` of ``world``'s test split with ``recipe``'s ensemble: no TTA, PyTorch on the
    CPU, no cache, into ``out``."""
    return ["submit", "--recipe", recipe, "--models", world["models"], "--data", world["data"], "--stage", "stage1",
            "--tta", "none", "--engine", "torch", "--device", "cpu", "--cache-dir", "", "--out-dir", out]
