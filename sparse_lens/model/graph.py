"""The model's graph, stated once: node sites, the weights that join them, and the logits.

A node is one channel of one HookPoint (REFERENCE section 4). :data:`SITES` lists the
HookPoints whose channels are nodes, in forward order inside a block: the hook's name inside
``blocks.{layer}.``, the node type, the channel shape (config fields), the name OpenAI's
circuit_sparsity gives the same activation, and whether its channels connect to the embedding
(a residual read) or to the unembedding (a residual write). :data:`WEIGHTS` lists the weight
matrices that join two sites of one sublayer: their nonzero entries are a circuit's edges, and
weight sparsity keeps a minimum of nonzeros per channel of one of the two sides.

Everything that needs the graph reads these two tables: node sites and names
(:mod:`sparse_lens.nodes`), circuit edges and io connections (:mod:`sparse_lens.circuits.circuit`),
the viewers' node types (:mod:`sparse_lens.viz.circuit_data`), the sparsifier's unit axes
(:mod:`sparse_lens.model.sparsity`) and the OpenAI importer's hook and weight names
(:mod:`sparse_lens.io.openai`). Adding a node site is one row of :data:`SITES` (plus the
HookPoint in the model); adding a weight between sites is one row of :data:`WEIGHTS`.

Every weight is viewed as an edge matrix ``[src width, dst width]`` whose row / column indices
are the two sites' flat channel indices: for q / k / v (and W_O's input) the flat index of
channel ``[head, c]`` is ``head * d_head + c``. A PyTorch Linear weight ``[out, in]`` (OpenAI's
layout) is that matrix transposed.

:func:`logits_from_resid` is the model's head (final norm, unembedding, bigram table); the
forward pass and task scoring (:func:`sparse_lens.circuits.evaluate.answer_logits`) both call it.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from sparse_lens.config import SparseConfig
from sparse_lens.model.typecheck import shape_checked

NODE_TYPES = ("attn_read", "q", "k", "v", "attn_write", "mlp_read", "neuron", "mlp_write", "resid")
"""The paper's node types; every site of :data:`SITES` has one."""

IO = Literal["embed", "unembed"]


def _always(cfg: SparseConfig) -> bool:
    return True


def _with_abstopk(location: str) -> Callable[[SparseConfig], bool]:
    return lambda cfg: cfg.abstopk_at(location) is not None


@dataclass(frozen=True)
class Site:
    """One row of :data:`SITES`: a kind of node site, present in every block."""

    name: str
    """The hook's name inside ``blocks.{layer}.``, e.g. ``mlp.hook_post``."""
    type: str
    shape: tuple[str, ...]
    """Config fields giving the channel shape, e.g. ("n_heads", "d_head"); width = product."""
    openai: str | None
    """OpenAI's name for the activation inside layer ``{i}.`` (None: no per-layer name)."""
    io: IO | None = None
    """``embed``: channels read the residual stream (fed by the embeddings); ``unembed``: they
    write it (read by the unembedding). Listed as io connections, never as edges."""
    present: Callable[[SparseConfig], bool] = _always
    """Whether a model with this config has the site."""

    def hook(self, layer: int | str) -> str:
        """The hook's full name in ``layer`` (or a placeholder such as ``"{i}"``)."""
        return f"blocks.{layer}.{self.name}"

    def channel_shape(self, cfg: SparseConfig) -> tuple[int, ...]:
        return tuple(getattr(cfg, field) for field in self.shape)

    def width(self, cfg: SparseConfig) -> int:
        return math.prod(self.channel_shape(cfg))


SITES: tuple[Site, ...] = (
    Site("attn.hook_read", "attn_read", ("d_in",), "attn.act_in", io="embed"),
    Site("attn.hook_q", "q", ("n_heads", "d_head"), "attn.q"),
    Site("attn.hook_k", "k", ("n_heads", "d_head"), "attn.k"),
    Site("attn.hook_v", "v", ("n_heads", "d_head"), "attn.v"),
    Site("hook_attn_out", "attn_write", ("d_model",), "attn.resid_delta", io="unembed"),
    Site("hook_resid_mid", "resid", ("d_model",), "resid_mid", present=_with_abstopk("resid_post_attn")),
    Site("mlp.hook_read", "mlp_read", ("d_in",), "mlp.act_in", io="embed"),
    Site("mlp.hook_post", "neuron", ("d_mlp",), "mlp.post_act"),
    Site("hook_mlp_out", "mlp_write", ("d_model",), "mlp.resid_delta", io="unembed"),
    # OpenAI names this one "{i+1}.resid_in" (or "final_resid"): not a per-layer name
    Site("hook_resid_post", "resid", ("d_model",), None, present=_with_abstopk("resid_post_mlp")),
)  # fmt: skip
"""Every kind of node site, in forward order inside a block (module docstring). ``resid``
sites exist only with residual AbsTopK (resid_post_attn / resid_post_mlp); d_in = d_model
(+ d_pos_emb with concatenated positions)."""

