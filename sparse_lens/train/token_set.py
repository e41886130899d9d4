"""Token sets: a corpus's train and held-out token streams, exported once, trained from anywhere.

The default corpus is the running interpreter's standard library, so a machine with another
Python (a GPU machine, say) would read other files, split them differently and evaluate on
another held-out set. A token set pins all of that. :func:`export_token_set` writes the two
streams exactly as the trainer builds them from the corpus, with their tokenizer and the corpus
identity; :func:`load_token_set` turns the directory back into the same
:class:`~sparse_lens.train.data.TrainData`. Batches, held-out windows, the manifest hash in
training.json and the resume checks are therefore those of the corpus route::

    <dir>/token_set.json   format, corpus manifest hash and description, heldout_fraction,
                           tokenizer hash, and per split: file, token count, sha256
    <dir>/train.npy        uint16 ids, one <|endoftext|> after every document (memory-mapped)
    <dir>/heldout.npy
    <dir>/tokenizer.json

token_set.json is written last, so a directory whose export was cut short is refused. The
sha256 of every file is checked on load: a token set usually arrives by copy.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import platform
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sparse_lens.data import load_tokenizer, save_tokenizer, tokenizer_hash
from sparse_lens.data.tokens import TOKEN_DTYPE
from sparse_lens.errors import SparseLensError
from sparse_lens.io.atomic import write_json
from sparse_lens.schema import dataclass_from_dict
from sparse_lens.train.data import TrainData

MANIFEST_FILE = "token_set.json"
TOKENIZER_FILE = "tokenizer.json"
FORMAT = 1
SPLITS = ("train", "heldout")


@dataclass(frozen=True)
class SplitFile:
    file: str
    n_tokens: int
    sha256: str


@dataclass(frozen=True)
class TokenSetManifest:
    """What token_set.json holds."""

    format: int
    corpus_manifest_hash: str
    corpus: str
    """The corpus's one-line description (sources, sizes, split) where it was exported."""
    heldout_fraction: float
    tokenizer_hash: str
    vocab_size: int
    train: dict
    heldout: dict
    python: str = ""
    """The Python version whose standard library was read (informational)."""


def export_token_set(data: TrainData, directory: str | Path, heldout_fraction: float) -> Path:
    """Write ``data``'s streams, tokenizer and corpus identity into ``directory``.

    ``heldout_fraction`` is the one the corpus was split with (recorded so a run training from
    the set cannot claim another).
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / MANIFEST_FILE).unlink(missing_ok=True)  # incomplete until rewritten below
    splits = {}
    for split, tokens in (("train", data.train_tokens), ("heldout", data.heldout_tokens)):
        path = directory / f"{split}.npy"
        np.save(path, np.ascontiguousarray(tokens, dtype=TOKEN_DTYPE))
        splits[split] = dataclasses.asdict(SplitFile(path.name, int(len(tokens)), _sha256(path)))
    save_tokenizer(data.tokenizer, directory / TOKENIZER_FILE)
    manifest = TokenSetManifest(
        format=FORMAT,
        corpus_manifest_hash=data.manifest_hash,
        corpus=data.description,
        heldout_fraction=heldout_fraction,
        tokenizer_hash=data.tokenizer_hash,
        vocab_size=data.tokenizer.get_vocab_size(),
        train=splits["train"],
        heldout=splits["heldout"],
        python=platform.python_version(),
    )
    write_json(directory / MANIFEST_FILE, dataclasses.asdict(manifest), sort_keys=True)
    return directory


def read_manifest(directory: str | Path) -> TokenSetManifest:
    """The token_set.json of ``directory`` (SparseLensError naming what is wrong)."""
    path = Path(directory) / MANIFEST_FILE
    if not path.is_file():
        raise SparseLensError(
            "not a token set (no token_set.json, or its export did not finish); write one "
            "with scripts/export_tokens.py",
            path=directory,
            field="tokens",
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SparseLensError(f"not valid JSON ({error})", path=path) from None
    manifest = dataclass_from_dict(TokenSetManifest, data, source=path)
    if manifest.format != FORMAT:
        raise SparseLensError(
            f"token set format {manifest.format}, this sparse-lens reads {FORMAT}; export again",
            path=path,
            field="format",
        )
    return manifest


def load_token_set(
    directory: str | Path, seed: int, heldout_fraction: float | None = None
) -> TrainData:
    """The TrainData a token set holds, its files checked against token_set.json.

    ``heldout_fraction`` (the run config's) must be the one the set was exported with, since
    training.json records it and later stages rebuild the held-out split from it.
    """
    directory = Path(directory)
    manifest = read_manifest(directory)
    source = directory / MANIFEST_FILE
    if heldout_fraction is not None and heldout_fraction != manifest.heldout_fraction:
        raise SparseLensError(
            f"the token set was exported with heldout_fraction {manifest.heldout_fraction}, "
            f"the run asks for {heldout_fraction}; set heldout_fraction="
            f"{manifest.heldout_fraction} or export the set again",
            path=source,
            field="heldout_fraction",
        )
    tokenizer = load_tokenizer(directory / TOKENIZER_FILE)
    if tokenizer_hash(tokenizer) != manifest.tokenizer_hash:
        raise SparseLensError(
            "tokenizer.json is not the tokenizer the streams were encoded with (hash differs); "
            "export the set again",
            path=directory / TOKENIZER_FILE,
        )
    streams = {}
    for split in SPLITS:
        record = dataclass_from_dict(
            SplitFile, getattr(manifest, split), source=source, prefix=f"{split}."
        )
        streams[split] = _load_stream(directory / record.file, record)
    return TrainData(
        train_tokens=streams["train"],
        heldout_tokens=streams["heldout"],
        tokenizer=tokenizer,
        manifest_hash=manifest.corpus_manifest_hash,
        tokenizer_hash=manifest.tokenizer_hash,
        seed=seed,
        description=f"{manifest.corpus} (token set {directory})",
    )


def _load_stream(path: Path, record: SplitFile) -> np.ndarray:
    if not path.is_file():
        raise SparseLensError("missing from the token set; export it again", path=path)
    if _sha256(path) != record.sha256:
        raise SparseLensError(
            "contents differ from token_set.json (sha256); the copy is damaged, export or copy "
            "it again",
            path=path,
        )
    tokens = np.load(path, mmap_mode="r")
    if tokens.dtype != TOKEN_DTYPE or tokens.ndim != 1 or len(tokens) != record.n_tokens:
        raise SparseLensError(
            f"expected {record.n_tokens} {np.dtype(TOKEN_DTYPE).name} ids, found "
            f"{tokens.shape} {tokens.dtype}; export the set again",
            path=path,
        )
    return tokens


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
