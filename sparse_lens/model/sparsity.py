"""Which tensors are weight-sparse, and along which axis their units run.

The weight sparsifier (sparse_lens.train.sparsifier) is generic: it needs, for each tensor, its
kind (matrices at the scheduled L0; embeddings and biases at their own, denser L0) and a view
whose rows are the units that keep a minimum number of nonzeros. The axis is the subtle part
(REFERENCE section 2; one reimplementation got it wrong for c_proj):

* W_Q / W_K / W_V [head, d_in, d_head]: per q/k/v channel (output unit) over its inputs.
* W_O [head, d_head, d_model]: per residual output channel over the attention channels.
* W_in [d_in, d_mlp]: per MLP neuron (output) over its inputs.
* W_out [d_mlp, d_model]: per MLP neuron (its INPUT side) over the residual channels it writes.
* Embeddings, unembedding and biases: no per-unit minimum (residual channels get none).

Norm weights, attention-sink logits and the bigram table are not sparsified.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from torch import Tensor, nn

Kind = Literal["matrix", "embedding", "bias"]


@dataclass(frozen=True)
class SparseTarget:
    name: str
    param: nn.Parameter
    kind: Kind
    unit_rows: Callable[[Tensor], Tensor] | None
    """Maps the tensor to [n_units, fan] whose rows are units (None: no per-unit minimum)."""


def _qkv_units(w: Tensor) -> Tensor:  # [head, d_in, d_head] -> [head * d_head, d_in]
    return w.permute(0, 2, 1).reshape(-1, w.shape[1])


def _attn_out_units(w: Tensor) -> Tensor:  # [head, d_head, d_model] -> [d_model, head * d_head]
    return w.reshape(-1, w.shape[-1]).T


def _columns(w: Tensor) -> Tensor:  # [d_in, d_mlp] -> [d_mlp, d_in]
    return w.T


def _rows(w: Tensor) -> Tensor:  # [d_mlp, d_model] -> itself
    return w


_MATRIX_UNITS: dict[str, Callable[[Tensor], Tensor]] = {
    "W_Q": _qkv_units,
    "W_K": _qkv_units,
    "W_V": _qkv_units,
    "W_O": _attn_out_units,
    "W_in": _columns,
    "W_out": _rows,
}
_EMBEDDINGS = ("W_E", "W_pos", "W_U")


def sparse_targets(model: nn.Module) -> list[SparseTarget]:
    """Every tensor the weight sparsifier projects, in parameter order."""
    targets = []
    for name, param in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf in _MATRIX_UNITS:
            targets.append(SparseTarget(name, param, "matrix", _MATRIX_UNITS[leaf]))
        elif leaf in _EMBEDDINGS:
            targets.append(SparseTarget(name, param, "embedding", None))
        elif leaf.startswith("b_"):
            targets.append(SparseTarget(name, param, "bias", None))
    return targets
