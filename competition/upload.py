"""Uploading a submission to Kaggle with the kaggle CLI (a subprocess with a timeout, so a
missing token or a dead network is a clear message, never a hang)."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
from collections.abc import Mapping
from pathlib import Path

from competition.data.download import COMPETITION

log = logging.getLogger(__name__)

__all__ = ["kaggle_upload", "upload_requested"]

KAGGLE_TIMEOUT_S = 300


def _kaggle_reachable(host: str = "www.kaggle.com", timeout: float = 10.0) -> bool:
    """A quick connection test (skipped, True, behind a proxy), so no network fails in seconds."""
    if any(os.environ.get(n) for n in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def kaggle_upload(
    path: Path, message: str, *, timeout: float = KAGGLE_TIMEOUT_S, check_network: bool = True
) -> dict[str, str]:
    """Upload a submission with ``kaggle competitions submit`` (a subprocess with a timeout).

    Credentials are looked for first (:func:`competition.data.download.find_credentials`:
    ``KAGGLE_API_TOKEN``, ``~/.kaggle/access_token``, ``KAGGLE_USERNAME`` + ``KAGGLE_KEY``,
    ``~/.kaggle/kaggle.json``), then the network is tested (10 s), then the CLI runs.

    Never raises: returns ``{"status": "uploaded" | "no-credentials" | "no-kaggle-cli" |
    "no-network" | "failed" | "timeout", "detail": ...}`` and logs what to do; the CSV stays
    either way.
    """
    from competition.data.download import find_credentials, find_kaggle

    where = find_credentials()
    if where is None:
        detail = (
            "no Kaggle credentials: set KAGGLE_API_TOKEN (or KAGGLE_USERNAME and KAGGLE_KEY), or put "
            "access_token / kaggle.json in ~/.kaggle; then upload with "
            f"`kaggle competitions submit {COMPETITION} -f {path} -m \"...\"`"
        )
        log.error("not uploaded: %s", detail)
        return {"status": "no-credentials", "detail": detail}
    exe = find_kaggle()
    if exe is None:
        detail = "the kaggle command is not installed (pip install kaggle)"
        log.error("not uploaded: %s", detail)
        return {"status": "no-kaggle-cli", "detail": detail}
    if check_network and not _kaggle_reachable():
        detail = f"www.kaggle.com cannot be reached (no network?); the CSV is kept at {path}"
        log.error("not uploaded: %s", detail)
        return {"status": "no-network", "detail": detail}
    command = [exe, "competitions", "submit", COMPETITION, "-f", str(path), "-m", message]
    log.info("uploading %s (credentials from %s)", path, where)
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        detail = f"kaggle did not answer within {timeout:.0f} s (no network?); the CSV is kept at {path}"
        log.error("not uploaded: %s", detail)
        return {"status": "timeout", "detail": detail}
    except OSError as exc:
        log.error("not uploaded: cannot run kaggle: %s", exc)
        return {"status": "failed", "detail": f"cannot run kaggle: {exc}"}
    tail = "\n".join((out.stdout + out.stderr).strip().splitlines()[-5:])
    if out.returncode != 0:
        hint = " (403: accept the competition rules on the website)" if "403" in tail else ""
        log.error("not uploaded: kaggle exited with status %d%s: %s", out.returncode, hint, tail)
        return {"status": "failed", "detail": f"exit status {out.returncode}{hint}: {tail}"}
    log.info("uploaded: %s", tail)
    return {"status": "uploaded", "detail": tail}


def upload_requested(flag: bool, environ: Mapping[str, str] | None = None) -> bool:
    """``--kaggle`` or ``KAGGLE_SUBMIT=1`` (also ``true``/``yes``)."""
    env = os.environ if environ is None else environ
    return flag or env.get("KAGGLE_SUBMIT", "").strip().lower() in ("1", "true", "yes")

