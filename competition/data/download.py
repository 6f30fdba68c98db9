"""Download and unpack the competition data with the Kaggle CLI.

The ``kaggle`` package authenticates when it is imported and exits the process when it finds
no credentials, so it is never imported here: the ``kaggle`` command runs as a subprocess,
after a credential check that fails fast with advice. Unpacking is a separate, offline
function (:func:`extract_archive`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path, PurePosixPath

from competition.errors import DataError, UserError

log = logging.getLogger(__name__)

__all__ = ["COMPETITION", "find_credentials", "find_kaggle", "download", "extract_archive", "has_data"]

COMPETITION = "data-science-bowl-2018"

_ADVICE = (
    "Create an API token on kaggle.com (Settings > API) and save it as ~/.kaggle/kaggle.json "
    "(or set KAGGLE_USERNAME and KAGGLE_KEY, or KAGGLE_API_TOKEN), accept the competition "
    f"rules at https://www.kaggle.com/c/{COMPETITION}/rules, then run `make data` again; "
    "or set DATA_DIR to an already extracted copy (e.g. DATA_DIR=../shared/dsb2018)"
)


def has_data(data_dir: str | Path) -> bool:
    """True when ``data_dir`` already holds ``stage1_train/`` and ``stage1_test/``."""
    data_dir = Path(data_dir)
    return (data_dir / "stage1_train").is_dir() and (data_dir / "stage1_test").is_dir()


def find_credentials(environ: Mapping[str, str] | None = None) -> str | None:
    """Where the Kaggle CLI would find credentials, or None when there are none.

    Checked in the CLI's order: ``KAGGLE_API_TOKEN``; ``<config>/access_token``;
    ``KAGGLE_USERNAME`` + ``KAGGLE_KEY``; ``<config>/kaggle.json``. ``<config>`` is
    ``KAGGLE_CONFIG_DIR`` when set, else ``~/.kaggle``. Only presence is checked, not
    validity.
    """
    env = os.environ if environ is None else environ
    if env.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    config_dir = Path(env["KAGGLE_CONFIG_DIR"]) if env.get("KAGGLE_CONFIG_DIR") else Path.home() / ".kaggle"
    if (config_dir / "access_token").is_file():
        return str(config_dir / "access_token")
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    if (config_dir / "kaggle.json").is_file():
        return str(config_dir / "kaggle.json")
    return None


def find_kaggle() -> str | None:
    """Path of the ``kaggle`` executable: on PATH, else beside this Python (a virtualenv)."""
    found = shutil.which("kaggle")
    if found:
        return found
    beside = Path(sys.executable).parent / "kaggle"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return None


def _check_network(host: str = "www.kaggle.com", port: int = 443, timeout: float = 10.0) -> None:
    """Fail fast when Kaggle cannot be reached (skipped when a proxy is configured)."""
    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        raise UserError(f"cannot reach {host}:{port} ({exc}); no network? {_ADVICE}") from None


def _tail(text: str | bytes | None, n_chars: int = 800) -> str:
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode(errors="replace")
    text = text.strip()
    return text[-n_chars:] if len(text) > n_chars else text


def download(
    data_dir: str | Path,
    competition: str = COMPETITION,
    *,
    timeout_s: float = 3600.0,
    keep_archive: bool = False,
) -> Path:
    """Download the competition's files with the Kaggle CLI and unpack them into ``data_dir``.

    Does nothing (logs so) when ``data_dir`` already has ``stage1_train/`` and
    ``stage1_test/``. Otherwise checks credentials and the network before downloading, runs
    ``kaggle competitions download <competition> -p <data_dir>`` and unpacks the archive
    with :func:`extract_archive` (the archive is deleted afterwards unless
    ``keep_archive``).

    Args:
        data_dir: where the data goes (e.g. ``data/dsb2018``).
        competition: Kaggle competition slug.
        timeout_s: limit for the whole download subprocess.
        keep_archive: keep the downloaded zip after unpacking.

    Returns:
        ``data_dir``.

    Raises:
        UserError: no credentials, no ``kaggle`` executable, no network, the CLI failing
            (e.g. 403: rules not accepted) or timing out; messages say what to do.
        DataError: a corrupt or unsafe archive.
    """
    data_dir = Path(data_dir)
    if has_data(data_dir):
        log.info("%s already has stage1_train/ and stage1_test/; nothing to download", data_dir)
        return data_dir
    source = find_credentials()
    if source is None:
        raise UserError(f"no Kaggle credentials found. {_ADVICE}")
    log.info("Kaggle credentials: %s", source)
    kaggle = find_kaggle()
    if kaggle is None:
        raise UserError(f"the `kaggle` command is not installed (pip install kaggle). {_ADVICE}")
    _check_network()
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [kaggle, "competitions", "download", competition, "-p", str(data_dir)]
    log.info("running %s", " ".join(command))
    try:
        result = subprocess.run(
            command, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout_s, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise UserError(
            f"`kaggle competitions download` did not finish in {timeout_s:.0f} s: {_tail(exc.stderr)}. {_ADVICE}"
        ) from None
    except OSError as exc:
        raise UserError(f"cannot run {kaggle}: {exc}. {_ADVICE}") from None
    if result.returncode != 0:
        output = _tail(result.stderr) or _tail(result.stdout)
        hint = " (403: accept the competition rules on the website)" if "403" in output else ""
        raise UserError(
            f"`kaggle competitions download` failed with status {result.returncode}{hint}: {output}. {_ADVICE}"
        )
    archives = sorted(data_dir.glob("*.zip"))
    if not archives:
        raise UserError(f"the Kaggle CLI reported success but left no zip in {data_dir}: {_tail(result.stdout)}")
    outer = data_dir / f"{competition}.zip"
    for archive in [outer] if outer in archives else archives:
        extract_archive(archive, data_dir)
        if not keep_archive:
            archive.unlink()
    if not has_data(data_dir):
        log.warning("%s has no stage1_train/ and stage1_test/ after unpacking", data_dir)
    return data_dir


def _safe_name(name: str, archive: Path) -> PurePosixPath:
    """A member name as a relative path, refusing absolute paths and ``..`` (zip slip)."""
    normalised = name.replace("\\", "/")
    path = PurePosixPath(normalised)
    parts = path.parts
    if normalised.startswith("/") or ".." in parts or (parts and ":" in parts[0]):
        raise DataError(f"{archive}: refusing unsafe path {name!r} in archive")
    return path


def _members(archive: zipfile.ZipFile, path: Path) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    members = []
    for info in archive.infolist():
        name = _safe_name(info.filename, path)
        if info.is_dir() or not name.parts or name.parts[0] == "__MACOSX" or name.name == ".DS_Store":
            continue
        members.append((info, name))
    return members


def _extract_members(archive: zipfile.ZipFile, members, dest: Path) -> None:
    root = dest.resolve()
    for info, name in members:
        target = (dest / Path(*name.parts)).resolve()
        if root != target and root not in target.parents:
            raise DataError(f"refusing to write {target} outside {dest}")
        target.parent.mkdir(parents=True, exist_ok=True)
        with archive.open(info) as source, target.open("wb") as sink:
            shutil.copyfileobj(source, sink, length=1 << 20)


def _nested_destination(name: PurePosixPath, members):
    """Where a nested zip goes: (folder name under data_dir or None, members to write there).

    A zip that holds a single file (``stage1_solution.csv.zip``) -> ``(None, members)``:
    written into data_dir itself. ``stage1_train.zip`` with ``<id>/images/...`` inside ->
    ``("stage1_train", members)``; one whose members all sit under a top folder named after
    the zip -> the same folder, with that top level stripped.
    """
    stem = name.name[: -len(".zip")]
    if len(members) == 1 and len(members[0][1].parts) == 1:
        return None, members
    if members and all(len(m.parts) > 1 and m.parts[0] == stem for _, m in members):
        return stem, [(info, PurePosixPath(*m.parts[1:])) for info, m in members]
    return stem, members


def extract_archive(zip_path: str | Path, data_dir: str | Path) -> list[Path]:
    """Unpack a Kaggle competition zip, and the zips inside it, into ``data_dir``.

    Plain members go to ``data_dir/<name>``. A nested ``X.zip`` is unpacked in turn: into
    ``data_dir/X/`` when it holds a folder tree (``stage1_train.zip`` -> ``stage1_train/``,
    ``stage1_test.zip``, ``stage2_test_final.zip``; a top folder ``X/`` inside is not
    doubled), into ``data_dir`` when it holds a single file (``stage1_solution.csv.zip`` ->
    ``stage1_solution.csv``). A folder is unpacked into a temporary folder and renamed when complete, so an
    interrupted run never leaves a half ``stage1_train/``; an existing one is replaced.
    ``__MACOSX/`` and ``.DS_Store`` entries are skipped.

    Args:
        zip_path: the downloaded archive.
        data_dir: destination (created).

    Returns:
        The top-level paths written, sorted.

    Raises:
        DataError: a corrupt zip, or a member whose path is absolute or contains ``..``.
    """
    zip_path = Path(zip_path)
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    written: set[Path] = set()
    try:
        with zipfile.ZipFile(zip_path) as archive:
            members = _members(archive, zip_path)
            for info, name in members:
                if name.suffix.lower() == ".zip":
                    # Copy the nested zip out first: seeking inside a compressed member is slow.
                    fd, tmp = tempfile.mkstemp(prefix=".nested-", suffix=".zip", dir=data_dir)
                    try:
                        with os.fdopen(fd, "wb") as sink, archive.open(info) as source:
                            shutil.copyfileobj(source, sink, length=1 << 20)
                        written.update(_extract_nested(Path(tmp), name, data_dir))
                    finally:
                        with contextlib.suppress(FileNotFoundError):
                            os.unlink(tmp)
                else:
                    _extract_members(archive, [(info, name)], data_dir)
                    written.add(data_dir / name.parts[0])
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise DataError(f"cannot unpack {zip_path}: {exc}") from None
    log.info("unpacked %s into %s: %s", zip_path.name, data_dir, ", ".join(sorted(p.name for p in written)))
    return sorted(written)


def _extract_nested(tmp_zip: Path, name: PurePosixPath, data_dir: Path) -> list[Path]:
    try:
        with zipfile.ZipFile(tmp_zip) as inner:
            folder, members = _nested_destination(name, _members(inner, Path(name.name)))
            if folder is None:
                _extract_members(inner, members, data_dir)
                return sorted({data_dir / m.parts[0] for _, m in members})
            final = data_dir / folder
            staging = Path(tempfile.mkdtemp(prefix=f".{folder}.", suffix=".partial", dir=data_dir))
            try:
                _extract_members(inner, members, staging)
                if final.exists():
                    shutil.rmtree(final)
                staging.rename(final)
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            return [final]
    except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError) as exc:
        raise DataError(f"cannot unpack nested archive {name}: {exc}") from None
