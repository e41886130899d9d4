"""`sparse-lens import-openai SRC DST`: convert an OpenAI circuit_sparsity model directory.

SRC holds their ``beeg_config.json`` and ``final_model.pt`` (and optionally ``vocab.bpe`` +
``encoder.json``); DST becomes a sparse-lens checkpoint with the same logits. The mapping and
what is refused are documented in :mod:`sparse_lens.io.openai`. torch and the model are imported
inside the handler so `--help` stays fast.
"""

from __future__ import annotations

import argparse


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "import-openai",
        help="convert an OpenAI circuit_sparsity checkpoint into a sparse-lens checkpoint",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "src", metavar="SRC", help="directory with beeg_config.json and final_model.pt"
    )
    parser.add_argument("dst", metavar="DST", help="sparse-lens checkpoint directory to write")
    parser.add_argument(
        "--tokenizer-dir",
        metavar="DIR",
        default=None,
        help="directory with their vocab.bpe + encoder.json (default: SRC, if the files are "
        "there; without them the model works on token ids)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="accepted like every command's --seed; importing has no randomness",
    )
    parser.set_defaults(func=_import)


def _import(args: argparse.Namespace) -> int:
    import torch

    from sparse_lens.io.openai import import_openai
    from sparse_lens.model import sparse_targets

    model = import_openai(args.src, args.dst, tokenizer_dir=args.tokenizer_dir)
    cfg = model.cfg
    nonzero = total = 0
    for target in sparse_targets(model):
        if target.kind == "matrix":  # the weights joining node sites
            nonzero += int(torch.count_nonzero(target.param))
            total += target.param.numel()
    density = f"{nonzero / total:.2%}" if total else "n/a"
    tokenizer = "yes" if model.tokenizer is not None else "no (token ids only)"
    print(
        f"imported {args.src} -> {args.dst}: {cfg.n_layers} layers, d_model {cfg.d_model}, "
        f"{cfg.n_heads} heads, d_vocab {cfg.d_vocab}, afrac {cfg.afrac}, bigram {cfg.bigram_table}, "
        f"positions {cfg.positional_embedding_type}, sink {cfg.attn_sink}; "
        f"weight density {density}; tokenizer {tokenizer}"
    )
    return 0
