"""Training checkpoints: a model directory plus the state that makes a resumed run exact.

The run's output directory IS the checkpoint: ``SparseTransformer.from_pretrained(out_dir)``
loads the latest weights at any time. Next to the model files (config.json, model.safetensors,
tokenizer.json, written by ``model.save_pretrained``) it holds

- ``optimizer.safetensors``: Adam moments and step counts keyed by parameter name;
- ``rng_state.safetensors``: the torch CPU (and CUDA) generator states;
- ``trainer_state.json``: the step, tokens seen, elapsed time, recent losses and the run config;
- ``training.json``: provenance (corpus manifest hash, tokenizer hash, configs, losses, time);
- ``metrics.jsonl``: the metrics log (appended between checkpoints).

Nothing is pickled. A save is atomic as a whole: everything is written into a fresh sibling
directory which then replaces the old one by two renames (:func:`replace_directory`), so an
interrupted save (SIGKILL, full disk) leaves the previous checkpoint complete, and the model
files and the optimizer state can never come from different steps.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from sparse_lens.errors import SparseLensError
from sparse_lens.io.atomic import atomic_path, write_json, write_text
from sparse_lens.io.checkpoint import (
    METRICS_FILE,
    OWNED_FILES,
    PROVENANCE_FILE,
    decode_tensors,
    load_state,
    replace_directory,
    resolve_checkpoint_dir,
)
from sparse_lens.io.verify import checksum_metadata, read_safetensors
from sparse_lens.schema import Reader
from sparse_lens.train.optim import load_optimizer_state, save_optimizer_state

OPTIMIZER_FILE = "optimizer.safetensors"
RNG_FILE = "rng_state.safetensors"
STATE_FILE = "trainer_state.json"
TRAINER_FILES = (OPTIMIZER_FILE, RNG_FILE, STATE_FILE, PROVENANCE_FILE)


def has_checkpoint(out_dir: str | Path) -> bool:
    """Whether ``out_dir`` (or the copy a crashed swap left beside it) holds a training state."""
    return (resolve_checkpoint_dir(Path(out_dir)) / STATE_FILE).is_file()


def read_state(out_dir: str | Path) -> dict[str, Any]:
    """The trainer_state.json of the checkpoint in ``out_dir`` (SparseLensError if none).

    Read-only (safe on every data-parallel rank at once): a copy left beside ``out_dir`` by a
    save that crashed between its two renames is read in place.
    """
    directory = resolve_checkpoint_dir(Path(out_dir))
    path = directory / STATE_FILE
    if not path.is_file():
        raise SparseLensError(
            "no training checkpoint to resume here (trainer_state.json is missing); start a new "
            "run without --resume",
            path=directory,
        )
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SparseLensError(f"corrupt trainer state ({error})", path=path) from None
    check_state(state, path)
    return state


def check_state(state: Any, path: Path) -> None:
    """Refuse a trainer state whose fields a resume cannot use, naming the field."""
    reader = Reader(state, path)
    reader.integer("step", minimum=0)
    reader.integer("tokens_seen", minimum=0)
    reader.number("elapsed_s", 0.0)
    reader.mapping("model_config")
    reader.mapping("train_config")
    reader.mapping("run_info", {})
    reader.value("heldout_loss", float | None, None)
    reader.value("recent_losses", list[float], [])
    reader.value("history", list[dict], [])
    for key in ("corpus_manifest_hash", "tokenizer_hash"):
        reader.value(key, str | None, None)


def recover(out_dir: Path) -> Path:
    """If a save crashed between its two renames, move the complete old copy back in place.

    Call on one process only, before anything else writes into ``out_dir``.
    """
    found = resolve_checkpoint_dir(out_dir)
    if found != out_dir and not out_dir.exists():
        os.replace(found, out_dir)
    return out_dir


def save_checkpoint(
    out_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    param_names: list[str],
    state: dict[str, Any],
    provenance: dict[str, Any],
) -> None:
    """Atomically write the model, optimizer, RNG and trainer state into ``out_dir``."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = out_dir.with_name(f".{out_dir.name}.ckpt-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        model.save_pretrained(staging)
        save_optimizer_state(optimizer, param_names, staging / OPTIMIZER_FILE)
        rng = rng_tensors()
        with atomic_path(staging / RNG_FILE) as tmp:
            save_file(rng, str(tmp), metadata=checksum_metadata(rng))
        _write_json(staging / STATE_FILE, state)
        _write_json(staging / PROVENANCE_FILE, provenance)
        if out_dir.exists():  # carry over the metrics log and anything else the run keeps there
            for extra in out_dir.iterdir():
                if extra.name in OWNED_FILES or extra.name in TRAINER_FILES:
                    continue
                if not (staging / extra.name).exists():
                    (shutil.copytree if extra.is_dir() else shutil.copy2)(
                        extra, staging / extra.name
                    )
        replace_directory(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    # Copies left by an earlier crash (a killed save's staging folder, a swap's old copy); the
    # run-directory lock (train/run_dir.py) makes this process the only writer, so none is live.
    for pattern in (".old-*", ".ckpt-*"):
        for leftover in out_dir.parent.glob(f".{out_dir.name}{pattern}"):
            shutil.rmtree(leftover, ignore_errors=True)


def load_checkpoint(
    out_dir: Path,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    param_names: list[str],
) -> dict[str, Any]:
    """Restore weights, optimizer and RNG state in place; returns the trainer state.

    Read-only, like :func:`read_state`.
    """
    state = read_state(out_dir)
    directory = resolve_checkpoint_dir(out_dir)
    weights = directory / "model.safetensors"
    tensors = decode_tensors(weights)
    device = next(model.parameters()).device
    load_state(model, {k: v.to(device) for k, v in tensors.items()}, source=weights)
    load_optimizer_state(optimizer, param_names, directory / OPTIMIZER_FILE)
    rng_path = directory / RNG_FILE
    if rng_path.is_file():
        restore_rng(read_safetensors(rng_path, "RNG state")[0], rng_path)
    return state


def rng_tensors() -> dict[str, torch.Tensor]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for index, value in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"torch_cuda_{index}"] = value
    return tensors


