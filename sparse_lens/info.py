"""What a sparse model is made of: its architecture and, per stored tensor, how many nonzeros.

Sparsity lives in the weights (zeros are stored in the tensors), so counting nonzeros in the
state dict is the whole truth about a model's weight sparsity; nothing else needs consulting.
``sparse-lens info`` prints this; notebooks and the README use :func:`model_info` directly.

Every tensor a checkpoint stores is listed (parameters and persistent buffers such as the fixed
bigram table or ``unembed.b_U``); a tied ``W_U`` is a view of ``W_E`` and is counted once.
Tensors are tagged with a kind: the sparsifier's own targets (``matrix``, ``embedding``,
``bias``, from :func:`sparse_lens.model.sparse_targets`) and the dense rest (``norm``,
``sink``, ``bigram``, ``logit-bias``), so "matrix density" means exactly the density the
weight-sparse training schedule controls.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from sparse_lens.config import SparseConfig
from sparse_lens.model import SparseTransformer, sparse_targets

_DENSE_KINDS = {"w": "norm", "sink_logit": "sink", "W_bigram": "bigram", "b_U": "logit-bias"}


@dataclass(frozen=True)
class TensorStats:
    """One stored tensor: its shape and how many of its entries are nonzero."""

    name: str
    kind: str
    shape: tuple[int, ...]
    params: int
    nonzeros: int
    sparsified: bool
    """Whether the weight sparsifier projects this tensor (see sparse_targets)."""

    @property
    def density(self) -> float:
        return self.nonzeros / self.params if self.params else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "shape": list(self.shape),
            "params": self.params,
            "nonzeros": self.nonzeros,
            "density": self.density,
            "sparsified": self.sparsified,
        }


@dataclass(frozen=True)
class Total:
    params: int
    nonzeros: int

    @property
    def density(self) -> float:
        return self.nonzeros / self.params if self.params else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"params": self.params, "nonzeros": self.nonzeros, "density": self.density}


def _total(tensors: list[TensorStats]) -> Total:
    return Total(sum(t.params for t in tensors), sum(t.nonzeros for t in tensors))


@dataclass(frozen=True)
class ModelInfo:
    """Architecture + per-tensor weight statistics of one model (JSON-ready via to_dict)."""

    source: str
    config: dict[str, Any]
    tokenizer_vocab: int | None
    tensors: list[TensorStats] = field(default_factory=list)

    @property
    def total(self) -> Total:
        return _total(self.tensors)

    @property
    def matrices(self) -> Total:
        """The attention and MLP weight matrices: what the L0 schedule makes sparse."""
        return _total([t for t in self.tensors if t.kind == "matrix"])

    @property
    def sparsified(self) -> Total:
        return _total([t for t in self.tensors if t.sparsified])

    def by_kind(self) -> dict[str, Total]:
        kinds = dict.fromkeys(t.kind for t in self.tensors)
        return {kind: _total([t for t in self.tensors if t.kind == kind]) for kind in kinds}

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "config": self.config,
            "tokenizer_vocab": self.tokenizer_vocab,
            "tensors": [t.to_dict() for t in self.tensors],
            "totals": {
                "all": self.total.to_dict(),
                "matrices": self.matrices.to_dict(),
                "sparsified": self.sparsified.to_dict(),
                "by_kind": {kind: total.to_dict() for kind, total in self.by_kind().items()},
            },
        }

    def format(self) -> str:
        """A human-readable report: architecture summary, tensor table, totals."""
        return "\n".join(
            [f"model: {self.source}", "", *_architecture_lines(self), "", *_table_lines(self)]
        )


def weight_stats(model: SparseTransformer) -> list[TensorStats]:
    """Shape, nonzeros and kind of every tensor ``model`` stores, in state-dict order."""
    targets = {target.name: target.kind for target in sparse_targets(model)}
    stats = []
    for name, tensor in model.state_dict(keep_vars=True).items():
        leaf = name.rsplit(".", 1)[-1]
        stats.append(
            TensorStats(
                name=name,
                kind=targets.get(name) or _DENSE_KINDS.get(leaf, "other"),
                shape=tuple(tensor.shape),
                params=tensor.numel(),
                nonzeros=int(torch.count_nonzero(tensor.detach())),
                sparsified=name in targets,
            )
        )
    return stats


def model_info(model: SparseTransformer, source: str = "(in memory)") -> ModelInfo:
    """Collect :class:`ModelInfo` for ``model``; ``source`` says where it came from."""
    tokenizer = model.tokenizer
    return ModelInfo(
        source=source,
        config=model.cfg.to_dict(),
        tokenizer_vocab=None if tokenizer is None else tokenizer.get_vocab_size(),
        tensors=weight_stats(model),
    )


# --------------------------------------------------------------------------- example model
EXAMPLE_CONFIG = dict(
    n_layers=2, d_model=128, n_heads=8, d_head=16, d_mlp=512, n_ctx=64, d_vocab=2048
)
"""A paper-shaped (d_head 16, 4x MLP, vocab 2048, AbsTopK 1/4) but tiny architecture."""


@torch.no_grad()
def example_sparse_model(density: float = 1 / 16, seed: int = 0) -> SparseTransformer:
    """A small random model whose weight matrices and embeddings keep ``density`` of entries.

    Each weight matrix and embedding keeps exactly its ``max(1, int(density * numel))``
    largest-magnitude entries, the rest set to zero: the shape of a weight-sparse model without
    training one, for ``sparse-lens info --example`` and docs. Biases and the bigram table keep
    their zero initialisation.
    """
    if not 0.0 < density <= 1.0:
        raise ValueError(f"density must be in (0, 1], got {density}")
    model = SparseTransformer(SparseConfig(**EXAMPLE_CONFIG), seed=seed)
    for target in sparse_targets(model):
        if target.kind in ("matrix", "embedding"):
            _keep_largest(target.param, max(1, int(density * target.param.numel())))
    return model.eval()


def _keep_largest(weight: Tensor, k: int) -> None:
    flat = weight.view(-1)
    keep = torch.topk(flat.abs(), k, sorted=False).indices
    mask = torch.zeros_like(flat, dtype=torch.bool)
    mask[keep] = True
    flat.masked_fill_(~mask, 0.0)


# --------------------------------------------------------------------------- text report
def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def _architecture_lines(info: ModelInfo) -> list[str]:
    c = info.config
    positions = c["positional_embedding_type"]
    if positions == "concat":
        positions += f" (d_pos_emb {c['d_pos_emb']}, own RMSNorm, on every sublayer input)"
    elif positions == "standard":
        positions += " (learned W_pos added to the embedding)"
    if c["afrac"] is None or not c["afrac_locations"]:
        abstopk = "off"
    else:
        abstopk = f"keep {c['afrac']:g} at {', '.join(c['afrac_locations'])}"
    tokenizer = "none" if info.tokenizer_vocab is None else f"{info.tokenizer_vocab} ids"
    rows = [
        ("layers", c["n_layers"]),
        ("d_model", c["d_model"]),
        ("heads", f"{c['n_heads']} x d_head {c['d_head']}"),
        ("d_mlp", f"{c['d_mlp']} ({c['act_fn']})"),
        ("n_ctx", c["n_ctx"]),
        ("vocab", c["d_vocab"]),
        ("tokenizer", tokenizer),
        ("AbsTopK", abstopk),
        ("attention sink", _yes(c["attn_sink"])),
        ("bigram table", c["bigram_table"]),
        ("positions", positions),
        ("biases", _yes(c["use_bias"])),
        ("final logits bias", _yes(c["final_logits_bias"])),
        ("tied unembedding", _yes(c["tied_unembed"])),
        ("residual activation", c["residual_activation"]),
        ("norm", f"RMSNorm, eps {c['eps']:g}"),
    ]
    width = max(len(label) for label, _ in rows)
    return ["architecture"] + [f"  {label:<{width}}  {value}" for label, value in rows]


def _table_lines(info: ModelInfo) -> list[str]:
    header = ("tensor", "kind", "shape", "params", "nonzeros", "density")
    rows = [
        (
            t.name,
            t.kind,
            "x".join(map(str, t.shape)) or "scalar",
            f"{t.params:,}",
            f"{t.nonzeros:,}",
            _pct(t.density),
        )
        for t in info.tensors
    ]
    totals = [
        ("all tensors", info.total),
        ("matrices (W_Q W_K W_V W_O W_in W_out)", info.matrices),
        ("sparsified (matrices, embeddings, biases)", info.sparsified),
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    right = {3, 4, 5}

    def line(row: tuple[str, ...]) -> str:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        return "  " + "  ".join(cells).rstrip()

    label_width = max(len(label) for label, _ in totals)
    total_lines = [
        f"  {label:<{label_width}}  {total.params:>12,} params  {total.nonzeros:>12,} nonzeros  {_pct(total.density):>8}"
        for label, total in totals
    ]
    return ["weights", line(header), *map(line, rows), "", "totals", *total_lines]


def _pct(fraction: float) -> str:
    return f"{100 * fraction:.2f}%"


__all__ = [
    "ModelInfo",
    "TensorStats",
    "Total",
    "example_sparse_model",
    "model_info",
    "weight_stats",
]
