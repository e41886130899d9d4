"""Models shipped inside the package, resolved by name with no network access."""

from __future__ import annotations

from pathlib import Path

from sparse_lens.errors import SparseLensError

PRETRAINED_DIR = Path(__file__).parent


def shipped_model_names() -> list[str]:
    return sorted(p.name for p in PRETRAINED_DIR.iterdir() if (p / "config.json").is_file())


def shipped_model_dir(name: str) -> Path:
    directory = PRETRAINED_DIR / name
    if not (directory / "config.json").is_file():
        available = ", ".join(shipped_model_names()) or "none yet"
        raise SparseLensError(
            f"'{name}' is neither a model directory nor a shipped model (shipped: {available})",
            path=name,
        )
    return directory


def is_shipped_dir(directory: str | Path) -> bool:
    """True for the package's own model folders (and anything inside them): never written to."""
    resolved = Path(directory).resolve()
    root = PRETRAINED_DIR.resolve()
    return resolved == root or root in resolved.parents
