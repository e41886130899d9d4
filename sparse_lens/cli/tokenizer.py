"""`sparse-lens tokenizer train`: train the byte-level BPE tokenizer on a corpus's train split.

Only the train split is used, so held-out files stay unseen by every learned stage. Heavy modules
(tokenizers, the corpus reader) are imported inside the handler to keep `--help` fast.
"""

from __future__ import annotations

import argparse

from sparse_lens.defaults import HELDOUT_FRACTION


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "tokenizer", help="train a BPE tokenizer on a corpus", description=__doc__
    )
    actions = parser.add_subparsers(dest="tokenizer_command", required=True, metavar="ACTION")
    train = actions.add_parser(
        "train",
        help="train on a corpus's train split and write tokenizer.json",
        description="Train a byte-level BPE tokenizer (<|endoftext|> is the last id) on the "
        "train split of a corpus (default: this Python's standard library).",
    )
    train.add_argument(
        "--corpus",
        nargs="+",
        metavar="PATH",
        help="directories, glob patterns, .py/.txt/.jsonl files or saved datasets "
        "(default: the standard library)",
    )
    train.add_argument("--vocab-size", type=int, default=2048, help="ids including EOT")
    train.add_argument("--heldout-fraction", type=float, default=HELDOUT_FRACTION)
    train.add_argument("--out", required=True, metavar="FILE", help="tokenizer.json to write")
    train.add_argument(
        "--seed",
        type=int,
        default=0,
        help="accepted like every command's --seed; BPE training has no randomness, so the "
        "result depends only on the corpus and vocabulary size",
    )
    train.set_defaults(func=_train)


def _train(args: argparse.Namespace) -> int:
    import time

    from sparse_lens.data.corpus import load_corpus
    from sparse_lens.data.tokenizer import EOT, save_tokenizer, tokenizer_hash, train_tokenizer

    corpus = load_corpus(args.corpus, heldout_fraction=args.heldout_fraction)
    print(f"corpus: {corpus.describe()}")
    start = time.perf_counter()
    tokenizer = train_tokenizer((d.text for d in corpus.train), vocab_size=args.vocab_size)
    seconds = time.perf_counter() - start
    path = save_tokenizer(tokenizer, args.out)
    print(
        f"tokenizer: {len(corpus.train)} train files, vocab {tokenizer.get_vocab_size()} "
        f"({EOT} = {tokenizer.token_to_id(EOT)}), sha256 {tokenizer_hash(tokenizer)[:16]}, "
        f"trained in {seconds:.1f} s"
    )
    print(f"wrote {path}")
    return 0
