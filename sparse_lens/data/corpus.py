"""Corpus discovery: which documents a model trains and is evaluated on.

The default corpus is the running interpreter's standard library: every ``.py`` file under
``sysconfig.get_paths()["stdlib"]``, minus ``site-packages`` / ``dist-packages`` (third-party code
that differs per machine) and ``__pycache__``. It is real, varied, idiomatic Python that every user
already has on disk, so training needs no download. ``test/`` stays in: it is ordinary Python too.

Three decisions make runs reproducible and comparable:

- **Order.** Documents are sorted by name (their path relative to the source root, in POSIX form),
  never by directory-walk order, which differs between filesystems.
- **Split by file.** The held-out split takes whole files, so evaluation never sees a different
  window of a file it trained on. A file's split is decided by a hash of its name alone, so adding
  or removing other files never moves it between splits.
- **Manifest hash.** A sha256 over every document's name, byte size, content hash and split. It is
  the corpus's identity: tokenizer and token caches are keyed by it and checkpoints record it.

Other sources: directories or glob patterns of ``.py`` files, a ``.txt`` file (one document), a
``.jsonl`` file (one document per line, in its ``text`` field) or a Hugging Face dataset saved with
``save_to_disk`` (its ``text`` column). Files that cannot be read, are not UTF-8, are empty, or are
``.py`` files over ``max_file_bytes`` (generated tables rather than code people write) are skipped
and counted in :attr:`Corpus.skipped`, never silently dropped.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import sysconfig
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sparse_lens.defaults import HELDOUT_FRACTION
from sparse_lens.errors import SparseLensError

DEFAULT_MAX_FILE_BYTES = 1_000_000
# Directory names never descended into: installed third-party packages and bytecode caches.
EXCLUDED_DIRS = frozenset({"site-packages", "dist-packages", "__pycache__"})
SPLITS = ("train", "heldout")


def cache_dir() -> Path:
    """Where trained tokenizers and token files are cached: ``$SPARSE_LENS_CACHE`` if set, else
    ``~/.cache/sparse-lens``. Everything in it is keyed by content hashes, so it is safe to share
    between runs and to delete."""
    env = os.environ.get("SPARSE_LENS_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sparse-lens"


def stdlib_dir() -> Path:
    """The running interpreter's standard-library directory (the default corpus)."""
    return Path(sysconfig.get_paths()["stdlib"])


@dataclass(frozen=True)
class Document:
    """One training document: a whole file (or one jsonl line / dataset row)."""

    name: str
    text: str


@dataclass(frozen=True)
class Corpus:
    """Documents sorted by name, split by file into train and held-out.

    ``skipped`` maps a reason ("not utf-8", "unreadable", "too large", "empty") to how many
    files (or rows) it excluded.
    """

    documents: list[Document]
    train: list[Document]
    heldout: list[Document]
    manifest_hash: str
    skipped: dict[str, int] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)
    heldout_fraction: float = HELDOUT_FRACTION

    def split(self, name: str) -> list[Document]:
        """The documents of split ``name`` ("train" or "heldout")."""
        if name == "train":
            return self.train
        if name == "heldout":
            return self.heldout
        raise SparseLensError(f"unknown split {name!r}; use one of {SPLITS}", field="split")

    @property
    def n_bytes(self) -> int:
        return sum(len(d.text.encode("utf-8")) for d in self.documents)

    def describe(self) -> str:
        """A one-line summary: sizes, split, skips and the manifest hash."""
        skipped = sum(self.skipped.values())
        reasons = ", ".join(f"{r}: {n}" for r, n in sorted(self.skipped.items()))
        return (
            f"{len(self.documents)} documents ({self.n_bytes / 1e6:.1f} MB) from "
            f"{', '.join(self.sources)}: {len(self.train)} train, {len(self.heldout)} held-out; "
            f"skipped {skipped}"
            + (f" ({reasons})" if reasons else "")
            + f"; manifest {self.manifest_hash[:12]}"
        )


