"""Checkpoint directories: config.json, model.safetensors, tokenizer.json.

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
from pathlib import Path

import torch
from safetensors.torch import save_file
from torch import Tensor

from sparse_lens.config import SparseConfig
from sparse_lens.errors import SparseLensError
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
        save_file(tensors, str(staging / WEIGHTS_FILE), metadata=metadata)
        if model.tokenizer is not None:
            model.tokenizer.save(str(staging / TOKENIZER_FILE))
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


def load_pretrained(name_or_path: str | Path, device: str | None = None, *, verify: bool = True):
    """Load a checkpoint directory (or a shipped model name) into a SparseTransformer.

    ``verify=False`` skips the weight checksums (see :mod:`sparse_lens.io.verify`).
    """
    from tokenizers import Tokenizer

    from sparse_lens.model.transformer import SparseTransformer

    directory = model_directory(name_or_path)
    cfg = SparseConfig.from_json(directory / CONFIG_FILE)
    if device is not None:
        cfg.device = device
    weights_path = directory / WEIGHTS_FILE
    if not weights_path.is_file():
        raise SparseLensError("model weights are missing; the checkpoint is incomplete", path=weights_path)
    tensors = decode_tensors(weights_path, verify=verify)

    tokenizer = None
    tokenizer_path = directory / TOKENIZER_FILE
    if tokenizer_path.is_file():
        try:
            tokenizer = Tokenizer.from_file(str(tokenizer_path))
        except Exception as error:  # tokenizers raises a bare Exception on malformed JSON
            raise SparseLensError(f"cannot read tokenizer ({error})", path=tokenizer_path) from None
    check_tokenizer(tokenizer, tokenizer_path, directory / PROVENANCE_FILE)

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


def model_directory(name_or_path: str | Path) -> Path:
    """The checkpoint directory of a path or shipped model name (a clear error if neither)."""
    path = resolve_checkpoint_dir(Path(name_or_path))
    if path.exists() or any(sep in str(name_or_path) for sep in ("/", os.sep)):
        if not path.exists():
            raise SparseLensError("no such model directory", path=path)
        return path
    from sparse_lens.pretrained import shipped_model_dir

    return shipped_model_dir(str(name_or_path))
