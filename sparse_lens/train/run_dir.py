"""One trainer per output directory, and an output directory checked before work starts.

:func:`claim_run_dir` takes an advisory lock on a run directory for the life of a training run,
so a second trainer on the same ``--out`` (a second ``--resume``, say) refuses at once with an
error naming the holder, instead of interleaving its metrics and checkpoints with the first.
The lock is ``flock`` on a file *beside* the directory (``.<name>.lock``, via the ``filelock``
library): the directory itself is replaced by rename at every checkpoint, so a lock inside it
would move away with the old copy. The kernel drops an ``flock`` when its process dies, so a
lock left by a killed run is simply taken over; the holder's pid and host are recorded in
``.<name>.lock.holder`` for the message only.

The same call checks that the directory can be written (its parent is where checkpoints are
staged) and has room for a checkpoint, so a read-only or full disk is one clear error before
training, not a traceback at the first save. Claims are reentrant within a process (the runner
claims before it prepares data, the trainer again when it starts).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from sparse_lens.errors import SparseLensError

_HELD: dict[Path, int] = {}
"""Run directories this process holds, with how many claims are open on each."""


def lock_path(out_dir: Path) -> Path:
    return out_dir.with_name(f".{out_dir.name}.lock")


def holder_path(out_dir: Path) -> Path:
    return out_dir.with_name(f".{out_dir.name}.lock.holder")


@contextmanager
def claim_run_dir(out_dir: str | Path, need_bytes: int = 0) -> Iterator[Path]:
    """Hold ``out_dir`` for a training run: writable, ``need_bytes`` free, no other trainer."""
    out_dir = Path(out_dir).absolute()
    check_writable(out_dir, need_bytes)
    if out_dir in _HELD:
        _HELD[out_dir] += 1
        try:
            yield out_dir
        finally:
            _HELD[out_dir] -= 1
        return
    lock = FileLock(str(lock_path(out_dir)), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise SparseLensError(
            f"another trainer is using this directory ({describe_holder(out_dir)}); wait for it "
            "to finish or choose another --out",
            path=out_dir,
        ) from None
    except OSError as error:
        raise _unwritable(out_dir.parent, error) from None
    _HELD[out_dir] = 1
    try:
        _write_holder(out_dir)
        yield out_dir
    finally:
        del _HELD[out_dir]
        holder_path(out_dir).unlink(missing_ok=True)
        lock.release()


def check_writable(out_dir: Path, need_bytes: int = 0) -> None:
    """A clear error unless ``out_dir`` (or the folder it will be made in) takes a checkpoint."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SparseLensError("is a file, not a directory; choose another --out", path=out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise _unwritable(out_dir.parent, error) from None
    for folder in (out_dir.parent, out_dir) if out_dir.is_dir() else (out_dir.parent,):
        try:
            with tempfile.TemporaryFile(dir=folder):
                pass
        except OSError as error:
            raise _unwritable(folder, error) from None
    free = shutil.disk_usage(out_dir.parent).free
    if free < need_bytes:
        raise SparseLensError(
            f"only {free / 2**20:,.1f} MiB free but a checkpoint needs about "
            f"{need_bytes / 2**20:,.1f} MiB; free some space or choose another --out",
            path=out_dir.parent,
        )


def checkpoint_bytes(n_weights: int, bytes_per_weight: int = 4) -> int:
    """Room a checkpoint save needs: the new copy (weights and two Adam moments) is written in
    full before the old one is deleted; 1 MiB covers the JSON files and the tokenizer."""
    return 3 * n_weights * bytes_per_weight + 2**20


def describe_holder(out_dir: Path) -> str:
    try:
        holder = json.loads(holder_path(out_dir).read_text())
        return f"pid {int(holder['pid'])} on {holder['host']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "holder unknown"


def _write_holder(out_dir: Path) -> None:
    path = holder_path(out_dir)
    try:
        path.write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}) + "\n")
    except OSError:
        pass  # the record only improves another trainer's message


def _unwritable(folder: Path, error: OSError) -> SparseLensError:
    return SparseLensError(
        f"cannot write here ({error.strerror or error}); choose a writable --out", path=folder
    )
