"""Download the competition data from Kaggle and unpack it (``make data`` calls this).

Needs Kaggle credentials (``~/.kaggle/kaggle.json`` or ``KAGGLE_USERNAME``/``KAGGLE_KEY``),
the competition rules accepted on kaggle.com, and network access. Without them, point
``DATA_DIR`` at an extracted copy instead (e.g. ``DATA_DIR=../shared/dsb2018``). Does
nothing when the folder already has ``stage1_train/`` and ``stage1_test/``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "download and unpack the competition data with the Kaggle CLI"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, default=Path("data/dsb2018"), help="where to put the data")
    parser.add_argument("--competition", default="data-science-bowl-2018", help="Kaggle competition slug")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed for the download")
    parser.add_argument("--keep-archive", action="store_true", help="keep the downloaded zip after unpacking")


def run(args: argparse.Namespace) -> int:
    from competition.data.download import download, has_data

    already = has_data(args.data_dir)
    download(args.data_dir, args.competition, timeout_s=args.timeout, keep_archive=args.keep_archive)
    if already:
        print(f"{args.data_dir} already has stage1_train/ and stage1_test/; nothing to do")
    else:
        print(f"data ready in {args.data_dir}")
    return 0
