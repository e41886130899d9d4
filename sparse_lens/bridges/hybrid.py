"""Hybrid forwards: run one model up to a site, switch streams, run the other model on.

Built on the model's own ``start_at_layer`` and its blocks' two halves, so no model is copied:
a site at an MLP input runs that block's MLP half, then the model from the next block.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

from sparse_lens.bridges.sites import BridgeSite


def residuals_at_sites(
    model, tokens: Int[Tensor, "batch pos"], sites: list[BridgeSite], return_type: str = "logits"
) -> tuple[Tensor, dict[int, Float[Tensor, "batch pos d_model"]]]:
    """One forward; returns its output and the residual stream at every site (not detached,
    so gradients flow through them when the model trains)."""
    captured: dict[int, Tensor] = {}

    def keep(index: int):
        def hook(resid, hook):
            captured[index] = resid

        return hook

    with model.hooks(fwd_hooks=[(site.hook, keep(site.index)) for site in sites]):
        out = model(tokens, return_type=return_type)
    return out, captured


def run_from_site(
    model,
    resid: Float[Tensor, "batch pos d_model"],
    site: BridgeSite,
    tokens: Int[Tensor, "batch pos"],
) -> Float[Tensor, "batch pos d_vocab"]:
    """The logits of ``model`` continued from ``resid`` placed at ``site``."""
    start = site.layer
    if site.sublayer == "mlp":
        pos = model.block_positions(resid.shape[0], resid.shape[1])
        resid = model.blocks[site.layer].mlp_sublayer(resid, pos)
        start += 1
    return model(resid, start_at_layer=start, tokens=tokens)


def sublayer_read(model, site: BridgeSite, resid: Float[Tensor, "batch pos d_model"]) -> Tensor:
    """What the sublayer at ``site`` reads from ``resid``: norm (+ positions), then its AbsTopK;
    the values of its ``hook_read`` node site."""
    block = model.blocks[site.layer]
    norm, pos_norm, sublayer = (
        (block.ln1, "ln_p1", block.attn)
        if site.sublayer == "attn"
        else (block.ln2, "ln_p2", block.mlp)
    )
    read = norm(resid)
    pos = model.block_positions(resid.shape[0], resid.shape[1])
    if pos is not None:
        read = torch.cat([read, getattr(block, pos_norm)(pos)], dim=-1)
    return sublayer.topk_read(read)
