"""Command-line options that several subcommands share, declared once."""

from __future__ import annotations

import argparse


def add_tasks_dir(parser: argparse.ArgumentParser) -> None:
    """``--tasks-dir DIR`` (repeatable): folders of extra task files, as ``tasks_dir=``."""
    parser.add_argument(
        "--tasks-dir",
        action="append",
        metavar="DIR",
        help="a folder of extra task files (*.toml), added to the built-in tasks; repeat for "
        "several folders",
    )
