"""What the trainer reads: train / held-out token files, the tokenizer, and their identities.

A thin adapter over :mod:`sparse_lens.data`, so the trainer sees two methods (``batch(step)``
and ``eval_batches()``) and the provenance hashes it records in training.json. Batches are pure
functions of (seed, step), which is what makes resumed runs exact.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Int, Integer
from tokenizers import Tokenizer

from sparse_lens.data import (
    cache_dir,
    check_token_ids,
    default_tokenizer,
    eval_batches,
    get_batch,
    load_corpus,
    load_tokenizer,
    save_tokenizer,
    split_tokens,
    tokenizer_hash,
    train_tokenizer,
)
from sparse_lens.data.tokenizer import RECIPE_VERSION
from sparse_lens.defaults import HELDOUT_FRACTION
from sparse_lens.errors import SparseLensError


@dataclass
class TrainData:
    """Token streams of one corpus under one tokenizer."""

    train_tokens: Integer[np.ndarray, " n_train"]
    heldout_tokens: Integer[np.ndarray, " n_heldout"]
    tokenizer: Tokenizer
    manifest_hash: str
    tokenizer_hash: str
    seed: int = 0
    description: str = ""

    def batch(
        self, step: int, batch_size: int, n_ctx: int, rank: int = 0, world_size: int = 1
    ) -> Int[torch.Tensor, "rank_batch n_ctx"]:
        """This rank's slice of global batch ``step`` (the same for any world size)."""
        return get_batch(self.train_tokens, step, batch_size, n_ctx, self.seed, rank, world_size)

    def eval_batches(
        self, batch_size: int, n_ctx: int, n_batches: int, rank: int = 0, world_size: int = 1
    ) -> Iterator[Int[torch.Tensor, "batch n_ctx"]]:
        """Fixed held-out windows: the same ones at every evaluation and in every run."""
        per_rank = max(1, batch_size // world_size)
        return eval_batches(
            self.heldout_tokens, per_rank, n_ctx, n_batches * batch_size, rank, world_size
        )

    def check(self, n_ctx: int, d_vocab: int) -> None:
        """Fail early (before any training) on windows too long or ids outside the vocab."""
        for name, tokens in (("train", self.train_tokens), ("held-out", self.heldout_tokens)):
            if len(tokens) < n_ctx + 1:
                raise SparseLensError(
                    f"the {name} split has {len(tokens)} tokens, fewer than one window of "
                    f"n_ctx={n_ctx}; use a larger corpus, a larger heldout_fraction or a "
                    "smaller n_ctx",
                    field="n_ctx",
                )
            check_token_ids(tokens, d_vocab)


def corpus_tokenizer(corpus, vocab_size: int) -> Tokenizer:
    """A BPE tokenizer trained on the corpus's train split, cached by its manifest hash.

    Uses the same cache naming as :func:`sparse_lens.data.default_tokenizer`, so the default
    corpus gets the very same file.
    """
    path = (
        cache_dir()
        / "tokenizers"
        / (f"bpe-v{RECIPE_VERSION}-{vocab_size}-{corpus.manifest_hash[:16]}.json")
    )
    if not path.is_file():
        save_tokenizer(train_tokenizer((d.text for d in corpus.train), vocab_size), path)
    return load_tokenizer(path)


def load_train_data(
    corpus_sources: list[str],
    vocab_size: int,
    seed: int,
    heldout_fraction: float = HELDOUT_FRACTION,
    tokenizer: Tokenizer | str | Path | None = None,
    progress: bool = True,
) -> TrainData:
    """Read the corpus, get its tokenizer (given, loaded, default or trained) and token files.

    An empty ``corpus_sources`` means the default corpus (the standard library).
    """
    corpus = load_corpus(corpus_sources or None, heldout_fraction=heldout_fraction)
    if not corpus.heldout:
        raise SparseLensError(
            "the corpus has no held-out file; add files or raise heldout_fraction",
            field="heldout_fraction",
        )
    if isinstance(tokenizer, (str, Path)) and str(tokenizer):
        tokenizer = load_tokenizer(tokenizer)
    if not isinstance(tokenizer, Tokenizer):
        if corpus_sources:
            tokenizer = corpus_tokenizer(corpus, vocab_size)
        else:
            tokenizer = default_tokenizer(vocab_size)
    return TrainData(
        train_tokens=split_tokens(corpus, "train", tokenizer, progress=progress),
        heldout_tokens=split_tokens(corpus, "heldout", tokenizer, progress=progress),
        tokenizer=tokenizer,
        manifest_hash=corpus.manifest_hash,
        tokenizer_hash=tokenizer_hash(tokenizer),
        seed=seed,
        description=corpus.describe(),
    )
