"""A small byte-level BPE tokenizer for Python code.

The models are tiny (a 2048-token vocabulary by default), so the tokenizer is trained on the
corpus rather than borrowed from GPT-2: a small vocabulary spent on ``Ġin``, ``Ġelse``, ``Ġ==``
and indentation runs instead of English words. It follows GPT-2's recipe exactly (ByteLevel
pre-tokenizer with ``add_prefix_space=False``, byte-level decoder, no normalizer), so every byte
string is encodable and decoding round-trips text exactly.

Three guarantees the rest of the package relies on (docs/CONTRACTS.md):

- ``<|endoftext|>`` is the LAST id (``d_vocab - 1``). It is added after training, so the learned
  ids do not depend on it, and it separates files in token streams.
- ``("``, ``('``, ``")`` and ``')`` are single ordinary BPE tokens: the circuit tasks score them.
  On real code BPE learns them on its own; when a corpus does not teach them, the lowest-priority
  learned merges make room for them (see :func:`_ensure_merges`), so they stay normal merges that
  decode like any other token.
- Training is deterministic: the same texts and vocabulary size give a byte-identical
  ``tokenizer.json``. The ``tokenizers`` BPE trainer breaks count ties by pair id, so its result
  does not depend on thread scheduling or hash-map order; this was checked on the standard library
  across processes and with 1 or 2 threads (tokenizers 0.23), and ``tests/test_data.py``
  re-checks parallel against single-threaded training.

Training on the whole standard-library train split (~31 MB) takes ~4 s on two idle CPU cores, so
the default tokenizer uses all of it (no subsetting); it is trained once per machine and cached.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

from sparse_lens.data.corpus import Corpus, cache_dir, load_corpus
from sparse_lens.errors import SparseLensError
from sparse_lens.io.atomic import write_text

EOT = "<|endoftext|>"
DEFAULT_VOCAB_SIZE = 2048
# Tokens the circuit tasks score; each must be one ordinary BPE token.
REQUIRED_TOKENS = ('("', "('", '")', "')")
# Bump when the training recipe changes, so cached default tokenizers are retrained.
RECIPE_VERSION = 1
_MAX_VOCAB = 2**16  # token files store ids as uint16


def train_tokenizer(texts: Iterable[str], vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """Train a byte-level BPE tokenizer with ``vocab_size`` ids, ``<|endoftext|>`` last.

    ``vocab_size`` counts the 256 byte tokens and ``<|endoftext|>``. A corpus too small to supply
    that many merges yields a smaller vocabulary (``get_vocab_size()`` is the truth; EOT is still
    last).
    """
    minimum = 256 + len(REQUIRED_TOKENS) + 1
    if not minimum <= vocab_size <= _MAX_VOCAB:
        raise SparseLensError(
            f"must be between {minimum} (256 bytes + quote tokens + EOT) and {_MAX_VOCAB}, "
            f"got {vocab_size}",
            field="vocab_size",
        )
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,  # the last id is reserved for EOT
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer)
    tokenizer = _ensure_merges(tokenizer, REQUIRED_TOKENS, budget=vocab_size - 1)
    tokenizer.add_special_tokens([AddedToken(EOT, special=True, normalized=False)])
    _check_contract(tokenizer, where="trained tokenizer")
    return tokenizer


def _byte_level(text: str) -> str:
    """``text`` in the ByteLevel alphabet (GPT-2's printable stand-ins for raw bytes)."""
    pieces = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False).pre_tokenize_str(
        text
    )
    return "".join(piece for piece, _ in pieces)


