"""Atomic file writing: a reader never sees half a file."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from competition.errors import UserError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_write(path: str | Path, *, overwrite: bool = True, mode: str = "w") -> Iterator:
    """Open a temporary file beside ``path``; on success rename it over ``path``.

    Args:
        path: the final file.
        overwrite: when False and ``path`` exists, raise :class:`UserError` before writing
            (submissions are never overwritten).
        mode: ``"w"`` (text, newline="") or ``"wb"``.

    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    path = Path(path)
    if not overwrite and path.exists():
        raise UserError(f"{path} already exists; refusing to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        kwargs = {"newline": ""} if "b" not in mode else {}
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if not overwrite:
            # os.link fails if the target appeared meanwhile: no silent overwrite.
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise UserError(f"{path} already exists; refusing to overwrite it") from None
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
