"""Load-time verification of the files a checkpoint holds: nothing corrupt loads without a word.

A save records a sha256 per stored tensor in the safetensors metadata (:func:`checksum_metadata`,
key ``sha256``); a load recomputes them (:func:`read_safetensors`), so flipped data bytes are
an error naming the tensor, not different weights. Each digest covers the tensor's dtype and
shape as well as its bytes. Files written before checksums existed carry none and are only
checked for content. Whatever the checksum says, the content is checked too
(:func:`check_weights`): weights must be finite floating-point tensors (an int32 tensor is not
cast silently), a sparse tensor's declared shape must be a list of non-negative integers within
:data:`~sparse_lens.limits.MAX_PARAMETERS` elements, and its indices strictly increasing and
inside that shape (``-1`` would otherwise wrap to the last element). A tokenizer is checked
against the hash training.json recorded for it (:func:`check_tokenizer`): one of the same size
but other content would otherwise give silently wrong losses.

Everything here raises :class:`~sparse_lens.errors.SparseLensError` naming the file and the
tensor or field. ``verify=False`` skips the checksums (the slow part for big files), never the
content checks.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import safe_open
from torch import Tensor

from sparse_lens import limits
from sparse_lens.errors import SparseLensError

CHECKSUM_KEY = "sha256"
SPARSE_SHAPES_KEY = "sparse_shapes"
INDICES, VALUES = "::indices", "::values"
INDEX_DTYPES = (torch.int32, torch.int64)


def tensor_digest(tensor: Tensor) -> str:
    """sha256 of a tensor's dtype, shape and bytes (any dtype, bfloat16 included)."""
    tensor = tensor.detach().cpu().contiguous()
    digest = hashlib.sha256(f"{tensor.dtype}|{list(tensor.shape)}|".encode())
    if tensor.numel():
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().data)
    return digest.hexdigest()


def checksum_metadata(tensors: dict[str, Tensor]) -> dict[str, str]:
    """The safetensors metadata entry that records every tensor's digest."""
    return {
        CHECKSUM_KEY: json.dumps({name: tensor_digest(t) for name, t in sorted(tensors.items())})
    }


def read_safetensors(
    path: str | Path, what: str, *, verify: bool = True
) -> tuple[dict[str, Tensor], dict[str, str]]:
    """Every tensor and the metadata of a safetensors file, checksums verified.

    ``what`` names the file's role in errors ("weights", "optimizer state").
    """
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    except (SafetensorError, OSError, ValueError, RuntimeError, TypeError) as error:
        raise SparseLensError(
            f"cannot read {what} ({error}); the file is corrupt or truncated: re-save or "
            "re-download it",
            path=path,
        ) from None
    if verify and CHECKSUM_KEY in metadata:
        verify_checksums(tensors, metadata[CHECKSUM_KEY], path)
    return tensors, metadata


def verify_checksums(tensors: dict[str, Tensor], recorded: str, path: str | Path) -> None:
    try:
        digests = json.loads(recorded)
    except json.JSONDecodeError:
        digests = None
    if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()):
        raise SparseLensError(
            "the recorded checksums are not a JSON object of hex digests; the file is corrupt",
            path=path,
            field=CHECKSUM_KEY,
        )
    if set(digests) != set(tensors):
        odd = sorted(set(digests) ^ set(tensors))
        raise SparseLensError(
            f"the file's tensors do not match its checksums (differ in {odd[:3]}); the file "
            "is corrupt: re-save or re-download it",
            path=path,
            field=CHECKSUM_KEY,
        )
    for name, tensor in tensors.items():
        if tensor_digest(tensor) != digests[name]:
            raise SparseLensError(
                f"tensor '{name}' fails its sha256 checksum; the file is corrupt: re-save or "
                "re-download it (or load with verify=False to skip checksums)",
                path=path,
                field=name,
            )


def check_weights(
    tensors: dict[str, Tensor], metadata: dict[str, str], path: str | Path
) -> dict[str, list[int]]:
    """Check the stored entries of a weights file; returns its validated ``sparse_shapes``."""
    shapes = sparse_shapes(metadata, path)
    for name, shape in shapes.items():
        check_sparse_entry(name, shape, tensors, path)
    for name, tensor in tensors.items():
        if name.endswith(INDICES) and name[: -len(INDICES)] in shapes:
            continue
        check_values(name, tensor, path)
    return shapes


