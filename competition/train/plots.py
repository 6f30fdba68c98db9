"""Training curves (loss and score per epoch) and the learning-rate schedule as PNGs."""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from pathlib import Path

log = logging.getLogger(__name__)


def _save(fig, path: Path) -> None:
    from competition.csvio import atomic_write

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    with atomic_write(path, mode="wb") as fh:
        fh.write(buf.getvalue())


def _figure(ncols: int, width: float = 5.0):
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, 3.6))
    return fig, [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]


def plot_curves(rows: Sequence[dict], path: Path, title: str = "") -> None:
    """``curves.png``: train/valid loss and valid score (overall and per type) per epoch.

    Args:
        rows: the ``log.csv`` rows (dicts with ``epoch``, ``train_loss``, ``valid_loss``,
            ``valid_score`` and ``score_<type>`` keys; NaN where not validated).
        path: output PNG.
    """
    fig, (ax_loss, ax_score) = _figure(2)
    epochs = [r["epoch"] for r in rows]

    def series(key):
        pts = [(e, r.get(key)) for e, r in zip(epochs, rows)]
        return [(e, v) for e, v in pts if v is not None and not (isinstance(v, float) and math.isnan(v))]

    for key, style in (("train_loss", "-o"), ("valid_loss", "-s")):
        pts = series(key)
        if pts:
            ax_loss.plot(*zip(*pts), style, label=key.replace("_", " "), ms=3)
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    if ax_loss.get_legend_handles_labels()[1]:
        ax_loss.legend()
    keys = ["valid_score"] + sorted({k for r in rows for k in r if k.startswith("score_")})
    for key in keys:
        pts = series(key)
        if pts:
            ax_score.plot(*zip(*pts), "-o", ms=3, lw=2 if key == "valid_score" else 1,
                          label=key.replace("score_", "").replace("_", " "))
    from matplotlib.ticker import MaxNLocator

    for ax in (ax_loss, ax_score):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax_score.set_xlabel("epoch")
    ax_score.set_ylabel("competition score")
    if ax_score.get_legend_handles_labels()[1]:  # no score yet before the first validation
        ax_score.legend()
    if title:
        fig.suptitle(title)
    _save(fig, path)


def plot_lr(lrs: Sequence[float], steps_per_epoch: int, path: Path, title: str = "") -> None:
    """``lr.png``: the learning rate at every optimiser step of the whole schedule."""
    fig, (ax,) = _figure(1, width=6.0)
    x = [i / max(steps_per_epoch, 1) for i in range(len(lrs))]
    ax.plot(x, lrs)
    ax.set_xlabel("epoch")
    ax.set_ylabel("learning rate")
    if title:
        ax.set_title(title)
    _save(fig, path)
