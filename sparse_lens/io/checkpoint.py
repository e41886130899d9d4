"""Checkpoint directories: config.json, model.safetensors, tokenizer.json, and what sits beside.

:class:`ModelDir` resolves a model name or path once and names every file of the directory;
its :class:`CircuitStore` owns the result files (``eval.json`` and ``circuits/<task>*.json``).

Sparse tensors are stored as flat int32/int64 indices + values (``<name>::indices`` and
``<name>::values``, with the shape in the safetensors metadata) whenever fewer than half of
their entries are nonzero, so a file grows with the number of nonzeros, not with width. Loading
never unpickles. A save is atomic: everything is written into a fresh sibling directory which
then replaces the old one by rename, so an interrupted save leaves the previous checkpoint
intact. Files in the directory that a save does not own (training logs) are carried over.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import Tensor

from sparse_lens.config import SparseConfig
from sparse_lens.errors import SparseLensError
from sparse_lens.io.atomic import atomic_path, write_json, write_text
from sparse_lens.io.records import MissedTarget, ModelEval
from sparse_lens.io.verify import (
    check_tokenizer,
    check_weights,
    checksum_metadata,
    read_safetensors,
)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"
PROVENANCE_FILE = "training.json"
OWNED_FILES = (CONFIG_FILE, WEIGHTS_FILE, TOKENIZER_FILE)
PROVENANCE_FILE = "training.json"
METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"
CIRCUITS_DIR = "circuits"
_SPARSE_FORMAT_MAX_DENSITY = 0.5  # indices + values beat dense storage below half density


def encode_tensors(
    tensors: dict[str, Tensor], storage_dtypes: dict[str, torch.dtype] | None = None
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Split a state dict into safetensors entries, storing sparse tensors as indices + values.

    ``storage_dtypes`` stores the named tensors in another dtype (loading casts them back to the
    model's dtype), e.g. the dense bigram table in float16 for the models shipped in the package.
    """
    out: dict[str, Tensor] = {}
    sparse_shapes: dict[str, list[int]] = {}
    storage_dtypes = storage_dtypes or {}
    unknown = sorted(set(storage_dtypes) - set(tensors))
    if unknown:
        raise KeyError(f"storage_dtypes names tensors the model does not have: {unknown}")
    for name, tensor in tensors.items():
        tensor = tensor.detach().cpu().contiguous()
        if name in storage_dtypes:
            tensor = tensor.to(storage_dtypes[name])
        nonzero = int(torch.count_nonzero(tensor))
        if tensor.numel() > 0 and nonzero < _SPARSE_FORMAT_MAX_DENSITY * tensor.numel():
            flat = tensor.flatten()
            index = flat.nonzero().squeeze(-1)
            index_dtype = torch.int32 if tensor.numel() < 2**31 else torch.int64
            out[f"{name}::indices"] = index.to(index_dtype)
            out[f"{name}::values"] = flat[index].clone()
            sparse_shapes[name] = list(tensor.shape)
        else:
            out[name] = tensor.clone()
    return out, {"sparse_shapes": json.dumps(sparse_shapes), **checksum_metadata(out)}


def decode_tensors(path: Path, *, verify: bool = True) -> dict[str, Tensor]:
    """Read a safetensors file written by :func:`encode_tensors` back into dense tensors,
    checked by :mod:`sparse_lens.io.verify` (``verify=False`` skips the checksums)."""
    raw, metadata = read_safetensors(path, "weights", verify=verify)
    sparse_shapes = check_weights(raw, metadata, path)
    tensors: dict[str, Tensor] = {}
    for name, shape in sparse_shapes.items():
        try:
            index, values = raw.pop(f"{name}::indices"), raw.pop(f"{name}::values")
            dense = torch.zeros(int(torch.tensor(shape).prod()), dtype=values.dtype)
            dense[index.long()] = values
        except (KeyError, IndexError, RuntimeError) as error:
            raise SparseLensError(f"sparse tensor '{name}' is corrupt ({error})", path=path) from None
        tensors[name] = dense.view(shape)
    tensors.update(raw)
    return tensors