SITE_BY_NAME = {site.name: site for site in SITES}


# ------------------------------------------------------------------ the weights between sites
def _heads_in(w: Tensor) -> Tensor:  # [head, d_in, d_head] -> [d_in, head * d_head]
    # Built as the transpose of [head * d_head, d_in] so that unit_rows (the sparsifier's
    # [unit, fan] view, the transpose again) is that contiguous tensor, as it always was.
    return w.permute(0, 2, 1).reshape(-1, w.shape[1]).T


def _heads_in_from(m: Tensor, cfg: SparseConfig) -> Tensor:  # [d_in, head * d_head] -> W_Q
    return m.reshape(m.shape[0], cfg.n_heads, cfg.d_head).permute(1, 0, 2)


def _heads_out(w: Tensor) -> Tensor:  # [head, d_head, d_model] -> [head * d_head, d_model]
    return w.reshape(-1, w.shape[-1])


def _heads_out_from(m: Tensor, cfg: SparseConfig) -> Tensor:  # [head * d_head, d_model] -> W_O
    return m.reshape(cfg.n_heads, cfg.d_head, m.shape[-1])


def _same(w: Tensor) -> Tensor:
    return w


def _same_from(m: Tensor, cfg: SparseConfig) -> Tensor:
    return m


@dataclass(frozen=True)
class Weight:
    """One row of :data:`WEIGHTS`: a weight matrix joining two sites of one sublayer."""

    param: str
    """The parameter's path inside ``blocks.{layer}.``, e.g. ``attn.W_Q``."""
    src: str
    dst: str
    """Names (:attr:`Site.name`) of the site it reads from and the site it writes to."""
    shape: tuple[str, ...]
    """Config fields giving the stored shape (TransformerLens layout), e.g. W_Q's
    ("n_heads", "d_in", "d_head")."""
    to_matrix: Callable[[Tensor], Tensor]
    """The stored tensor as the edge matrix [src width, dst width] (a view where possible)."""
    from_matrix: Callable[[Tensor, SparseConfig], Tensor]
    """The inverse: an edge matrix as the stored tensor."""
    unit: Literal["src", "dst"]
    """The side whose channels each keep a minimum of nonzeros under weight sparsity
    (REFERENCE section 2: the output channel, except W_out, whose units are the neurons)."""
    openai: str
    """OpenAI's tensor inside ``transformer.h.{i}.``: a Linear weight [out, in], the edge
    matrix transposed; weights naming the same tensor are consecutive slices of its rows, in
    table order (c_attn holds q, k, v)."""

    def matrix(self, block: nn.Module) -> Tensor:
        """This weight of ``block`` as the edge matrix [src width, dst width]."""
        return self.to_matrix(operator.attrgetter(self.param)(block))

    def unit_rows(self, w: Tensor) -> Tensor:
        """The stored tensor as [unit, fan]: rows are the channels of the ``unit`` side."""
        matrix = self.to_matrix(w)
        return matrix if self.unit == "src" else matrix.T


WEIGHTS: tuple[Weight, ...] = (
    Weight("attn.W_Q", "attn.hook_read", "attn.hook_q", ("n_heads", "d_in", "d_head"),
           _heads_in, _heads_in_from, "dst", "attn.c_attn.weight"),
    Weight("attn.W_K", "attn.hook_read", "attn.hook_k", ("n_heads", "d_in", "d_head"),
           _heads_in, _heads_in_from, "dst", "attn.c_attn.weight"),
    Weight("attn.W_V", "attn.hook_read", "attn.hook_v", ("n_heads", "d_in", "d_head"),
           _heads_in, _heads_in_from, "dst", "attn.c_attn.weight"),
    Weight("attn.W_O", "attn.hook_v", "hook_attn_out", ("n_heads", "d_head", "d_model"),
           _heads_out, _heads_out_from, "dst", "attn.c_proj.weight"),
    Weight("mlp.W_in", "mlp.hook_read", "mlp.hook_post", ("d_in", "d_mlp"),
           _same, _same_from, "dst", "mlp.c_fc.weight"),
    Weight("mlp.W_out", "mlp.hook_post", "hook_mlp_out", ("d_mlp", "d_model"),
           _same, _same_from, "src", "mlp.c_proj.weight"),
)  # fmt: skip
"""Every weight joining two node sites, in the order edges are listed. W_O joins v to the
attention write: the attention pattern mixes positions, not channels, so v channel
``head * d_head + c`` feeds W_O row ``head * d_head + c``."""

WEIGHT_BY_PARAM = {weight.param: weight for weight in WEIGHTS}


