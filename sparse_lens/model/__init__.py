"""The weight-sparse transformer and its components."""

from sparse_lens.model.sparsity import SparseTarget, sparse_targets
from sparse_lens.model.transformer import SparseTransformer

__all__ = ["SparseTransformer", "SparseTarget", "sparse_targets"]
