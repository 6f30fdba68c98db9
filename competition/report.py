"""An HTML report of one submission: scores per type, their distribution, and overlays.

:func:`build_report` writes a self-contained folder (``index.html`` and its PNGs side by
side, nothing fetched from elsewhere):

- with a solution file: the score overall (with its bootstrap interval), per Usage, per image
  type and per IoU threshold; a histogram of the image scores (stacked by type); and for the
  worst and the best images of each type an overlay of the predicted contours (yellow) and the
  true contours (cyan) on the image;
- without one: the number of predicted objects per image, their histogram, and overlays of
  the images with the most and the fewest objects of each type.

Image types come from the submission's JSON sidecar (the routing recorded by ``submit``),
else from :func:`competition.data.types.classify_image` on the images, else ``unknown``.
"""

from __future__ import annotations

import html
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from competition.csvio import atomic_write
from competition.errors import DataError, UserError

log = logging.getLogger(__name__)

__all__ = ["PRED_COLOUR", "TRUE_COLOUR", "ImageEntry", "contour_mask", "overlay", "build_report", "html_head"]

PRED_COLOUR = (255, 230, 0)
TRUE_COLOUR = (0, 255, 255)
_UPSCALE_BELOW = 256  # images whose longer side is below this are shown at 2x


def contour_mask(label: np.ndarray) -> np.ndarray:
    """Inner contour pixels of every object: object pixels with a 4-neighbour of another id
    (background, another object, or outside the image).

    Shapes: label (H, W) int -> mask (H, W) bool.
    """
    label = np.asarray(label)
    padded = np.pad(label, 1, mode="constant", constant_values=-1)
    centre = padded[1:-1, 1:-1]
    edge = np.zeros(label.shape, dtype=bool)
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):
        edge |= padded[1 + dy : 1 + dy + label.shape[0], 1 + dx : 1 + dx + label.shape[1]] != centre
    return edge & (label > 0)


def overlay(image: np.ndarray | None, pred_label: np.ndarray, true_label: np.ndarray | None = None, *,
            pred_colour: tuple[int, int, int] = PRED_COLOUR) -> np.ndarray:
    """Predicted (yellow) and true (cyan) contours drawn on the image.

    Args:
        image: H×W×3 uint8, or None (a black canvas).
        pred_label: H×W predicted label image.
        true_label: H×W true label image, or None.
        pred_colour: the RGB colour of the predicted contours.

    Returns:
        H×W×3 uint8 (2× larger, nearest neighbour, when the image is small).

    Shapes: image (H, W, 3), labels (H, W) -> (H, W, 3) or (2H, 2W, 3).
    """
    shape = pred_label.shape
    canvas = np.zeros((*shape, 3), np.uint8) if image is None else np.array(image[..., :3], dtype=np.uint8)
    if canvas.shape[:2] != shape:
        raise ValueError(f"image {canvas.shape[:2]} and label {shape} differ in size")
    if max(shape) < _UPSCALE_BELOW:
        canvas = canvas.repeat(2, axis=0).repeat(2, axis=1)
        pred_label = pred_label.repeat(2, axis=0).repeat(2, axis=1)
        true_label = None if true_label is None else true_label.repeat(2, axis=0).repeat(2, axis=1)
    if true_label is not None:
        canvas[contour_mask(true_label)] = TRUE_COLOUR
    canvas[contour_mask(pred_label)] = pred_colour
    return canvas


@dataclass(frozen=True)
class ImageEntry:
    """One image of the report."""

    image_id: str
    image_type: str
    n_pred: int
    n_true: int | None = None
    score: float | None = None


def _save_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    with atomic_write(path, mode="wb") as handle:
        Image.fromarray(array).save(handle, format="PNG")


