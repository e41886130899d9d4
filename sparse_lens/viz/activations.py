"""What the views show about nodes: their activations, head patterns and top-activating text.

Activations are read from the FULL model (no ablation), at the node sites of
:mod:`sparse_lens.nodes`: a node's value is channel ``index`` of its hook's output flattened over
the trailing dims (q/k/v index = head * d_head + dim). Only the hooks a circuit uses are cached,
so a pass over held-out windows costs one forward and a few small tensors.

Top-activating snippets rank windows by the node's largest MAGNITUDE: AbsTopK keeps the largest
|values| of either sign, so a residual or q/k/v channel's strongest use may be negative.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sparse_lens.errors import SparseLensError
from sparse_lens.nodes import check_node
from sparse_lens.viz.circuit_data import CircuitData, circuit_data


def check_circuit(model: Any, data: CircuitData) -> None:
    """SparseLensError if a node does not exist in ``model`` (a circuit of another model)."""
    for node in data.nodes:
        try:
            check_node(model.cfg, node.hook, node.index)
        except SparseLensError as error:
            raise SparseLensError(
                f"node {node.name} does not fit this model: {error}", field="nodes"
            ) from None


@torch.no_grad()
def node_activations(
    model: Any, circuit: Any, tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos node"]:
    """Activation of every circuit node (in the circuit's node order) at every position."""
    data = circuit_data(circuit)
    check_circuit(model, data)
    if not data.nodes:
        return torch.zeros(*tokens.shape, 0)
    hooks = {node.hook for node in data.nodes}
    _, cache = model.run_with_cache(
        tokens.to(model.W_E.device),
        names_filter=lambda name: name in hooks,
        return_cache_object=False,
    )
    flat = {hook: cache[hook].flatten(2) for hook in hooks}
    return (
        torch.stack([flat[node.hook][..., node.index] for node in data.nodes], dim=-1).float().cpu()
    )


@torch.no_grad()
def head_patterns(
    model: Any, tokens: Int[Tensor, "1 pos"], heads: Sequence[tuple[int, int]]
) -> Float[Tensor, "head pos pos"]:
    """Attention patterns [head, query, key] of ``heads`` ((layer, head) pairs) on one prompt."""
    for layer, head in heads:
        if not (0 <= layer < model.cfg.n_layers and 0 <= head < model.cfg.n_heads):
            raise SparseLensError(f"no head {head} in layer {layer} of this model", field="heads")
    hooks = {f"blocks.{layer}.attn.hook_pattern" for layer, _ in heads}
    _, cache = model.run_with_cache(
        tokens.to(model.W_E.device),
        names_filter=lambda name: name in hooks,
        return_cache_object=False,
    )
    n_pos = tokens.shape[1]
    if not heads:
        return torch.zeros(0, n_pos, n_pos)
    return (
        torch.stack([cache[f"blocks.{layer}.attn.hook_pattern"][0, head] for layer, head in heads])
        .float()
        .cpu()
    )


@dataclass(frozen=True)
class Snippet:
    """A held-out context around one node's strongest activation in one window."""

    window: int
    position: int
    value: float
    tokens: list[int]
    values: list[float]
    """The node's activation at each token of the snippet."""
    highlight: int
    """Index in ``tokens`` of the maximum-activation token."""


@torch.no_grad()
def top_activating(
    model: Any,
    circuit: Any,
    heldout: Int[Tensor, "window pos"],
    k: int = 5,
    before: int = 16,
    after: int = 4,
    batch_size: int = 16,
) -> dict[str, list[Snippet]]:
    """Each node's ``k`` held-out windows of largest |activation|, as snippets around the peak.

    Windows where the node is zero throughout are left out, so a node may get fewer than ``k``.

    One pass collects, per window and node, the peak |activation| and where it is; a second
    pass over just the chosen windows reads the context, so memory stays [window, node].
    """
    data = circuit_data(circuit)
    check_circuit(model, data)
    if heldout.ndim != 2 or heldout.shape[0] == 0:
        raise SparseLensError(
            "held-out tokens must be a non-empty [window, pos] tensor", field="heldout"
        )
    peaks, where = [], []
    for start in range(0, heldout.shape[0], batch_size):
        acts = node_activations(model, data, heldout[start : start + batch_size]).abs()
        value, position = acts.max(dim=1)  # [batch, node]
        peaks.append(value)
        where.append(position)
    peak, peak_pos = torch.cat(peaks), torch.cat(where)  # [window, node]
    chosen = peak.topk(min(k, peak.shape[0]), dim=0).indices  # [k, node]

    windows = sorted({int(w) for w in chosen.flatten()})
    context = node_activations(model, data, heldout[windows])  # [chosen window, pos, node]
    row_of = {w: i for i, w in enumerate(windows)}
    snippets: dict[str, list[Snippet]] = {}
    for j, node in enumerate(data.nodes):
        items = []
        for window in chosen[:, j].tolist():
            if float(peak[window, j]) == 0.0:
                continue  # AbsTopK zeroed the node everywhere in this window: nothing to show
            pos = int(peak_pos[window, j])
            lo, hi = max(0, pos - before), min(heldout.shape[1], pos + after + 1)
            values = context[row_of[window], lo:hi, j]
            items.append(
                Snippet(
                    window=window,
                    position=pos,
                    value=float(context[row_of[window], pos, j]),
                    tokens=heldout[window, lo:hi].tolist(),
                    values=values.tolist(),
                    highlight=pos - lo,
                )
            )
        snippets[node.name] = items
    return snippets


def str_tokens(model: Any, tokens: Sequence[int]) -> list[str]:
    """Token strings for display; ``<id>`` when the model has no tokenizer."""
    if getattr(model, "tokenizer", None) is None:
        return [f"<{t}>" for t in tokens]
    return [model.tokenizer.decode([int(t)], skip_special_tokens=False) for t in tokens]