def sparse_shapes(metadata: dict[str, str], path: str | Path) -> dict[str, list[int]]:
    """The ``sparse_shapes`` metadata as ``{name: [dims]}``, refusing anything else."""
    try:
        shapes = json.loads(metadata.get(SPARSE_SHAPES_KEY, "{}"))
    except json.JSONDecodeError as error:
        raise SparseLensError(
            f"not valid JSON ({error}); the file is corrupt", path=path, field=SPARSE_SHAPES_KEY
        ) from None
    if not isinstance(shapes, dict):
        raise SparseLensError(
            f"expected an object {{tensor name: shape}}, got {type(shapes).__name__}; the file "
            "is corrupt",
            path=path,
            field=SPARSE_SHAPES_KEY,
        )
    for name, shape in shapes.items():
        dims_ok = isinstance(shape, list) and all(
            isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
        )
        if not dims_ok:
            raise SparseLensError(
                f"the shape of '{name}' must be a list of non-negative integers, got {shape!r}"[
                    :200
                ]
                + "; the file is corrupt",
                path=path,
                field=f"{SPARSE_SHAPES_KEY}.{name}",
            )
        if math.prod(shape) > limits.MAX_PARAMETERS:
            raise SparseLensError(
                f"the shape {shape} of '{name}' has more than {limits.MAX_PARAMETERS:,} "
                "elements (sparse_lens.limits); the file is corrupt",
                path=path,
                field=f"{SPARSE_SHAPES_KEY}.{name}",
            )
    return shapes


def check_sparse_entry(
    name: str, shape: list[int], tensors: dict[str, Tensor], path: str | Path
) -> None:
    """A sparse tensor's indices: 1-D integers, one per value, strictly increasing, in range."""
    index, values = tensors.get(name + INDICES), tensors.get(name + VALUES)
    if index is None or values is None:
        raise SparseLensError(
            f"sparse tensor '{name}' lacks its {INDICES if index is None else VALUES} entry; the "
            "file is corrupt",
            path=path,
            field=name,
        )

    def fail(problem: str) -> SparseLensError:
        return SparseLensError(
            f"sparse tensor '{name}': {problem}; the file is corrupt", path=path, field=name
        )

    if index.dtype not in INDEX_DTYPES:
        raise fail(f"indices are {index.dtype}, expected int32 or int64")
    if index.ndim != 1 or values.ndim != 1 or index.numel() != values.numel():
        raise fail(
            f"{index.numel()} indices for {values.numel()} values (both must be flat and match)"
        )
    if index.numel():
        size = math.prod(shape)
        low, high = int(index.min()), int(index.max())
        if low < 0 or high >= size:
            raise fail(f"index {low if low < 0 else high} is outside its {size} elements")
        if index.numel() > 1 and not bool((index[1:] > index[:-1]).all()):
            raise fail("indices are not strictly increasing (a repeated or reordered index)")


def check_values(name: str, tensor: Tensor, path: str | Path) -> None:
    """A weight (or the values of a sparse one): a finite floating-point tensor."""
    if not tensor.dtype.is_floating_point:
        raise SparseLensError(
            f"tensor '{name}' is {tensor.dtype}; weights are floating point (it would be cast "
            "silently): the file is corrupt or not a sparse-lens checkpoint",
            path=path,
            field=name,
        )
    if not bool(torch.isfinite(tensor).all()):
        bad = int((~torch.isfinite(tensor)).sum())
        raise SparseLensError(
            f"tensor '{name}' holds {bad} NaN or infinite value(s); the weights are corrupt "
            "(a diverged run or a damaged file): use an earlier checkpoint",
            path=path,
            field=name,
        )


def check_tokenizer(tokenizer: Any, tokenizer_path: Path, provenance_path: Path) -> None:
    """The tokenizer (None if tokenizer.json is absent) must be the one training.json records."""
    from sparse_lens.data.tokenizer import tokenizer_hash

    if not provenance_path.is_file():
        return
    try:
        provenance = json.loads(provenance_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SparseLensError(
            f"not valid JSON ({error}); restore the file", path=provenance_path
        ) from None
    recorded = provenance.get("tokenizer_hash") if isinstance(provenance, dict) else None
    if recorded is None:
        return
    if tokenizer is None:
        raise SparseLensError(
            "the tokenizer is missing (training.json records one); restore tokenizer.json "
            "from the training run",
            path=tokenizer_path,
        )
    if tokenizer_hash(tokenizer) != recorded:
        raise SparseLensError(
            f"this tokenizer is not the one the model was trained with (training.json records "
            f"tokenizer_hash {str(recorded)[:12]}, this file hashes to "
            f"{tokenizer_hash(tokenizer)[:12]}); restore the training run's tokenizer.json",
            path=tokenizer_path,
            field="tokenizer_hash",
        )


__all__ = [
    "CHECKSUM_KEY",
    "check_tokenizer",
    "check_weights",
    "checksum_metadata",
    "read_safetensors",
    "tensor_digest",
]
