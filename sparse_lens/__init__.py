"""sparse-lens: weight-sparse transformers with readable circuits, as TransformerLens models."""

from sparse_lens.config import SparseConfig
from sparse_lens.errors import SparseLensError
from sparse_lens.model import SparseTransformer

__all__ = ["SparseConfig", "SparseTransformer", "SparseLensError"]
__version__ = "0.1.0"
