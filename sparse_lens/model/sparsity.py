"""Which tensors are weight-sparse, and along which axis their units run.

The weight sparsifier (sparse_lens.train.sparsifier) is generic: it needs, for each tensor, its
kind (matrices at the scheduled L0; embeddings and biases at their own, denser L0) and a view
whose rows are the units that keep a minimum number of nonzeros. The matrices are the weights
joining node sites, and which side of each is its unit axis is the graph table's ``unit``
column (:data:`sparse_lens.model.graph.WEIGHTS`; the subtle part, REFERENCE section 2: one
reimplementation got it wrong for c_proj). Embeddings, unembedding and biases get no per-unit
minimum (residual channels get none). Norm weights, attention-sink logits and the bigram table
are not sparsified.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

from sparse_lens.model.graph import WEIGHT_BY_PARAM

Kind = Literal["matrix", "embedding", "bias"]


@dataclass(frozen=True)
class SparseTarget:
    name: str
    param: nn.Parameter
    kind: Kind
    unit_rows: Callable[[Tensor], Tensor] | None
    """Maps the tensor to [n_units, fan] whose rows are units (None: no per-unit minimum)."""


_EMBEDDINGS = ("W_E", "W_pos", "W_U")


def sparse_targets(model: nn.Module) -> list[SparseTarget]:
    """Every tensor the weight sparsifier projects, in parameter order."""
    targets = []
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        in_block = name.split(".", 2)[-1] if name.startswith("blocks.") else None
        if in_block in WEIGHT_BY_PARAM:
            targets.append(SparseTarget(name, param, "matrix", WEIGHT_BY_PARAM[in_block].unit_rows))
        elif leaf in _EMBEDDINGS:
            targets.append(SparseTarget(name, param, "embedding", None))
        elif leaf.startswith("b_"):
            targets.append(SparseTarget(name, param, "bias", None))
    return targets