def save_pretrained(
    model, directory: str | Path, storage_dtypes: dict[str, torch.dtype] | None = None
) -> Path:
    """Atomically write ``model`` (a SparseTransformer) into ``directory``.

    ``storage_dtypes``: optional ``{tensor name: dtype}`` to store some tensors narrower.
    """
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.saving-", dir=directory.parent))
    try:
        model.cfg.to_json(staging / CONFIG_FILE)
        tensors, metadata = encode_tensors(model.state_dict(), storage_dtypes)
        with atomic_path(staging / WEIGHTS_FILE) as tmp:
            save_file(tensors, str(tmp), metadata=metadata)
        if model.tokenizer is not None:
            write_text(staging / TOKENIZER_FILE, model.tokenizer.to_str(pretty=True))
        if directory.exists():
            for extra in directory.iterdir():
                if extra.name not in OWNED_FILES and not (staging / extra.name).exists():
                    copy = shutil.copytree if extra.is_dir() else shutil.copy2
                    copy(extra, staging / extra.name)
        replace_directory(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def replace_directory(new: Path, target: Path) -> None:
    """Put directory ``new`` at ``target``: rename the old one aside, rename, then delete it.

    Every step is a rename, so at any instant either the old or the new directory is complete;
    if a crash lands between the two renames, :func:`resolve_checkpoint_dir` finds the old copy.
    """
    if target.exists():
        backup = target.with_name(f".{target.name}.old-{os.getpid()}")
        shutil.rmtree(backup, ignore_errors=True)
        os.replace(target, backup)
        os.replace(new, target)
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.replace(new, target)


def resolve_checkpoint_dir(directory: Path) -> Path:
    """``directory``, or the complete copy a crashed save left beside it."""
    if directory.is_dir():
        return directory
    leftovers = sorted(directory.parent.glob(f".{directory.name}.old-*")) if directory.parent.is_dir() else []
    return leftovers[-1] if leftovers else directory


def load_pretrained(
    name_or_path: str | Path | ModelDir, device: str | None = None, *, verify: bool = True
):
    """Load a checkpoint directory (or a shipped model name) into a SparseTransformer.

    ``verify=False`` skips the weight checksums (see :mod:`sparse_lens.io.verify`).
    """
    from tokenizers import Tokenizer

    from sparse_lens.model.transformer import SparseTransformer

    located = ModelDir.resolve(name_or_path)
    cfg = SparseConfig.from_json(located.config_file)
    if device is not None:
        cfg.device = device
    weights_path = located.weights_file
    if not weights_path.is_file():
        raise SparseLensError("model weights are missing; the checkpoint is incomplete", path=weights_path)
    tensors = decode_tensors(weights_path, verify=verify)

    tokenizer = None
    tokenizer_path = located.tokenizer_file
    if tokenizer_path.is_file():
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as error:  # tokenizers raises a bare Exception on malformed JSON
            raise SparseLensError(f"cannot read tokenizer ({error})", path=tokenizer_path) from None
    check_tokenizer(tokenizer, tokenizer_path, located.provenance_file)

    model = SparseTransformer(cfg)
    if tokenizer is not None:
        try:
            model.set_tokenizer(tokenizer)
        except SparseLensError as error:
            raise SparseLensError(str(error), path=tokenizer_path) from None
    load_state(model, tensors, source=weights_path)
    return model.to(cfg.device).eval()


def load_state(model, tensors: dict[str, Tensor], source: str | Path) -> None:
    """Copy ``tensors`` into ``model``, naming any missing, unexpected or misshapen tensor."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise SparseLensError(
            f"weights do not match config.json (missing: {missing[:5]}, unexpected: {unexpected[:5]})",
            path=source,
        )
    for name, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise SparseLensError(
                f"tensor '{name}' has shape {tuple(tensor.shape)}, config.json implies "
                f"{tuple(expected[name].shape)}",
                path=source,
            )
    model.load_state_dict(tensors, strict=True)


@dataclass(frozen=True)
class ModelDir:
    """A model's directory, resolved once from a path or a shipped model name.

    A path wins over a name (``./stdlib-sparse`` beside you is yours); a name with no path
    separator that is not a directory is looked up among the models shipped in the package.
    """

    path: Path
    name: str
    """What the user passed: a shipped name or a path, for messages and circuit model ids."""

    @classmethod
    def resolve(cls, name_or_path: str | Path | ModelDir) -> ModelDir:
        if isinstance(name_or_path, ModelDir):
            return name_or_path
        text = str(name_or_path)
        path = resolve_checkpoint_dir(Path(name_or_path))
        if path.exists() or any(sep in text for sep in ("/", os.sep)):
            if not path.exists():
                raise SparseLensError("no such model directory", path=path)
            return cls(path, text)
        from sparse_lens import pretrained  # read at call time: tests point it elsewhere

        return cls(pretrained.shipped_model_dir(text), text)

    @property
    def shipped(self) -> bool:
        """One of the package's own models (never written into)."""
        from sparse_lens.pretrained import is_shipped_dir

        return is_shipped_dir(self.path)

    @property
    def config_file(self) -> Path:
        return self.path / CONFIG_FILE

    @property
    def weights_file(self) -> Path:
        return self.path / WEIGHTS_FILE

    @property
    def tokenizer_file(self) -> Path:
        return self.path / TOKENIZER_FILE

    @property
    def provenance_file(self) -> Path:
        """training.json: corpus manifest hash, steps, tokens, losses."""
        return self.path / PROVENANCE_FILE

    @property
    def metrics_file(self) -> Path:
        return self.path / METRICS_FILE

    @property
    def eval_file(self) -> Path:
        """eval.json: the full model on every task (owned by :attr:`circuits`)."""
        return self.path / EVAL_FILE

    @property
    def circuits(self) -> CircuitStore:
        return CircuitStore(self.path / CIRCUITS_DIR, eval_file=self.eval_file)

    def provenance(self) -> dict[str, Any]:
        """training.json as a mapping (SparseLensError if missing or not JSON)."""
        return read_json(self.provenance_file, what="training record")

    def load(self, device: str | None = None):
        """The SparseTransformer stored here."""
        return load_pretrained(self, device=device)


@dataclass(frozen=True)
class CircuitStore:
    """Where a model's task results live, and their typed readers and writers.

    ``<task>.json`` is a :class:`~sparse_lens.circuits.Circuit` (read it with
    ``Circuit.load(store.circuit_file(task), model)``: circuits belong to the stage above);
    ``<task>.validation.json`` is the mapping ``validate_circuit`` returned, stored as given;
    ``<task>.missed.json`` is a :class:`~sparse_lens.io.records.MissedTarget`; ``eval_file``
    (a model directory's ``eval.json``) is a :class:`~sparse_lens.io.records.ModelEval`.
    A task has a circuit or a miss, never both: saving one removes the other. A report
    describes one circuit: saving a circuit or a miss removes the task's old report.
    """

    directory: Path
    eval_file: Path | None = None

    def circuit_file(self, task: str) -> Path:
        return self.directory / f"{task}.json"

    def validation_file(self, task: str) -> Path:
        return self.directory / f"{task}.validation.json"

    def missed_file(self, task: str) -> Path:
        return self.directory / f"{task}.missed.json"

    def circuit_tasks(self) -> list[str]:
        """Tasks with a circuit file, sorted."""
        return sorted(p.name.removesuffix(".json") for p in self._files() if _is_circuit(p.name))

    def missed_tasks(self) -> list[str]:
        """Tasks whose pruning missed the target, sorted."""
        suffix = ".missed.json"
        return sorted(p.name.removesuffix(suffix) for p in self._files() if p.name.endswith(suffix))

    def _files(self) -> list[Path]:
        return [p for p in self.directory.glob("*.json") if not p.name.startswith(".")]

    # ------------------------------------------------------------------ writers
    def save_circuit(self, circuit) -> Path:
        """Write ``circuit`` (a Circuit) as ``<circuit.task>.json``; an earlier miss or report
        is dropped."""
        path = circuit.save(self.circuit_file(circuit.task))
        self.missed_file(circuit.task).unlink(missing_ok=True)
        self.validation_file(circuit.task).unlink(missing_ok=True)
        return path

    def save_missed(self, missed: MissedTarget) -> Path:
        path = write_text(self.missed_file(missed.task), missed.to_json_str())
        self.circuit_file(missed.task).unlink(missing_ok=True)
        self.validation_file(missed.task).unlink(missing_ok=True)
        return path

    def save_validation(self, task: str, report: dict[str, Any]) -> Path:
        return write_json(self.validation_file(task), report)

    def save_eval(self, evaluation: ModelEval) -> Path:
        return write_text(self._eval_file(), evaluation.to_json_str())

    # ------------------------------------------------------------------ readers
    def missed(self, task: str) -> MissedTarget | None:
        path = self.missed_file(task)
        if not path.is_file():
            return None
        return MissedTarget.from_dict(read_json(path, what="missed-target record"), source=path)

    def validation(self, task: str) -> dict[str, Any] | None:
        path = self.validation_file(task)
        if not path.is_file():
            return None
        return read_json(path, what="validation report")

    def evaluation(self) -> ModelEval | None:
        path = self._eval_file()
        if not path.is_file():
            return None
        return ModelEval.from_dict(read_json(path, what="evaluation"), source=path)

    def _eval_file(self) -> Path:
        if self.eval_file is None:
            raise SparseLensError("this circuit store has no eval.json", path=self.directory)
        return self.eval_file


def _is_circuit(name: str) -> bool:
    return not name.endswith((".validation.json", ".missed.json"))


def read_json(path: Path, what: str) -> Any:
    """The JSON in ``path``; a missing or malformed file is one SparseLensError naming it."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SparseLensError(f"no {what} here", path=path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SparseLensError(f"cannot read the {what} ({error})", path=path) from None