# ------------------------------------------------------------------ sites of one model
@dataclass(frozen=True)
class NodeSite:
    """One HookPoint whose channels are nodes."""

    hook: str
    type: str
    layer: int
    width: int
    channel_shape: tuple[int, ...]
    """Trailing activation shape the flat index runs over, e.g. (n_heads, d_head) for q."""
    io: IO | None = None
    """See :attr:`Site.io`."""


def node_sites(cfg: SparseConfig) -> list[NodeSite]:
    """Every node site of a model, in forward order."""
    sites = []
    for layer in range(cfg.n_layers):
        for site in SITES:
            if site.present(cfg):
                shape, width = site.channel_shape(cfg), site.width(cfg)
                sites.append(NodeSite(site.hook(layer), site.type, layer, width, shape, site.io))
    return sites


_BLOCK_HOOK = re.compile(r"^blocks\.(?P<layer>\d+)\.(?P<name>.+)$")


def parse_site_hook(hook: str) -> tuple[Site, int] | None:
    """The table row and layer of a node-site hook name, without a model (None if it is none)."""
    match = _BLOCK_HOOK.match(hook)
    if match is None or match["name"] not in SITE_BY_NAME:
        return None
    return SITE_BY_NAME[match["name"]], int(match["layer"])


# ------------------------------------------------------------------ weights of one model
def edge_matrices(model: nn.Module) -> Iterator[tuple[str, str, Tensor]]:
    """(src hook, dst hook, edge matrix [src width, dst width]) of every weight joining two
    node sites, block by block in :data:`WEIGHTS` order. Its nonzeros are the model's edges."""
    for layer, block in enumerate(model.blocks):
        for weight in WEIGHTS:
            src, dst = SITE_BY_NAME[weight.src].hook(layer), SITE_BY_NAME[weight.dst].hook(layer)
            yield src, dst, weight.matrix(block)


@torch.no_grad()
def channel_degrees(model: nn.Module) -> dict[str, Int[Tensor, " width"]]:
    """hook -> [width] number of nonzero weights touching each channel, for every node site.

    Counts the weights of :data:`WEIGHTS` only (edges inside sublayers), so the degrees of all
    sites sum to twice the number of those nonzeros; a site no weight touches (``resid``) is 0.
    """
    degree = {
        site.hook: torch.zeros(site.width, dtype=torch.long) for site in node_sites(model.cfg)
    }
    for src, dst, matrix in edge_matrices(model):
        nonzero = (matrix != 0).cpu()
        degree[src] += nonzero.sum(1)
        degree[dst] += nonzero.sum(0)
    return degree


def io_weights(model: nn.Module, site: NodeSite, index: int) -> list[tuple[str, Tensor]]:
    """(parameter name, vector) joining channel ``index`` of ``site`` to the vocabulary.

    A read channel (``io == "embed"``) takes in its column of ``embed.W_E`` and, with added
    positions, of ``pos_embed.W_pos``; a concatenated position channel (index >= d_model) its
    column of ``pos_embed.W_pos``. A write channel (``"unembed"``) feeds its row of
    ``unembed.W_U``. Other sites: none.
    """
    cfg = model.cfg
    if site.io == "embed":
        if index >= cfg.d_model:
            return [("pos_embed.W_pos", model.W_pos[:, index - cfg.d_model])]
        out = [("embed.W_E", model.W_E[:, index])]
        if cfg.positional_embedding_type == "standard":
            out.append(("pos_embed.W_pos", model.W_pos[:, index]))
        return out
    if site.io == "unembed":
        return [("unembed.W_U", model.W_U[index])]
    return []


# ------------------------------------------------------------------ the model's head
@shape_checked
def logits_from_resid(
    model: nn.Module,
    resid: Float[Tensor, "*lead d_model"],
    tokens: Int[Tensor, "*lead"] | None,
    vocab: Int[Tensor, "*lead k"] | None = None,
) -> Tensor:
    """Logits from the final residual stream: final norm, unembedding, then the bigram table's
    row for the token at each position (``tokens``, needed when the model has one).

    ``vocab=None`` gives every vocabulary entry ([*lead, d_vocab]; the forward pass).
    With ``vocab`` only those entries are computed ([*lead, k]): task scoring reads two answers
    at one position, and skipping the full unembedding is most of a small model's cost. That
    path indexes the bigram table directly, so ``bigram.hook_logits`` does not fire on it.
    """
    x = model.ln_final(resid)
    if vocab is None:
        logits = model.unembed(x)
        if model.cfg.bigram_table != "off":
            logits = logits + model.bigram(tokens)
        return logits
    logits = torch.einsum("...d,d...k->...k", x, model.W_U[:, vocab]) + model.b_U[vocab]
    if model.cfg.bigram_table != "off":
        logits = logits + model.bigram.W_bigram[tokens[..., None], vocab]
    return logits
