"""Where two submissions of one test set disagree: an HTML page to look at before spending an
upload on a new model (``make report SUB=a.csv AGAINST=b.csv``).

Without labels the test set gives no score, and counting objects misleads: a network that
outlines fragments inside nuclei and one that outlines the nuclei whole can predict about as
many objects. The competition metric itself measures how far apart two submissions are: one
scored against the other taken as the solution. The score is symmetric, since swapping the
two swaps false positives and false negatives, and TP/(TP+FP+FN) does not change. This is
the image's *agreement*: 1 where the two predict the same objects, 0 where no object of
one matches an object of the other at IoU 0.5.

:func:`build_comparison` writes a self-contained folder:
- the mean agreement overall and per image type, with both submissions' object counts;
- per type, the images where the two agree least, each with both sets of contours side by
  side (the first submission's yellow, the second's magenta) and the objects at IoU 0.5
  that both find, that only the first finds, and that only the second finds.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from competition.csvio import atomic_write
from competition.errors import DataError, UserError
from competition.report import PRED_COLOUR, _image_file, _image_shapes, _save_png, _sidecar, html_head, overlay

log = logging.getLogger(__name__)

__all__ = ["OTHER_COLOUR", "Agreement", "build_comparison"]

OTHER_COLOUR = (255, 0, 255)
_GAP = 4  # white pixels between the two panels


@dataclass(frozen=True)
class Agreement:
    """One image of the comparison.

    Attributes:
        image_id, image_type: the image.
        score: the competition score of the first submission against the second (symmetric).
        n_first, n_second: the objects each predicts.
        both: objects matched between the two at IoU 0.5.
    """

    image_id: str
    image_type: str
    score: float
    n_first: int
    n_second: int
    both: int

    @property
    def only_first(self) -> int:
        return self.n_first - self.both

    @property
    def only_second(self) -> int:
        return self.n_second - self.both


def _panels(image: np.ndarray | None, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """The two submissions' contours on two copies of the image, side by side.

    Shapes: image (H, W, 3) or None, labels (H, W) -> (H', 2W' + gap, 3).
    """
    left = overlay(image, first)
    right = overlay(image, second, pred_colour=OTHER_COLOUR)
    gap = np.full((left.shape[0], _GAP, 3), 255, np.uint8)
    return np.concatenate([left, gap, right], axis=1)


def build_comparison(
    first: str | Path,
    second: str | Path,
    *,
    data_dir: str | Path | None = None,
    out_dir: str | Path | None = None,
    n_examples: int = 3,
) -> Path:
    """Write the comparison folder of two submissions of one test set.

    Args:
        first, second: submission CSVs of the same images.
        data_dir: the split folder with the images (``DATA_DIR/stage1_test``); default: the
            ``test_dir`` recorded in either submission's JSON sidecar, if it exists.
        out_dir: the folder; default ``reports/<first>-vs-<second>/``.
        n_examples: images shown per type, those of least agreement first.

    Returns:
        the ``index.html`` written.

    Raises:
        UserError: an invalid submission, two submissions of different image sets, no way to
            know the image sizes.
    """
    from competition.data.io import read_image
    from competition.metric import score_image_and_errors
    from competition.rle import rles_to_label
    from competition.submission import validate_submission

    first, second = Path(first), Path(second)
    subs, sidecars = [], []
    for path in (first, second):
        sub, problems = validate_submission(path)
        if problems:
            raise UserError(f"{path} is not a valid submission: {problems[0]}")
        subs.append(sub)
        sidecars.append(_sidecar(path))
    ids_first, ids_second = set(subs[0].rles), set(subs[1].rles)
    if ids_first != ids_second:
        only = sorted(ids_first - ids_second)[:3] or sorted(ids_second - ids_first)[:3]
        raise UserError(f"{first} and {second} cover different images ({len(ids_first)} and {len(ids_second)}; "
                        f"{len(ids_first ^ ids_second)} in one only, e.g. {', '.join(only)}): compare submissions "
                        "of one test set")
    out_dir = Path(out_dir) if out_dir is not None else Path("reports") / f"{first.stem}-vs-{second.stem}"
    split = Path(data_dir) if data_dir is not None else None
    for sidecar in sidecars:
        if split is None and sidecar.get("test_dir") and Path(sidecar["test_dir"]).is_dir():
            split = Path(sidecar["test_dir"])
    if split is not None and not split.is_dir():
        raise DataError(f"image folder {split} does not exist")
    ids = sorted(ids_first)
    shapes = _image_shapes(ids, split, sidecars)
    unknown = [i for i in ids if i not in shapes]
    if unknown:
        raise UserError(f"cannot tell the size of {len(unknown)} image(s), e.g. {unknown[0]}: "
                        "pass --data DATA_DIR/<split>")

    types: dict[str, str] = {}
    for sidecar in reversed(sidecars):  # the first submission's routing wins
        types.update({i: r["type"] for i, r in sidecar.get("routing", {}).items() if "type" in r})

    def image_of(image_id: str) -> np.ndarray | None:
        path = _image_file(split, image_id)
        try:
            return read_image(path) if path is not None else None
        except DataError as exc:
            log.warning("%s", exc)
            return None

    if split is not None and any(i not in types for i in ids):
        from competition.data.types import classify_image

        for image_id in ids:
            image = None if image_id in types else image_of(image_id)
            if image is not None:
                types[image_id] = classify_image(image)

    rows: list[Agreement] = []
    for image_id in ids:
        a = rles_to_label(subs[0].rles[image_id], shapes[image_id])
        b = rles_to_label(subs[1].rles[image_id], shapes[image_id])
        score, errors = score_image_and_errors(b, a, image_id)
        rows.append(Agreement(image_id, types.get(image_id, "unknown"), score.score, score.n_pred, score.n_true,
                              errors.matched))

    out_dir.mkdir(parents=True, exist_ok=True)
    by_type: dict[str, list[Agreement]] = {}
    for r in rows:
        by_type.setdefault(r.image_type, []).append(r)
    sections = []
    for image_type in sorted(by_type):
        group = sorted(by_type[image_type], key=lambda r: (r.score, r.image_id))
        lines = []
        for r in group[:n_examples]:
            image = image_of(r.image_id)
            shape = shapes[r.image_id]
            if image is not None and image.shape[:2] != shape:
                log.warning("%s: image is %s, submission shape %s: drawing on black", r.image_id, image.shape[:2], shape)
                image = None
            name = f"compare-{r.image_id}.png"
            _save_png(out_dir / name, _panels(image, rles_to_label(subs[0].rles[r.image_id], shape),
                                              rles_to_label(subs[1].rles[r.image_id], shape)))
            cells = [f"<code>{html.escape(r.image_id)}</code>", f"{r.score:.4f}", str(r.n_first), str(r.n_second),
                     str(r.both), str(r.only_first), str(r.only_second),
                     f'<img src="{html.escape(name)}" alt="{html.escape(r.image_id)}">']
            lines.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
        head = ("image", "agreement", "objects, first", "objects, second", "in both (IoU 0.5)", "first only",
                "second only", "first | second")
        sections.append(f"<h2>{html.escape(image_type)}: {len(group)} images, the {min(n_examples, len(group))} "
                        f"that agree least</h2>\n<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>\n"
                        + "\n".join(lines) + "\n</table>")

    title = html.escape(f"{first.name} against {second.name}")
    body = _PAGE.format(title=title, summary=_summary(first, second, sidecars, rows, by_type),
                        first=PRED_COLOUR, second=OTHER_COLOUR, sections="\n".join(sections))
    page = html_head(title, image_width=1024) + body
    index = out_dir / "index.html"
    with atomic_write(index) as handle:
        handle.write(page)
    log.info("wrote %s (%d images, mean agreement %.4f)", index, len(rows), np.mean([r.score for r in rows]))
    return index


def _summary(first: Path, second: Path, sidecars, rows: list[Agreement], by_type: Mapping[str, list[Agreement]]) -> str:
    items = []
    for name, path, sidecar in (("first", first, sidecars[0]), ("second", second, sidecars[1])):
        recipe = f", recipe <b>{html.escape(str(sidecar.get('recipe')))}</b>" if sidecar else ""
        items.append(f"<li>{name}: <code>{html.escape(str(path))}</code>{recipe}</li>")
    items.append(f"<li>agreement (the score of one against the other) over {len(rows)} images: "
                 f"<b>{np.mean([r.score for r in rows]):.4f}</b></li>")
    table = ["<table><tr><th>type</th><th>images</th><th>agreement</th><th>objects, first</th>"
             "<th>objects, second</th><th>in both (IoU 0.5)</th></tr>"]
    for image_type, group in sorted(by_type.items()):
        table.append(f"<tr><td>{html.escape(image_type)}</td><td>{len(group)}</td>"
                     f"<td>{np.mean([r.score for r in group]):.4f}</td><td>{sum(r.n_first for r in group)}</td>"
                     f"<td>{sum(r.n_second for r in group)}</td><td>{sum(r.both for r in group)}</td></tr>")
    table.append("</table>")
    return "<ul>" + "".join(items) + "</ul>\n" + "\n".join(table)


_PAGE = """<h1>{title}</h1>
{summary}
<p>Contours: <span style="color:rgb{first}">first</span> (left),
<span style="color:rgb{second}">second</span> (right); small images are shown at 2x.
Agreement is 1 where the two predict the same objects.</p>
{sections}
</body>
</html>
"""
