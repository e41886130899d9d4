"""The `sparse-lens` command line: a thin shell over the Python API.

Every module in this package that defines ``register(subparsers)`` adds its subcommands; the
registry is the package itself, so a new command is a new module and no list drifts. Each
subcommand sets ``func(args) -> int | None`` on its parser. A :class:`SparseLensError` (anything
the user can fix) becomes one line on stderr and exit code 2; argparse's own usage errors also
exit 2. Heavy imports (torch, transformer_lens) happen inside the handlers so `--help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from sparse_lens.errors import SparseLensError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sparse-lens",
        description="Train weight-sparse transformers, find and validate their circuits.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module_info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if module_info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{module_info.name}")
        register = getattr(module, "register", None)
        if register is not None:
            register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except SparseLensError as error:
        print(f"sparse-lens: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("sparse-lens: interrupted", file=sys.stderr)
        return 130
