"""sparse-lens: weight-sparse transformers with readable circuits, as TransformerLens models.

The top-level names are imported lazily so that the CLI (`sparse-lens --help`) and modules that
need no model do not pay for importing torch and transformer_lens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sparse_lens.errors import SparseLensError

if TYPE_CHECKING:
    from sparse_lens.config import SparseConfig
    from sparse_lens.model import SparseTransformer

__all__ = ["SparseConfig", "SparseTransformer", "SparseLensError"]
__version__ = "0.1.0"


def __getattr__(name: str):
    if name == "SparseConfig":
        from sparse_lens.config import SparseConfig

        return SparseConfig
    if name == "SparseTransformer":
        from sparse_lens.model import SparseTransformer

        return SparseTransformer
    raise AttributeError(f"module 'sparse_lens' has no attribute {name!r}")