def _ensure_merges(tokenizer: Tokenizer, required: Iterable[str], budget: int) -> Tokenizer:
    """Make each two-byte string in ``required`` a learned merge, within ``budget`` ids.

    A missing token replaces the lowest-priority learned merge: the last merge's result is the
    newest token, so no other merge uses it and dropping it cannot orphan anything. The added
    merges go last (lowest priority), so they only fire where no learned merge competes, exactly
    like a merge BPE would have learned late.
    """
    data = json.loads(tokenizer.to_str())
    vocab: dict[str, int] = data["model"]["vocab"]
    merges = [m.split(" ") if isinstance(m, str) else list(m) for m in data["model"]["merges"]]
    missing = [t for t in required if _byte_level(t) not in vocab]
    if not missing:
        return tokenizer
    for _ in range(max(0, len(vocab) + len(missing) - budget)):
        left, right = merges.pop()
        del vocab[left + right]
    used = set(vocab.values())
    free_ids = (i for i in itertools.count() if i not in used)  # keeps ids contiguous
    for token in missing:
        left, right = (_byte_level(ch) for ch in token)
        merges.append([left, right])
        vocab[left + right] = next(free_ids)
    data["model"]["merges"] = merges
    return Tokenizer.from_str(json.dumps(data))


def _check_contract(tokenizer: Tokenizer, where: str, path: Path | None = None) -> None:
    eot = tokenizer.token_to_id(EOT)
    size = tokenizer.get_vocab_size()
    if eot is None or eot != size - 1:
        raise SparseLensError(
            f"{where} must have {EOT} as its last id ({size - 1}), found id {eot}; "
            "train one with `sparse-lens tokenizer train`",
            path=path,
        )


def save_tokenizer(tokenizer: Tokenizer, path: str | Path) -> Path:
    """Write ``tokenizer.json`` atomically (temp file + ``os.replace``): readers never see half a
    file, and concurrent writers of the same deterministic tokenizer cannot corrupt it."""
    return write_text(path, tokenizer.to_str(pretty=True))


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Read a ``tokenizer.json``; a missing, corrupt or non-conforming file is a SparseLensError."""
    path = Path(path)
    if not path.is_file():
        raise SparseLensError(
            "tokenizer file not found; train one with `sparse-lens tokenizer train --out FILE`",
            path=path,
        )
    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as error:  # tokenizers raises a bare Exception for parse errors
        raise SparseLensError(
            f"not a valid tokenizer.json ({error}); retrain it or restore the file", path=path
        ) from None
    _check_contract(tokenizer, where="tokenizer", path=path)
    return tokenizer


def tokenizer_hash(tokenizer: Tokenizer) -> str:
    """sha256 of the tokenizer's canonical JSON (sorted keys, no whitespace): its identity for
    cache keys and provenance, independent of how the file was pretty-printed."""
    canonical = json.dumps(
        json.loads(tokenizer.to_str()), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def corpus_tokenizer(corpus: Corpus, vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """The tokenizer trained on ``corpus``'s train split, trained once and cached on disk.

    Cached under :func:`~sparse_lens.data.corpus.cache_dir` keyed by the corpus manifest hash, the
    vocabulary size and the recipe version. Returns a fresh object on every call (callers may
    change padding or truncation on theirs).
    """
    path = _cache_path(corpus.manifest_hash, vocab_size)
    if not path.is_file():
        save_tokenizer(train_tokenizer((d.text for d in corpus.train), vocab_size), path)
    return load_tokenizer(path)


def default_tokenizer(vocab_size: int = DEFAULT_VOCAB_SIZE) -> Tokenizer:
    """:func:`corpus_tokenizer` of the default (standard-library) corpus.

    Trained once per machine and Python version and shared by tests, tasks and training runs; a
    cache hit costs one read of the corpus per process (for its manifest hash), no training.
    """
    path = _cache_path(_default_manifest_hash(), vocab_size)
    if path.is_file():
        return load_tokenizer(path)
    return corpus_tokenizer(load_corpus(), vocab_size)


def _cache_path(manifest_hash: str, vocab_size: int) -> Path:
    return (
        cache_dir() / "tokenizers" / f"bpe-v{RECIPE_VERSION}-{vocab_size}-{manifest_hash[:16]}.json"
    )


@lru_cache(maxsize=1)
def _default_manifest_hash() -> str:
    """The default corpus's identity, computed once per process (reading it takes ~0.5 s)."""
    return load_corpus().manifest_hash
