"""Classify the images of a split as fluorescence, histology or brightfield.

Writes ``ImageId,type`` (sorted by ImageId) and prints the number of images of each type.
The rule is documented in :func:`competition.data.types.classify_image`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "classify a split's images by type (fluorescence/histology/brightfield) into a CSV"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("split_dir", type=Path, metavar="SPLIT_DIR", help="e.g. $DATA_DIR/stage1_train")
    parser.add_argument(
        "--out", type=Path, default=None, help="output CSV (default: build/types/<split name>.csv under the cwd)"
    )
    parser.add_argument("--sheets", type=Path, default=None, metavar="DIR", help="also save one contact sheet per type here")
    parser.add_argument("--skip-bad", action="store_true", help="skip unreadable images instead of failing")


def run(args: argparse.Namespace) -> int:
    from competition.data.types import IMAGE_TYPES, classify_split, save_contact_sheets, write_types

    split_dir: Path = args.split_dir
    out = args.out if args.out is not None else Path("build") / "types" / f"{split_dir.resolve().name}.csv"
    types = classify_split(split_dir, skip_bad=args.skip_bad)
    write_types(types, out)
    for kind in IMAGE_TYPES:
        print(f"{kind} {sum(1 for k in types.values() if k == kind)}")
    print(f"wrote {out}")
    if args.sheets is not None:
        for sheet in save_contact_sheets(split_dir, types, args.sheets):
            print(f"wrote {sheet}")
    return 0
