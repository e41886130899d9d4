"""Bridge directories: bridges.safetensors (the weights) and bridges.json (what they bridge).

bridges.json records the architecture (sites, widths, encoder AbsTopK), the two models by
reference (a shipped name or an absolute path) and how the bridges were obtained. A save is
atomic: a fresh sibling directory replaces the old one by renames.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from sparse_lens.bridges.module import Bridges
from sparse_lens.errors import SparseLensError
from sparse_lens.io.checkpoint import replace_directory, resolve_checkpoint_dir

WEIGHTS_FILE = "bridges.safetensors"
INFO_FILE = "bridges.json"
FORMAT = 1


def model_reference(name_or_path: str | Path) -> str:
    """How bridges.json names a model: a shipped name as is, a directory as an absolute path."""
    path = Path(name_or_path)
    if path.exists() or any(sep in str(name_or_path) for sep in ("/", "\\")):
        return str(path.resolve())
    return str(name_or_path)


def save_bridges(
    bridges: Bridges,
    directory: str | Path,
    dense: str,
    sparse: str,
    info: dict[str, Any] | None = None,
) -> Path:
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.saving-", dir=directory.parent))
    try:
        tensors = {k: v.detach().cpu().contiguous() for k, v in bridges.state_dict().items()}
        save_file(tensors, str(staging / WEIGHTS_FILE))
        record = {
            "format": FORMAT,
            "bridges": bridges.config(),
            "dense": dense,
            "sparse": sparse,
            **(info or {}),
        }
        (staging / INFO_FILE).write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
        replace_directory(staging, directory)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def read_info(directory: str | Path) -> dict[str, Any]:
    directory = resolve_checkpoint_dir(Path(directory))
    path = directory / INFO_FILE
    if not path.is_file():
        raise SparseLensError(
            f"no {INFO_FILE} here; pass a directory written by `sparse-lens bridge fit` or "
            "`bridge train`",
            path=directory,
        )
    try:
        info = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SparseLensError(f"corrupt bridge description ({error})", path=path) from None
    if not isinstance(info, dict) or info.get("format") != FORMAT:
        raise SparseLensError(
            f"unknown format (expected format {FORMAT})", path=path, field="format"
        )
    config = info.get("bridges")
    keys = {"n_layers", "d_dense", "d_sparse", "encoder_frac"}
    if not isinstance(config, dict) or set(config) != keys:
        raise SparseLensError(f"needs exactly the keys {sorted(keys)}", path=path, field="bridges")
    return info


def load_bridges(directory: str | Path) -> tuple[Bridges, dict[str, Any]]:
    """The bridges saved in ``directory`` and their bridges.json record."""
    directory = resolve_checkpoint_dir(Path(directory))
    info = read_info(directory)
    try:
        bridges = Bridges(**info["bridges"])
    except TypeError as error:
        raise SparseLensError(str(error), path=directory / INFO_FILE, field="bridges") from None
    path = directory / WEIGHTS_FILE
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as error:
        raise SparseLensError(f"cannot read bridge weights ({error})", path=path) from None
    expected = bridges.state_dict()
    if set(tensors) != set(expected) or any(
        tuple(tensors[k].shape) != tuple(v.shape) for k, v in expected.items()
    ):
        raise SparseLensError(
            "bridge weights do not match bridges.json (names or shapes); re-run the fit",
            path=path,
        )
    bridges.load_state_dict(tensors)
    return bridges.eval(), info


def load_bridged_models(directory: str | Path, dense: str | None = None, sparse: str | None = None):
    """The bridges in ``directory`` and the two models they join (overridable by name/path),
    checked against each other."""
    from sparse_lens.model import SparseTransformer

    bridges, info = load_bridges(directory)
    dense_model = SparseTransformer.from_pretrained(dense or info["dense"]).requires_grad_(False)
    sparse_model = SparseTransformer.from_pretrained(sparse or info["sparse"]).requires_grad_(False)
    bridges.check_models(dense_model, sparse_model)
    return bridges, dense_model, sparse_model, info


def write_json(path: str | Path, data: Any) -> Path:
    """Write ``data`` as JSON atomically (a sibling temporary file, then a rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return path
