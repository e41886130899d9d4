"""Token files and batches: a corpus split tokenized once, then sampled reproducibly.

A split is tokenized once into a flat ``uint16`` ``.npy`` file (each document followed by
``<|endoftext|>``, nanoGPT's layout) under the cache dir, keyed by the corpus manifest hash, the
split and the tokenizer hash, and memory-mapped afterwards: every training process shares one
copy in the page cache and restarts cost nothing.

Training batches are packed windows of ``n_ctx`` tokens at random offsets. :func:`get_batch` is a
pure function of ``(seed, step)``: a resumed run sees exactly the batches it would have seen, and
the global batch is the same for any number of data-parallel ranks (each takes a contiguous
slice), so changing ``world_size`` does not change what the model trains on. Evaluation uses
fixed windows (:func:`eval_batches`), so held-out losses are comparable across runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Int, Integer, UInt16
from tokenizers import Tokenizer
from tqdm.auto import tqdm

from sparse_lens.data.corpus import Corpus, Document, cache_dir
from sparse_lens.data.tokenizer import EOT, tokenizer_hash
from sparse_lens.errors import SparseLensError
from sparse_lens.io.atomic import atomic_path

TOKEN_DTYPE = np.uint16
# Bump when the file layout changes (e.g. where EOT goes), so old cached files are not reused.
FORMAT_VERSION = 1
_ENCODE_CHUNK = 64  # documents per encode_batch call: parallel enough, bounded memory


def token_file_path(
    corpus: Corpus, split: str, tokenizer: Tokenizer, directory: str | Path | None = None
) -> Path:
    """Where :func:`split_tokens` stores this (corpus, split, tokenizer) combination."""
    corpus.split(split)  # validates the split name
    key = hashlib.sha256(
        f"{FORMAT_VERSION}|{corpus.manifest_hash}|{split}|{tokenizer_hash(tokenizer)}".encode()
    ).hexdigest()
    root = Path(directory) if directory is not None else cache_dir() / "tokens"
    return root / f"{split}-{key[:24]}.npy"


def split_tokens(
    corpus: Corpus,
    split: str,
    tokenizer: Tokenizer,
    directory: str | Path | None = None,
    progress: bool = True,
) -> UInt16[np.ndarray, " n_tokens"]:
    """The tokens of one split as a read-only memory map, tokenizing (once) if not cached."""
    path = token_file_path(corpus, split, tokenizer, directory)
    if not path.is_file():
        tokens = encode_documents(corpus.split(split), tokenizer, progress=progress, desc=split)
        _save_atomic(path, tokens)
    try:
        return np.load(path, mmap_mode="r")
    except (ValueError, OSError) as error:
        raise SparseLensError(
            f"corrupt token cache file ({error}); delete it to re-tokenize", path=path
        ) from None


def encode_documents(
    documents: Sequence[Document],
    tokenizer: Tokenizer,
    progress: bool = True,
    desc: str = "tokenize",
) -> UInt16[np.ndarray, " n_tokens"]:
    """Tokenize documents in parallel (``encode_batch``) into one array, each followed by EOT.

    Document text is encoded literally: a ``<|endoftext|>`` string inside a file becomes ordinary
    tokens, so only real file boundaries carry the EOT id.
    """
    vocab_size = tokenizer.get_vocab_size()
    if vocab_size > np.iinfo(TOKEN_DTYPE).max + 1:
        raise SparseLensError(
            f"vocabulary of {vocab_size} does not fit uint16 token files (max 65536)",
            field="vocab_size",
        )
    eot = tokenizer.token_to_id(EOT)
    if eot is None:
        raise SparseLensError(f"the tokenizer has no {EOT} token; retrain it", field="tokenizer")
    literal = Tokenizer.from_str(tokenizer.to_str())  # a copy: the caller's stays unchanged
    literal.encode_special_tokens = True
    encode = getattr(literal, "encode_batch_fast", literal.encode_batch)  # fast skips offsets
    chunks: list[np.ndarray] = []
    n_tokens = 0
    bar = tqdm(total=len(documents), desc=desc, unit="file", disable=not progress)
    for start in range(0, len(documents), _ENCODE_CHUNK):
        batch = documents[start : start + _ENCODE_CHUNK]
        for encoding in encode([d.text for d in batch], add_special_tokens=False):
            ids = np.asarray(encoding.ids + [eot], dtype=TOKEN_DTYPE)
            chunks.append(ids)
            n_tokens += len(ids)
        bar.update(len(batch))
        bar.set_postfix(tokens=f"{n_tokens:,}")
    bar.close()
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=TOKEN_DTYPE)


def _save_atomic(path: Path, tokens: np.ndarray) -> None:
    with atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, tokens)


def check_token_ids(
    tokens: Integer[np.ndarray, "*shape"] | Integer[torch.Tensor, "*shape"], d_vocab: int
) -> None:
    """Raise SparseLensError naming the first id outside ``[0, d_vocab)``.

    Run it once on a token file before training: an embedding lookup with a bad id fails deep
    inside torch (or silently reads the wrong row on some backends).
    """
    array = tokens.detach().cpu().numpy() if isinstance(tokens, torch.Tensor) else tokens
    bad = np.flatnonzero((array.reshape(-1) >= d_vocab) | (array.reshape(-1) < 0))
    if bad.size:
        first = int(bad[0])
        raise SparseLensError(
            f"token id {int(array.reshape(-1)[first])} at position {first} is outside the "
            f"vocabulary [0, {d_vocab}) ({bad.size} bad ids); the tokens and the model's "
            "d_vocab come from different tokenizers",
            field="d_vocab",
        )


def get_batch(
    tokens: Integer[np.ndarray, " n_tokens"],
    step: int,
    batch_size: int,
    n_ctx: int,
    seed: int,
    rank: int = 0,
    world_size: int = 1,
) -> Int[torch.Tensor, "rank_batch n_ctx"]:
    """Training batch ``step``: ``batch_size`` windows of ``n_ctx`` tokens at random offsets.

    The offsets depend only on ``(seed, step)``, never on earlier calls, so resuming at step s
    reproduces the original run. With ``world_size`` > 1 this returns rank ``rank``'s contiguous
    ``batch_size // world_size`` rows of the same global batch. The model shifts targets itself,
    so a window is both input and labels.
    """
    _check_window(len(tokens), n_ctx)
    if seed < 0 or step < 0:
        raise SparseLensError(f"seed and step must be >= 0 (got {seed}, {step})", field="seed")
    if not 0 <= rank < world_size or batch_size % world_size:
        raise SparseLensError(
            f"batch_size {batch_size} must split evenly over world_size {world_size} (rank {rank})",
            field="batch_size",
        )
    # SeedSequence mixes (seed, step) into an independent stream per step; the tag keeps this
    # stream distinct from any other use of the same seed.
    rng = np.random.default_rng([seed, step, 0x6261746368])
    starts = rng.integers(0, len(tokens) - n_ctx + 1, size=batch_size)
    per_rank = batch_size // world_size
    starts = starts[rank * per_rank : (rank + 1) * per_rank]
    return _gather(tokens, starts, n_ctx)


def eval_batches(
    tokens: Integer[np.ndarray, " n_tokens"],
    batch_size: int,
    n_ctx: int,
    max_windows: int | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> Iterator[Int[torch.Tensor, "batch n_ctx"]]:
    """Fixed evaluation batches: the first ``max_windows`` non-overlapping windows, in order.

    Windows start at 0, n_ctx, 2*n_ctx, ...; the last batch may be smaller. With ``world_size``
    > 1, rank r takes windows r, r + world_size, ..., so the ranks together cover each once.
    """
    _check_window(len(tokens), n_ctx)
    if not 0 <= rank < world_size:
        raise SparseLensError(f"rank {rank} is outside world_size {world_size}", field="rank")
    n_windows = len(tokens) // n_ctx
    if max_windows is not None:
        n_windows = min(n_windows, max_windows)
    starts = np.arange(n_windows, dtype=np.int64)[rank::world_size] * n_ctx
    for i in range(0, len(starts), batch_size):
        yield _gather(tokens, starts[i : i + batch_size], n_ctx)


def _check_window(n_tokens: int, n_ctx: int) -> None:
    if n_ctx < 1 or n_tokens < n_ctx:
        raise SparseLensError(
            f"a split of {n_tokens} tokens cannot fill a window of n_ctx={n_ctx}; use a larger "
            "corpus or a smaller n_ctx",
            field="n_ctx",
        )


def _gather(
    tokens: Integer[np.ndarray, " n_tokens"], starts: Integer[np.ndarray, " batch"], n_ctx: int
) -> Int[torch.Tensor, "batch n_ctx"]:
    index = starts[:, None] + np.arange(n_ctx)[None, :]
    return torch.from_numpy(np.asarray(tokens[index], dtype=np.int64))
