"""Print the local leaderboard history (every scoring run), best first."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "print the local leaderboard history, best first"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--path", type=Path, default=Path("submissions/leaderboard.csv"), help="history CSV")
    parser.add_argument("--by", default="score", help="column to sort by (score, fluorescence, histology, ...)")


def run(args: argparse.Namespace) -> int:
    from competition import leaderboard

    print(leaderboard.format_rows(leaderboard.read_rows(args.path), by=args.by))
    return 0
