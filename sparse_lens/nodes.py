"""Node sites: where circuit masks, ablations, patches and steering attach.

A node is one channel of one HookPoint: ``(hook name, flat index)``, printed as
``blocks.0.mlp.hook_post[2790]``. The paper's node types (REFERENCE section 4) map onto hooks:

=============  =============================  ======================  ==================
node type      hook                           width                   index meaning
=============  =============================  ======================  ==================
attn_read      blocks.{l}.attn.hook_read      d_in                    residual channel
q / k / v      blocks.{l}.attn.hook_q|k|v     n_heads * d_head        head * d_head + c
attn_write     blocks.{l}.hook_attn_out       d_model                 residual channel
mlp_read       blocks.{l}.mlp.hook_read       d_in                    residual channel
neuron         blocks.{l}.mlp.hook_post       d_mlp                   neuron
mlp_write      blocks.{l}.hook_mlp_out        d_model                 residual channel
resid          blocks.{l}.hook_resid_mid|post d_model                 residual channel
=============  =============================  ======================  ==================

``resid`` sites exist only when residual AbsTopK (resid_post_attn / resid_post_mlp) is on.
Edges are nonzero weights joining two nodes inside one sublayer: attn_read -> q/k/v (W_Q,
W_K, W_V), v -> attn_write (W_O), mlp_read -> neuron (W_in), neuron -> mlp_write (W_out).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from sparse_lens.config import SparseConfig
from sparse_lens.errors import SparseLensError

NODE_TYPES = ("attn_read", "q", "k", "v", "attn_write", "mlp_read", "neuron", "mlp_write", "resid")


@dataclass(frozen=True)
class NodeSite:
    """One HookPoint whose channels are nodes."""

    hook: str
    type: str
    layer: int
    width: int
    channel_shape: tuple[int, ...]
    """Trailing activation shape the flat index runs over, e.g. (n_heads, d_head) for q."""


def node_sites(cfg: SparseConfig) -> list[NodeSite]:
    """Every node site of a model, in forward order."""
    sites = []
    qkv_shape = (cfg.n_heads, cfg.d_head)
    qkv_width = cfg.n_heads * cfg.d_head
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}."
        sites += [
            NodeSite(b + "attn.hook_read", "attn_read", layer, cfg.d_in, (cfg.d_in,)),
            NodeSite(b + "attn.hook_q", "q", layer, qkv_width, qkv_shape),
            NodeSite(b + "attn.hook_k", "k", layer, qkv_width, qkv_shape),
            NodeSite(b + "attn.hook_v", "v", layer, qkv_width, qkv_shape),
            NodeSite(b + "hook_attn_out", "attn_write", layer, cfg.d_model, (cfg.d_model,)),
        ]
        if cfg.abstopk_at("resid_post_attn") is not None:
            sites.append(NodeSite(b + "hook_resid_mid", "resid", layer, cfg.d_model, (cfg.d_model,)))
        sites += [
            NodeSite(b + "mlp.hook_read", "mlp_read", layer, cfg.d_in, (cfg.d_in,)),
            NodeSite(b + "mlp.hook_post", "neuron", layer, cfg.d_mlp, (cfg.d_mlp,)),
            NodeSite(b + "hook_mlp_out", "mlp_write", layer, cfg.d_model, (cfg.d_model,)),
        ]
        if cfg.abstopk_at("resid_post_mlp") is not None:
            sites.append(NodeSite(b + "hook_resid_post", "resid", layer, cfg.d_model, (cfg.d_model,)))
    return sites


def site_by_hook(cfg: SparseConfig) -> dict[str, NodeSite]:
    return {site.hook: site for site in node_sites(cfg)}


def node_name(hook: str, index: int) -> str:
    return f"{hook}[{index}]"


_NODE_NAME = re.compile(r"^(?P<hook>[A-Za-z0-9_.]+)\[(?P<index>\d+)\]$")


def parse_node_name(name: str) -> tuple[str, int]:
    match = _NODE_NAME.match(name)
    if match is None:
        raise SparseLensError(f"'{name}' is not a node name like 'blocks.0.mlp.hook_post[12]'", field="node")
    return match["hook"], int(match["index"])


def check_node(cfg: SparseConfig, hook: str, index: int) -> NodeSite:
    """The site of a node, or a SparseLensError naming what is wrong with it."""
    site = site_by_hook(cfg).get(hook)
    if site is None:
        raise SparseLensError(f"'{hook}' is not a node site of this model", field="hook")
    if not 0 <= index < site.width:
        raise SparseLensError(f"index {index} is out of range for {hook} (width {site.width})", field="index")
    return site


def describe_node(cfg: SparseConfig, hook: str, index: int) -> str:
    """A short human description, e.g. 'layer 1 v channel (head 3, dim 7)'."""
    site = check_node(cfg, hook, index)
    if site.type in ("q", "k", "v"):
        head, dim = divmod(index, cfg.d_head)
        return f"layer {site.layer} {site.type} channel (head {head}, dim {dim})"
    if site.type == "neuron":
        return f"layer {site.layer} MLP neuron {index}"
    if site.type == "attn_read" and index >= cfg.d_model:
        return f"layer {site.layer} attention read of position channel {index - cfg.d_model}"
    if site.type == "mlp_read" and index >= cfg.d_model:
        return f"layer {site.layer} MLP read of position channel {index - cfg.d_model}"
    return f"layer {site.layer} {site.type.replace('_', ' ')} of residual channel {index}"
