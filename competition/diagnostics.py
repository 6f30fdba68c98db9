"""Diagnostics of predicted instances that need no labels.

Border strips: thin objects along an image's edges, the mark of a network predicting in a
margin it was never supervised in. An object is one when its bounding box spans more than
half an image side while filling under 15% of that box, or when at least 60% of its pixels
lie within 2 px of the image border (the 3 outermost rows and columns) and it is at least 30
px long.

Pure numpy/scipy.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["border_strips", "count_border_strips"]


def border_strips(label: np.ndarray) -> list[int]:
    """Label ids of the border strips of an instance label image.

    Shapes: label H×W int (0 = background).

    >>> lab = np.zeros((64, 64), np.int32); lab[0:2, 5:50] = 1; lab[20:30, 20:30] = 2
    >>> border_strips(lab)
    [1]
    """
    h, w = label.shape
    edge = np.zeros((h, w), bool)
    edge[:3], edge[-3:], edge[:, :3], edge[:, -3:] = True, True, True, True  # distance <= 2 px
    out = []
    for k, sl in enumerate(ndimage.find_objects(label), 1):
        if sl is None:
            continue
        obj = label[sl] == k
        n = int(obj.sum())
        bh, bw = sl[0].stop - sl[0].start, sl[1].stop - sl[1].start
        spans = bh > h / 2 or bw > w / 2
        if spans and n < 0.15 * bh * bw:
            out.append(k)
            continue
        near = int((obj & edge[sl]).sum())
        if near >= 0.6 * n and max(bh, bw) >= 30:
            out.append(k)
    return out


def count_border_strips(label: np.ndarray) -> int:
    """How many objects of ``label`` are border strips (:func:`border_strips`)."""
    return len(border_strips(label))