def _histogram(path: Path, values_by_type: Mapping[str, Sequence[float]], *, xlabel: str, bins) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 3.2), dpi=100)
    names = [t for t in sorted(values_by_type) if len(values_by_type[t])]
    if names:
        ax.hist([values_by_type[t] for t in names], bins=bins, stacked=True, label=names)
        ax.legend(fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("images")
    fig.tight_layout()
    with atomic_write(path, mode="wb") as handle:
        fig.savefig(handle, format="png")
    plt.close(fig)


def _sidecar(submission: Path) -> dict:
    path = submission.with_suffix(".json")
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        log.warning("ignoring unreadable %s: %s", path, exc)
        return {}


def _image_file(split: Path | None, image_id: str) -> Path | None:
    if split is None:
        return None
    path = split / image_id / "images" / f"{image_id}.png"
    return path if path.is_file() else None


def _image_shapes(ids: Sequence[str], split: Path | None, sidecars: Sequence[Mapping[str, Any]],
                  truth: Mapping[str, Any] | None = None) -> dict[str, tuple[int, int]]:
    """Each image's (height, width): from the solution, else the image file, else the shape a
    submission's JSON sidecar recorded; images none of them knows are left out."""
    from competition.data.io import read_image_shape

    shapes: dict[str, tuple[int, int]] = {}
    for image_id in ids:
        if truth is not None and image_id in truth:
            shapes[image_id] = truth[image_id].shape
            continue
        path = _image_file(split, image_id)
        if path is not None:
            try:
                shapes[image_id] = read_image_shape(path)
                continue
            except DataError as exc:
                log.warning("%s", exc)
        for sidecar in sidecars:
            recorded = sidecar.get("routing", {}).get(image_id, {}).get("shape")
            if recorded:
                shapes[image_id] = (int(recorded[0]), int(recorded[1]))
                break
    return shapes


def build_report(
    submission: str | Path,
    *,
    solution: str | Path | None = None,
    data_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    n_examples: int = 3,
) -> Path:
    """Write the report folder of a submission.

    Args:
        submission: the submission CSV.
        solution: a solution CSV to score against (optional).
        data_dir: the split folder with the images (``DATA_DIR/stage1_test``); default: the
            ``test_dir`` recorded in the submission's JSON sidecar, if it exists.
        out_dir: the report folder; default ``reports/<submission name>/``.
        n_examples: worst and best (or most and fewest objects) images shown per type.

    Returns:
        the ``index.html`` written.

    Raises:
        UserError: an invalid submission, no way to know the image sizes (no solution, no
            images), an unreadable solution.
    """
    from competition.data.io import read_image
    from competition.rle import rles_to_label
    from competition.submission import validate_submission

    submission = Path(submission)
    sidecar = _sidecar(submission)
    out_dir = Path(out_dir) if out_dir is not None else Path("reports") / submission.stem
    split = Path(data_dir) if data_dir is not None else None
    if split is None and sidecar.get("test_dir") and Path(sidecar["test_dir"]).is_dir():
        split = Path(sidecar["test_dir"])
    if split is not None and not split.is_dir():
        raise DataError(f"image folder {split} does not exist")

    truth = None
    if solution is not None:
        from competition.solution import read_solution

        truth = read_solution(solution)
    sub, problems = validate_submission(submission)
    if problems:
        raise UserError(f"{submission} is not a valid submission: {problems[0]}")
    ids = list(sub.rles) if truth is None else list(truth)

    shapes = _image_shapes(ids, split, [sidecar], truth)
    if not shapes and any(sub.rles.values()):
        raise UserError("cannot tell the image sizes: pass --solution or --data DATA_DIR/<split>")

    from competition.diagnostics import count_border_strips

    strips = {i: count_border_strips(rles_to_label(sub.rles.get(i, []), shapes[i])) for i in ids if i in shapes}
    log.info("border strips: %d in %d of %d images", sum(strips.values()), sum(1 for v in strips.values() if v),
             len(strips))
    types: dict[str, str] = {i: r["type"] for i, r in sidecar.get("routing", {}).items() if "type" in r}
    images: dict[str, np.ndarray] = {}

    def image_of(image_id: str) -> np.ndarray | None:
        if image_id not in images:
            path = _image_file(split, image_id)
            try:
                images[image_id] = read_image(path) if path is not None else None
            except DataError as exc:
                log.warning("%s", exc)
                images[image_id] = None
        return images[image_id]

    if split is not None:
        from competition.data.types import classify_image

        for image_id in ids:
            if image_id not in types and image_of(image_id) is not None:
                types[image_id] = classify_image(image_of(image_id))

    scored = None
    if truth is not None:
        from competition.scoring import score_submission

        scored = score_submission(submission, solution, types)
        by_id = {s.image_id: s for s in scored.result.images}
        entries = [
            ImageEntry(i, types.get(i, "unknown"), by_id[i].n_pred, by_id[i].n_true, by_id[i].score)
            for i in ids
            if i in by_id
        ]
    else:
        entries = [ImageEntry(i, types.get(i, "unknown"), len(sub.rles.get(i, []))) for i in ids]

    out_dir.mkdir(parents=True, exist_ok=True)
    by_type: dict[str, list[ImageEntry]] = {}
    for e in entries:
        by_type.setdefault(e.image_type, []).append(e)
    hist_name = "histogram.png"
    if scored is not None:
        _histogram(out_dir / hist_name, {t: [e.score for e in es] for t, es in by_type.items()},
                   xlabel="image score", bins=np.linspace(0, 1, 21))
    else:
        top = max([e.n_pred for e in entries], default=1)
        _histogram(out_dir / hist_name, {t: [e.n_pred for e in es] for t, es in by_type.items()},
                   xlabel="predicted objects per image", bins=min(30, max(top, 1)))

    sections: list[str] = []
    for image_type in sorted(by_type):
        group = by_type[image_type]
        if scored is not None:
            ranked = sorted(group, key=lambda e: (e.score, e.image_id))
            picks = [("worst", ranked[:n_examples]), ("best", ranked[::-1][:n_examples])]
        else:
            ranked = sorted(group, key=lambda e: (e.n_pred, e.image_id))
            picks = [("most objects", ranked[::-1][:n_examples]), ("fewest objects", ranked[:n_examples])]
        rows = []
        shown: set[str] = set()
        for title, chosen in picks:
            for e in chosen:
                if e.image_id in shown:
                    continue  # a small type: each image once
                shown.add(e.image_id)
                cell = "<em>no overlay: image size unknown</em>"
                if e.image_id in shapes:
                    shape = shapes[e.image_id]
                    pred = rles_to_label(sub.rles.get(e.image_id, []), shape)
                    true = truth[e.image_id].label() if truth is not None else None
                    image = image_of(e.image_id)
                    if image is not None and image.shape[:2] != shape:
                        log.warning("%s: image is %s, submission shape %s: drawing on black", e.image_id, image.shape[:2], shape)
                        image = None
                    name = f"overlay-{e.image_id}.png"
                    _save_png(out_dir / name, overlay(image, pred, true))
                    cell = f'<img src="{html.escape(name)}" alt="{html.escape(e.image_id)}">'
                rows.append(_row(title, e, cell))
        sections.append(
            f"<h2>{html.escape(image_type)} ({len(group)} images)</h2>\n<table>\n{_header(scored is not None)}\n"
            + "\n".join(rows)
            + "\n</table>"
        )

    summary = _summary(submission, sidecar, solution, scored, entries, by_type, strips)
    title = html.escape(f"report: {submission.name}")
    page = html_head(title) + _PAGE.format(
        title=title,
        summary=summary,
        histogram=hist_name,
        hist_alt="image scores" if scored is not None else "objects per image",
        legend=(
            f'<p>Contours: <span style="color:rgb{PRED_COLOUR}">predicted</span>'
            + (f', <span style="color:rgb{TRUE_COLOUR}">true</span>' if truth is not None else "")
            + "; small images are shown at 2x.</p>"
        ),
        sections="\n".join(sections),
    )
    index = out_dir / "index.html"
    with atomic_write(index) as handle:
        handle.write(page)
    log.info("wrote %s (%d images, %d types)", index, len(entries), len(by_type))
    return index


def _header(scored: bool) -> str:
    cols = ["", "image", "score", "true", "predicted", "overlay"] if scored else ["", "image", "predicted", "overlay"]
    return "<tr>" + "".join(f"<th>{c}</th>" for c in cols) + "</tr>"


def _row(title: str, e: ImageEntry, cell: str) -> str:
    cols = [html.escape(title), f"<code>{html.escape(e.image_id)}</code>"]
    if e.score is not None:
        cols += [f"{e.score:.4f}", str(e.n_true), str(e.n_pred)]
    else:
        cols += [str(e.n_pred)]
    cols.append(cell)
    return "<tr>" + "".join(f"<td>{c}</td>" for c in cols) + "</tr>"


def _summary(submission: Path, sidecar: Mapping[str, Any], solution, scored, entries, by_type,
             strips: Mapping[str, int]) -> str:
    items = [f"<li>submission <code>{html.escape(str(submission))}</code></li>",
             f"<li>border strips (thin objects along the image edges, competition.diagnostics): "
             f"<b>{sum(strips.values())}</b> in {sum(1 for v in strips.values() if v)} of {len(strips)} images</li>"]
    if sidecar:
        items.append(f"<li>recipe <b>{html.escape(str(sidecar.get('recipe')))}</b>, stage {html.escape(str(sidecar.get('stage')))}, "
                     f"TTA {html.escape(str(sidecar.get('tta')))}, commit <code>{html.escape(str(sidecar.get('git_commit')))}</code></li>")
        cv = (sidecar.get("local_cv") or {}).get("overall")
        if cv is not None:
            items.append(f"<li>local CV {cv:.4f}</li>")
    if scored is not None:
        low, high = scored.result.bootstrap_interval()
        items.append(f"<li>solution <code>{html.escape(str(solution))}</code></li>")
        items.append(f"<li>score <b>{scored.score:.4f}</b> over {len(entries)} images "
                     f"(95% bootstrap interval {low:.4f} to {high:.4f})</li>")
        table = ["<table><tr><th>group</th><th>score</th><th>images</th></tr>"]
        for usage, value in scored.result.by_group(scored.usage).items():
            n = sum(1 for u in scored.usage.values() if u == usage)
            table.append(f"<tr><td>Usage {html.escape(usage)}</td><td>{value:.4f}</td><td>{n}</td></tr>")
        for image_type, group in sorted(by_type.items()):
            mean = float(np.mean([e.score for e in group]))
            table.append(f"<tr><td>type {html.escape(image_type)}</td><td>{mean:.4f}</td><td>{len(group)}</td></tr>")
        table.append("</table>")
        thresholds = " ".join(f"{v:.3f}" for v in scored.result.per_threshold)
        items.append(f"<li>per IoU threshold 0.50..0.95: {thresholds}</li>")
        return "<ul>" + "".join(items) + "</ul>\n" + "\n".join(table) + "\n" + _errors_table(scored)
    table = ["<table><tr><th>type</th><th>images</th><th>objects</th><th>objects per image</th></tr>"]
    for image_type, group in sorted(by_type.items()):
        total = sum(e.n_pred for e in group)
        table.append(f"<tr><td>{html.escape(image_type)}</td><td>{len(group)}</td><td>{total}</td>"
                     f"<td>{total / len(group):.1f}</td></tr>")
    table.append("</table>")
    items.append(f"<li>no solution given: predictions only ({sum(e.n_pred for e in entries)} objects "
                 f"in {len(entries)} images)</li>")
    return "<ul>" + "".join(items) + "</ul>\n" + "\n".join(table)


def _errors_table(scored) -> str:
    """Where the score is lost at IoU 0.5, per type (:func:`competition.metric.error_counts`)."""
    head = ("type", "true", "matched", "mean IoU of the matched", "missed", "merged", "split", "outline",
            "predicted", "unmatched on background", "unmatched on nuclei")
    rows = ["<h2>Where the score is lost (IoU 0.5)</h2>",
            "<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
    for image_type, c in scored.errors_by_group().items():
        mean_iou = f"{c.mean_iou:.3f}" if c.matched else "-"
        cells = (html.escape(image_type), c.n_true, c.matched, mean_iou, c.missed, c.merged, c.split, c.outline,
                 c.n_pred, c.background, c.on_nuclei)
        rows.append("<tr>" + "".join(f"<td>{v}</td>" for v in cells) + "</tr>")
    rows.append("</table>")
    return "\n".join(rows)


def html_head(title: str, *, image_width: int = 512) -> str:
    """The start of a self-contained page, to ``<body>``: its title and the style of its tables
    and images (shown at most ``image_width`` px wide, pixels kept sharp)."""
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em 0; }}
td, th {{ border: 1px solid #ccc; padding: 0.25em 0.5em; vertical-align: top; text-align: left; }}
img {{ max-width: {image_width}px; image-rendering: pixelated; background: #000; }}
code {{ font-size: 0.85em; }}
</style>
</head>
<body>
"""


_PAGE = """<h1>{title}</h1>
{summary}
<h2>Distribution</h2>
<img src="{histogram}" alt="{hist_alt}">
{legend}
{sections}
</body>
</html>
"""
