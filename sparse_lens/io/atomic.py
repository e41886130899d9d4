"""The one way sparse-lens writes a file: readers see the old file or the new one, never half.

Every writer goes through :func:`atomic_path`: the content is written to a temporary file in the
same directory (so the final rename never crosses a filesystem), flushed to disk with ``fsync``,
then moved over the target with ``os.replace``, which is atomic on POSIX and Windows. A crash or
an exception mid-write leaves the previous file untouched and no temporary file behind.
Directories (checkpoints) are swapped whole by :func:`sparse_lens.io.checkpoint.replace_directory`.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it replaces ``path``.

    For libraries that write to a file name themselves (safetensors, tokenizers).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_directory(path.parent)


def write_bytes(path: str | Path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | Path, text: str, encoding: str = "utf-8") -> Path:
    return write_bytes(path, text.encode(encoding))


def json_text(
    data: Any, *, sort_keys: bool = False, newline: bool = True, allow_nan: bool = True
) -> str:
    """The project's JSON layout: two-space indent and a final newline unless told not to."""
    text = json.dumps(data, indent=2, sort_keys=sort_keys, allow_nan=allow_nan)
    return text + "\n" if newline else text


def write_json(
    path: str | Path,
    data: Any,
    *,
    sort_keys: bool = False,
    newline: bool = True,
    allow_nan: bool = True,
) -> Path:
    text = json_text(data, sort_keys=sort_keys, newline=newline, allow_nan=allow_nan)
    return write_text(path, text)


def _fsync(path: Path) -> None:
    with open(path, "rb") as handle:
        os.fsync(handle.fileno())


def _fsync_directory(directory: Path) -> None:
    """Make the rename itself durable (POSIX only; Windows cannot open a directory)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


__all__ = ["atomic_path", "json_text", "write_bytes", "write_json", "write_text"]
