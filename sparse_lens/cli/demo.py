"""`sparse-lens demo`: the README's main job, one task circuit from model to report.

    sparse-lens demo [--model NAME_OR_DIR] [--task single_double_quote] [--tasks-dir DIR]
                     [--out sparse-lens-demo.html] [--reprune] [--no-progress]

A thin shell over :func:`sparse_lens.demo.run_demo`: the readable account (circuit size, each
node with a role guess, each edge, the validation losses and a verdict) goes to stdout, stage
lines and progress bars to stderr. Exit code 0 when the circuit meets its target loss, 1 when no
node set does (the account says so and shows the closest one as a miss), 2 for a user error.
"""

from __future__ import annotations

import argparse

from sparse_lens.cli.options import add_tasks_dir
from sparse_lens.defaults import MEAN_TOKENS, N_PAIRS, N_RANDOM_SETS, TARGET_LOSS


def register(subparsers: argparse._SubParsersAction) -> None:
    from sparse_lens.demo import DEFAULT_MODEL, DEFAULT_OUT, DEFAULT_TASK

    parser = subparsers.add_parser(
        "demo",
        help="find, validate and explain a task circuit of a shipped model, with an HTML report",
        description="Load a model (default: the shipped weight-sparse model), take its circuit "
        "for a task (the one shipped with the model if it matches the weights, else prune one "
        "under mean ablation), validate it against random node sets of the same size and type "
        "mix, print each node's role guess, each edge and the losses, and write an offline "
        "HTML report.",
    )
    parser.add_argument(
        "--model",
        default=DEFAULT_MODEL,
        help=f"model directory or shipped model name (default {DEFAULT_MODEL})",
    )
    parser.add_argument("--task", default=DEFAULT_TASK, help=f"task name (default {DEFAULT_TASK})")
    add_tasks_dir(parser)
    parser.add_argument(
        "--out",
        default=DEFAULT_OUT,
        metavar="FILE.html",
        help=f"report path (default {DEFAULT_OUT})",
    )
    parser.add_argument(
        "--reprune", action="store_true", help="prune a new circuit even if the model ships one"
    )
    parser.add_argument(
        "--target-loss",
        type=float,
        help=f"loss a pruned circuit must reach (default {TARGET_LOSS}; a shipped circuit with another "
        "target is not used)",
    )
    parser.add_argument(
        "--steps", type=int, help="optimiser steps per pruning run (default: PruneConfig's)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of pruning and random sets")
    parser.add_argument(
        "--n-pairs",
        type=int,
        default=N_PAIRS,
        help=f"test-split pairs to validate on (default {N_PAIRS})",
    )
    parser.add_argument(
        "--n-random",
        type=int,
        default=N_RANDOM_SETS,
        help=f"random node sets (default {N_RANDOM_SETS})",
    )
    parser.add_argument(
        "--heldout-windows",
        type=int,
        default=32,
        help="held-out pretraining windows searched for node peaks (default 32; 0: skip)",
    )
    parser.add_argument(
        "--corpus",
        nargs="+",
        metavar="PATH",
        help="corpus for the mean cache and held-out windows (default: the model's training "
        "corpus, else the stdlib)",
    )
    parser.add_argument(
        "--mean-tokens", type=int, default=MEAN_TOKENS, help="tokens the means average over"
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="no stage lines or progress bars"
    )
    parser.set_defaults(func=run_demo_command)


def run_demo_command(args: argparse.Namespace) -> int:
    from sparse_lens.demo import format_demo, run_demo

    result = run_demo(
        args.model,
        args.task,
        args.out,
        reprune=args.reprune,
        target_loss=args.target_loss,
        steps=args.steps,
        seed=args.seed,
        n_pairs=args.n_pairs,
        n_random=args.n_random,
        heldout_windows=args.heldout_windows,
        corpus=args.corpus,
        mean_tokens=args.mean_tokens,
        tasks_dir=args.tasks_dir,
        progress=not args.no_progress,
    )
    print(format_demo(result), flush=True)
    return result.exit_code
