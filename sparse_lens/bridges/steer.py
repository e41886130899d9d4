"""Steering a dense model through a readable node of its bridged sparse model.

The node is a channel ``c`` of a sublayer's post-norm read in the sparse model
(``blocks.{l}.attn.hook_read[c]`` or ``blocks.{l}.mlp.hook_read[c]``; its site is that
sublayer's input). At that site of the dense model, a TransformerLens hook

1. encodes the dense residual stream into the sparse one and reads the node's actual value
   there (norm, then the sublayer's AbsTopK, exactly what the sparse sublayer reads);
2. takes the delta ``counterfactual - actual`` at every token (the edit, in post-norm units);
3. turns it into sparse residual units: divided by the norm weight ``w_c`` and multiplied by
   the RMS of the sparse stream at the site (averaged over a reference set), i.e. the dense
   stream's RMS times the RMS ratio sparse / dense;
4. adds ``s * delta_resid * decoder_i[:, c]`` (the channel's decoder row) to the dense stream.

``s = 0`` leaves the dense model exactly as it is. A control steers along another direction
(another channel's decoder row rescaled to the node's row norm) with the same deltas.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sparse_lens.bridges.hybrid import residuals_at_sites, sublayer_read
from sparse_lens.bridges.module import Bridges
from sparse_lens.bridges.sites import BridgeSite, site_of_read_hook
from sparse_lens.errors import SparseLensError
from sparse_lens.nodes import check_node, parse_node_name

Counterfactual = float | Float[Tensor, "batch pos"]


@dataclass(frozen=True)
class SteeringNode:
    site: BridgeSite
    channel: int
    norm_weight: float


def steering_node(sparse, node: str) -> SteeringNode:
    """The bridge site and channel of a node name (a SparseLensError for any other node)."""
    hook, channel = parse_node_name(node)
    check_node(sparse.cfg, hook, channel)
    site = site_of_read_hook(sparse.cfg.n_layers, hook)
    if site is None:
        raise SparseLensError(
            f"'{node}' is not a residual read node; steer a channel of a sublayer's post-norm "
            "read, e.g. blocks.1.attn.hook_read[7]",
            field="node",
        )
    if channel >= sparse.cfg.d_model:
        raise SparseLensError(
            f"'{node}' reads a position embedding, not the residual stream (d_model "
            f"{sparse.cfg.d_model})",
            field="node",
        )
    block = sparse.blocks[site.layer]
    weight = float((block.ln1 if site.sublayer == "attn" else block.ln2).w[channel])
    if weight == 0.0:
        raise SparseLensError(f"'{node}' is switched off (its norm weight is 0)", field="node")
    return SteeringNode(site, channel, weight)


@torch.no_grad()
def reference_rms(
    dense, sparse, site: BridgeSite, tokens: Int[Tensor, "batch pos"]
) -> tuple[float, float]:
    """Mean per-token RMS of the dense and of the sparse residual stream at ``site``."""
    _, h_dense = residuals_at_sites(dense, tokens, [site])
    _, h_sparse = residuals_at_sites(sparse, tokens, [site])
    rms = [float(h[site.index].pow(2).mean(-1).sqrt().mean()) for h in (h_dense, h_sparse)]
    return rms[0], rms[1]


@torch.no_grad()
def node_values(
    dense, sparse, bridges: Bridges, node: SteeringNode, tokens: Int[Tensor, "batch pos"]
) -> Float[Tensor, "batch pos"]:
    """The node's value at every token as the bridge sees the dense model (encode, read)."""
    _, h_dense = residuals_at_sites(dense, tokens, [node.site])
    encoded = bridges.encode(node.site.index, h_dense[node.site.index])
    return sublayer_read(sparse, node.site, encoded)[..., node.channel]


def steering_hook(
    sparse,
    bridges: Bridges,
    node: SteeringNode,
    counterfactual: Counterfactual,
    strength: float,
    rms_sparse: float,
    direction: Float[Tensor, " d_dense"] | None = None,
) -> tuple[str, Callable]:
    """``(hook name, hook function)`` for the dense model (``model.hooks(fwd_hooks=[...])`` or
    ``run_with_hooks``); ``direction`` replaces the node's decoder row (for controls)."""
    site, channel = node.site, node.channel
    row = bridges.decoders[site.index].weight[:, channel] if direction is None else direction

    def hook(resid, hook=None):
        if strength == 0.0:
            return resid
        encoded = bridges.encode(site.index, resid)
        actual = sublayer_read(sparse, site, encoded)[..., channel]
        delta = (counterfactual - actual) / node.norm_weight * rms_sparse
        return resid + strength * delta[..., None] * row.to(resid.dtype)

    return site.hook, hook


@dataclass
class SteeringCurve:
    node: str
    strengths: list[float]
    logit_diff: list[float]
    """Mean logit(answer A) - logit(answer B) at each prompt's scored position, per strength."""
    rms_dense: float
    rms_sparse: float


@torch.no_grad()
def steer(
    dense,
    sparse,
    bridges: Bridges,
    node: str,
    tokens: Int[Tensor, "batch pos"],
    scored: tuple[Int[Tensor, " batch"], Int[Tensor, " batch"], Int[Tensor, " batch"]],
    counterfactual: Counterfactual,
    strengths: Sequence[float],
    reference_tokens: Int[Tensor, "batch pos"] | None = None,
    direction: Float[Tensor, " d_dense"] | None = None,
) -> SteeringCurve:
    """The dense model's answer logit difference against the steering strength.

    ``scored`` = (position, answer A id, answer B id) per prompt. The RMS scale comes from
    ``reference_tokens`` (default: ``tokens``).
    """
    bridges.check_models(dense, sparse)
    target = steering_node(sparse, node)
    reference = tokens if reference_tokens is None else reference_tokens
    rms_dense, rms_sparse = reference_rms(dense, sparse, target.site, reference)
    position, answer_a, answer_b = scored
    rows = torch.arange(tokens.shape[0])
    diffs = []
    for strength in strengths:
        hook = steering_hook(
            sparse, bridges, target, counterfactual, float(strength), rms_sparse, direction
        )
        with dense.hooks(fwd_hooks=[hook]):
            logits = dense(tokens)[rows, position]
        diffs.append(float((logits[rows, answer_a] - logits[rows, answer_b]).mean()))
    return SteeringCurve(node, [float(s) for s in strengths], diffs, rms_dense, rms_sparse)
