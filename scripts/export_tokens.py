"""Write a corpus's tokenized train and held-out streams as a token set, to train elsewhere.

    python scripts/export_tokens.py --out .tokens/stdlib-2048       # this Python's stdlib, 2048
    python scripts/export_tokens.py --corpus DIR --vocab-size 300 --out DIR
    sparse-lens train --preset gpu --tokens .tokens/stdlib-2048 --out runs/gpu

The default corpus is this interpreter's standard library, which another machine's Python does
not share; the token set carries it. The streams are exactly the ones `sparse-lens train` builds
from the same corpus (its default tokenizer for the standard library, one trained on the
corpus's train split otherwise, or --tokenizer FILE), so a run from the set trains on the same
batches and evaluates on the same held-out windows (see sparse_lens/train/token_set.py).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from sparse_lens.defaults import HELDOUT_FRACTION
from sparse_lens.errors import SparseLensError
from sparse_lens.train.data import load_train_data
from sparse_lens.train.token_set import export_token_set, read_manifest


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, metavar="DIR", help="token set directory")
    parser.add_argument(
        "--corpus",
        nargs="+",
        default=[],
        metavar="PATH",
        help="directories, globs, .py/.txt/.jsonl files (default: the standard library)",
    )
    parser.add_argument("--vocab-size", type=int, default=2048, help="ids including EOT")
    parser.add_argument("--tokenizer", metavar="FILE", help="a tokenizer.json to encode with")
    parser.add_argument("--heldout-fraction", type=float, default=HELDOUT_FRACTION)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    try:
        data = load_train_data(
            args.corpus,
            args.vocab_size,
            seed=0,  # batches are drawn at training time: the streams do not depend on it
            heldout_fraction=args.heldout_fraction,
            tokenizer=args.tokenizer,
            progress=not args.no_progress,
        )
        directory = export_token_set(data, args.out, args.heldout_fraction)
        manifest = read_manifest(directory)
    except SparseLensError as error:
        print(f"export_tokens: error: {error}", file=sys.stderr)
        return 2
    size = sum(f.stat().st_size for f in directory.iterdir())
    print(f"corpus: {manifest.corpus}")
    print(
        f"wrote {directory}: {manifest.train['n_tokens']:,} train and "
        f"{manifest.heldout['n_tokens']:,} held-out tokens, vocab {manifest.vocab_size} "
        f"(tokenizer {manifest.tokenizer_hash[:12]}), {size / 2**20:.1f} MiB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