def load_corpus(
    sources: Sequence[str | Path] | str | Path | None = None,
    heldout_fraction: float = HELDOUT_FRACTION,
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> Corpus:
    """Read ``sources`` (default: the standard library) into a split :class:`Corpus`.

    Each source is a directory (all ``.py`` files below it), a glob pattern, a ``.py`` / ``.txt`` /
    ``.jsonl`` file or a saved Hugging Face dataset directory. Document names are paths relative to
    the source's root, so the manifest hash does not depend on where the files live. A missing
    source or a corpus with no usable document raises :class:`SparseLensError`.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise SparseLensError(
            f"must be in [0, 1), got {heldout_fraction}", field="heldout_fraction"
        )
    if sources is None:
        sources = [stdlib_dir()]
    elif isinstance(sources, (str, Path)):  # one path given bare, not as a list of characters
        sources = [sources]
    if len(sources) == 0:
        raise SparseLensError("no corpus sources given; pass directories or files", field="corpus")

    skipped: Counter[str] = Counter()
    documents: list[Document] = []
    seen_files: set[Path] = set()
    for source in sources:
        for name, text in _read_source(source, skipped, max_file_bytes, seen_files):
            documents.append(Document(name, text))
    if not documents:
        reasons = ", ".join(f"{n} {r}" for r, n in sorted(skipped.items())) or "no files found"
        raise SparseLensError(
            f"the corpus is empty ({reasons}); point --corpus at .py files, a .txt/.jsonl "
            "file or a saved dataset with a 'text' column",
            path=", ".join(str(s) for s in sources),
        )

    # Sort by name; identical names from different sources are ordered by content for determinism.
    keyed = sorted(
        ((d.name, hashlib.sha256(d.text.encode("utf-8")).hexdigest(), d) for d in documents),
        key=lambda k: (k[0], k[1]),
    )
    documents = [d for _, _, d in keyed]
    is_heldout = _assign_splits([d.name for d in documents], heldout_fraction)

    manifest = hashlib.sha256()
    for (name, digest, doc), held in zip(keyed, is_heldout, strict=True):
        size = len(doc.text.encode("utf-8"))
        manifest.update(f"{name}\t{size}\t{digest}\t{SPLITS[held]}\n".encode())
    return Corpus(
        documents=documents,
        train=[d for d, h in zip(documents, is_heldout, strict=True) if not h],
        heldout=[d for d, h in zip(documents, is_heldout, strict=True) if h],
        manifest_hash=manifest.hexdigest(),
        skipped=dict(sorted(skipped.items())),
        sources=[str(s) for s in sources],
        heldout_fraction=heldout_fraction,
    )


def _split_score(name: str) -> float:
    """A uniform number in [0, 1) that depends only on the document's name."""
    return int(hashlib.sha256(name.encode("utf-8")).hexdigest()[:16], 16) / 2**64


def _assign_splits(names: list[str], heldout_fraction: float) -> list[bool]:
    """True for held-out documents: those whose name hashes below ``heldout_fraction``.

    On tiny corpora the hash can leave a split empty; then the document with the lowest (or
    highest) score moves, so train is never empty and held-out is non-empty whenever there are
    two documents and a nonzero fraction.
    """
    scores = [_split_score(n) for n in names]
    held = [s < heldout_fraction for s in scores]
    if heldout_fraction > 0 and len(names) >= 2 and not any(held):
        held[min(range(len(names)), key=lambda i: (scores[i], i))] = True
    if held and all(held):
        held[max(range(len(names)), key=lambda i: (scores[i], i))] = False
    return held


def _read_source(
    source: str | Path, skipped: Counter[str], max_file_bytes: int, seen: set[Path]
) -> Iterator[tuple[str, str]]:
    """Yield (name, text) for every usable document of one source."""
    text_source = os.path.expanduser(str(source))
    if not Path(text_source).exists() and any(ch in text_source for ch in "*?["):
        root = _glob_root(text_source)
        matches = sorted(Path(p) for p in glob.glob(text_source, recursive=True))
        files = [p for p in matches if p.is_file() and p.suffix in (".py", ".txt", ".jsonl")]
        if not files:
            raise SparseLensError(
                "the glob pattern matches no .py/.txt/.jsonl file; check the pattern "
                "(use ** with quotes for recursive matches)",
                path=text_source,
            )
        for path in files:
            yield from _read_file(
                path, path.relative_to(root).as_posix(), skipped, max_file_bytes, seen
            )
        return

    path = Path(source).expanduser()
    if not path.exists():
        raise SparseLensError(
            "corpus path does not exist; pass an existing directory, .py/.txt/.jsonl file, "
            "glob pattern or saved dataset",
            path=path,
        )
    if path.is_dir():
        if _is_hf_dataset(path):
            yield from _read_hf_dataset(path, skipped)
            return
        for file in _walk_py_files(path):
            yield from _read_file(
                file, file.relative_to(path).as_posix(), skipped, max_file_bytes, seen
            )
        return
    if path.suffix not in (".py", ".txt", ".jsonl"):
        raise SparseLensError(
            "unsupported corpus file type; use .py, .txt or .jsonl (or a directory)", path=path
        )
    yield from _read_file(path, path.name, skipped, max_file_bytes, seen)


def _glob_root(pattern: str) -> Path:
    """The directory part of a glob pattern before its first wildcard (names are relative to it)."""
    parts = Path(pattern).parts
    fixed = []
    for part in parts:
        if any(ch in part for ch in "*?["):
            break
        fixed.append(part)
    return Path(*fixed) if fixed else Path(".")


def _walk_py_files(root: Path) -> list[Path]:
    """Every ``.py`` file below ``root``, skipping excluded and hidden directories, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in EXCLUDED_DIRS and not d.startswith(".")]
        found.extend(Path(dirpath, f) for f in filenames if f.endswith(".py"))
    return sorted(found)


def _read_file(
    path: Path, name: str, skipped: Counter[str], max_file_bytes: int, seen: set[Path]
) -> Iterator[tuple[str, str]]:
    resolved = path.resolve()
    if resolved in seen:  # the same file reached through two sources counts once
        return
    seen.add(resolved)
    if path.suffix == ".py":
        try:
            too_large = path.stat().st_size > max_file_bytes
        except OSError:
            skipped["unreadable"] += 1
            return
        if too_large:
            skipped["too large"] += 1
            return
    try:
        raw = path.read_bytes()
    except OSError:
        skipped["unreadable"] += 1
        return
    try:
        text = raw.decode("utf-8")  # bytes, not text mode: keeps \r\n so decoding round-trips
    except UnicodeDecodeError:
        skipped["not utf-8"] += 1
        return
    if path.suffix == ".jsonl":
        yield from _jsonl_documents(path, name, text, skipped)
        return
    if not text:
        skipped["empty"] += 1
        return
    yield name, text


def _jsonl_documents(
    path: Path, name: str, text: str, skipped: Counter[str]
) -> Iterator[tuple[str, str]]:
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise SparseLensError(
                f"line {lineno} is not valid JSON ({error.msg})", path=path
            ) from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise SparseLensError(
                f'line {lineno} has no string \'text\' field; each line must be {{"text": "..."}}',
                path=path,
            )
        if row["text"]:
            yield f"{name}:{lineno}", row["text"]
        else:
            skipped["empty"] += 1


def _is_hf_dataset(path: Path) -> bool:
    """A directory written by ``datasets``' ``save_to_disk`` (a Dataset or a DatasetDict)."""
    return (path / "dataset_dict.json").is_file() or (
        (path / "state.json").is_file() and (path / "dataset_info.json").is_file()
    )


def _read_hf_dataset(path: Path, skipped: Counter[str]) -> Iterator[tuple[str, str]]:
    """Rows of the ``text`` column; for a DatasetDict, every split in name order."""
    try:
        import datasets  # imported lazily: slow to import and only needed for this source
    except ImportError:
        raise SparseLensError(
            "reading a saved dataset needs the 'datasets' package; pip install datasets", path=path
        ) from None
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as error:  # datasets raises many types for a damaged directory
        raise SparseLensError(f"cannot load the saved dataset ({error})", path=path) from None
    parts = (
        [(f"{path.name}/{s}", loaded[s]) for s in sorted(loaded)]
        if isinstance(loaded, datasets.DatasetDict)
        else [(path.name, loaded)]
    )
    for prefix, dataset in parts:
        if "text" not in dataset.column_names:
            raise SparseLensError(
                f"the dataset has no 'text' column (columns: {dataset.column_names})",
                path=path,
                field="text",
            )
        for i, text in enumerate(dataset["text"]):
            if isinstance(text, str) and text:
                yield f"{prefix}:{i}", text
            else:
                skipped["empty"] += 1
