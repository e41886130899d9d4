"""`sparse-lens info`: what a model is (architecture) and how sparse it is (per-tensor nonzeros).

Reads a checkpoint directory or a shipped model name through
``SparseTransformer.from_pretrained``, so a missing directory or a corrupt file is the loader's
one-line :class:`~sparse_lens.errors.SparseLensError` (exit code 2). ``--example`` needs no
checkpoint: it builds a small random model projected to 1/16 weight density, which is what the
README's first command shows before anything has been trained.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "info",
        help="architecture and per-tensor weight sparsity of a model",
        description="Print a model's architecture and, per stored tensor, its shape, nonzeros "
        "and density, with totals (all tensors, weight matrices, sparsified tensors).",
    )
    parser.add_argument(
        "model",
        nargs="?",
        help="a model directory (config.json + model.safetensors) or a shipped model name",
    )
    parser.add_argument(
        "--example",
        action="store_true",
        help="describe a small random model projected to 1/16 weight density instead",
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the --example model (default 0)"
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")
    parser.set_defaults(func=run_info, _parser=parser)


def run_info(args: argparse.Namespace) -> int:
    if (args.model is None) == (not args.example):
        args._parser.error("give a MODEL directory or name, or --example (not both)")

    import json

    from sparse_lens.info import example_sparse_model, model_info

    if args.example:
        model = example_sparse_model(seed=args.seed)
        info = model_info(model, source=f"example (random, 1/16 weight density, seed {args.seed})")
    else:
        from sparse_lens.model import SparseTransformer

        info = model_info(SparseTransformer.from_pretrained(args.model), source=str(args.model))
    print(json.dumps(info.to_dict(), indent=2) if args.json else info.format())
    return 0