def restore_rng(tensors: dict[str, torch.Tensor], path: Path) -> None:
    """Set the generators from :func:`rng_tensors`'s output, checked against this torch's."""
    current = torch.get_rng_state()
    saved = tensors.get("torch_cpu")
    if saved is None or saved.dtype != current.dtype or saved.shape != current.shape:
        found = "missing" if saved is None else f"{saved.dtype} {list(saved.shape)}"
        raise SparseLensError(
            f"the CPU generator state is {found}, expected {current.dtype} "
            f"{list(current.shape)}; the file is corrupt: resume from an intact checkpoint",
            path=path,
            field="torch_cpu",
        )
    torch.set_rng_state(saved)
    cuda = [tensors[f"torch_cuda_{i}"] for i in range(len(tensors)) if f"torch_cuda_{i}" in tensors]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        expected = torch.cuda.get_rng_state(0)
        for index, value in enumerate(cuda):
            if value.dtype != expected.dtype or value.shape != expected.shape:
                raise SparseLensError(
                    f"the CUDA generator state is {value.dtype} {list(value.shape)}, expected "
                    f"{expected.dtype} {list(expected.shape)}; the file is corrupt",
                    path=path,
                    field=f"torch_cuda_{index}",
                )
        torch.cuda.set_rng_state_all(cuda)


def truncate_metrics(out_dir: Path, step: int) -> None:
    """Drop metrics.jsonl lines logged after ``step`` (a resumed run logs them again)."""
    path = out_dir / METRICS_FILE
    if not path.is_file():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if record.get("step", 0) <= step:
            kept.append(line)
    write_text(path, "".join(f"{line}\n" for line in kept))


def append_metrics(out_dir: Path, record: dict[str, Any]) -> None:
    """Append one JSON line (opened per write: the directory is swapped at each checkpoint)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / METRICS_FILE, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(record, sort_keys=True) + "\n")


def _write_json(path: Path, data: dict[str, Any]) -> None:
    write_json(path, data, sort_keys=True)
