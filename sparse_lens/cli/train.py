"""`sparse-lens train`: train a weight-sparse (or dense) transformer on Python code.

    sparse-lens train [--preset NAME | --config FILE] --out DIR [--corpus PATH ... | --tokens DIR]
                      [--steps N] [--seed S] [--resume] [--set key=value ...] [--dense]
                      [--max-minutes M]

Precedence: the preset or config file, then ``--set`` overrides, then the explicit flags
(``--corpus``, ``--tokens``, ``--steps``, ``--seed``, ``--dense``). ``--tokens`` trains from a
token set written by scripts/export_tokens.py (the corpus split, tokenized, with its tokenizer),
e.g. on a machine whose Python has another standard library. ``--max-minutes`` stops in time to
evaluate and checkpoint within that wall time; the unfinished run continues with ``--resume``. With ``--resume`` the checkpoint's own
config is used (a preset/config given again must describe the same architecture) and only the
explicit overrides apply on top, e.g. ``--steps`` to train longer. The same command runs data-parallel under
``torchrun --nproc_per_node N -m sparse_lens train ...``. Preset choices come from the presets
directory (sparse_lens/train/presets), so a new preset file is a new choice.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    from sparse_lens.train.config import preset_names

    presets = preset_names()
    parser = subparsers.add_parser(
        "train",
        help="train a weight-sparse transformer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--preset",
        metavar="NAME",
        help=f"a shipped recipe: {', '.join(presets)} (default: cpu)",
    )
    source.add_argument("--config", metavar="FILE", help="a TOML file with [model] and [train]")
    parser.add_argument("--out", required=True, metavar="DIR", help="output / checkpoint directory")
    parser.add_argument(
        "--corpus",
        nargs="+",
        metavar="PATH",
        help="directories, glob patterns, .py/.txt/.jsonl files (default: the standard library)",
    )
    parser.add_argument(
        "--tokens",
        metavar="DIR",
        help="train from a token set (scripts/export_tokens.py) instead of a corpus",
    )
    parser.add_argument("--steps", type=int, help="optimizer steps (overrides the preset)")
    parser.add_argument("--seed", type=int, help="seed for init and batch order")
    parser.add_argument("--resume", action="store_true", help="continue the checkpoint in --out")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override any [model] or [train] field, typed by the field (repeatable)",
    )
    parser.add_argument(
        "--dense", action="store_true", help="train a dense model (L0 = 1: no projection)"
    )
    parser.add_argument(
        "--max-minutes",
        type=float,
        metavar="M",
        help="stop, evaluate and checkpoint within M minutes of training (resumable)",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sparse_lens.train.config import load_config_file, load_preset
    from sparse_lens.train.runner import train_from_config

    if args.config:
        config = load_config_file(args.config)
    elif args.preset:
        config = load_preset(args.preset)
    elif args.resume:
        config = None  # the checkpoint's own
    else:
        config = load_preset("cpu")
    overrides = list(args.overrides)
    if args.corpus:
        overrides.append("corpus=[" + ", ".join(_quote(p) for p in args.corpus) + "]")
    if args.tokens:
        overrides.append(f"tokens={_quote(args.tokens)}")
    if args.steps is not None:
        overrides.append(f"steps={args.steps}")
    if args.seed is not None:
        overrides.append(f"seed={args.seed}")
    if args.dense:
        overrides.append("l0_target=1.0")
    result = train_from_config(
        config,
        args.out,
        resume=args.resume,
        overrides=overrides,
        progress=not args.no_progress,
        max_minutes=args.max_minutes,
    )
    if result.rank != 0:
        return 130 if result.interrupted and not result.time_limited else 0
    if result.time_limited and result.interrupted:
        print(
            f"sparse-lens: stopped by --max-minutes at step {result.steps}; checkpoint saved in "
            f"{result.out_dir} (unfinished; continue with --resume)",
            file=sys.stderr,
        )
    elif result.interrupted:
        print(
            f"sparse-lens: interrupted at step {result.steps}; checkpoint saved in "
            f"{result.out_dir} (continue with --resume)",
            file=sys.stderr,
        )
        return 130
    held = "-" if result.heldout_loss is None else f"{result.heldout_loss:.4f}"
    rate = result.tokens_seen / max(result.wall_time, 1e-9)
    train = "-" if result.train_loss is None else f"{result.train_loss:.4f}"
    print(
        f"trained {result.steps} steps ({result.tokens_seen:,} tokens) in "
        f"{result.wall_time:.1f} s ({rate:,.0f} tokens/s): train loss {train}, held-out loss "
        f"{held}; wrote {result.out_dir}"
    )
    return 0


def _quote(path: str) -> str:
    """Paths go through the ``--set`` parser as a TOML array item (commas, spaces are safe)."""
    return '"' + path.replace("\\", "\\\\").replace('"', '\\"') + '"'
