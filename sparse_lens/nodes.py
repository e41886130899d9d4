"""Node names and checks: where circuit masks, ablations, patches and steering attach.

A node is one channel of one HookPoint: ``(hook name, flat index)``, printed as
``blocks.0.mlp.hook_post[2790]``. Which HookPoints are node sites, their node types and widths,
and the weights joining them are the graph table's (:mod:`sparse_lens.model.graph`);
:func:`node_sites` lists them for one model.
"""

from __future__ import annotations

import re

from sparse_lens.config import SparseConfig
from sparse_lens.errors import SparseLensError
from sparse_lens.model.graph import NODE_TYPES, NodeSite, node_sites

__all__ = [
    "NODE_TYPES",
    "NodeSite",
    "node_sites",
    "site_by_hook",
    "node_name",
    "parse_node_name",
    "check_node",
    "describe_node",
]


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
