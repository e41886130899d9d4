"""A pre-norm transformer block, with the optional position concat and residual activation.

Hook names follow TransformerLens (hook_resid_pre, hook_attn_out, hook_resid_mid, hook_mlp_out,
hook_resid_post). ``hook_attn_out`` / ``hook_mlp_out`` are the sublayers' residual WRITES after
AbsTopK: the paper's write nodes. With a ReLU residual activation or residual AbsTopK
(resid_post_attn / resid_post_mlp), ``hook_resid_mid`` / ``hook_resid_post`` see the stream after
them, and then the residual is no longer the plain sum of the writes.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from sparse_lens.config import SparseConfig
from sparse_lens.model.attention import Attention
from sparse_lens.model.components import RMSNorm, maybe_abstopk
from sparse_lens.model.mlp import MLP
from sparse_lens.model.typecheck import shape_checked


class TransformerBlock(nn.Module):
    hook_out_is_single_residual_stream = True  # the logit lens relies on this (TL convention)

    def __init__(self, cfg: SparseConfig, layer: int):
        super().__init__()
        self.cfg = cfg
        self.layer = layer
        self.ln1 = RMSNorm(cfg.d_model, cfg.eps)
        self.ln2 = RMSNorm(cfg.d_model, cfg.eps)
        if cfg.positional_embedding_type == "concat":
            self.ln_p1 = RMSNorm(cfg.d_pos_emb, cfg.eps)
            self.ln_p2 = RMSNorm(cfg.d_pos_emb, cfg.eps)
        self.attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.topk_resid_mid = maybe_abstopk(cfg, "resid_post_attn")
        self.topk_resid_post = maybe_abstopk(cfg, "resid_post_mlp")

        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]  node: attention write
        self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]   node: MLP write
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def _residual(self, resid: Tensor, topk: nn.Module) -> Tensor:
        if self.cfg.residual_activation == "relu":
            resid = torch.relu(resid)
        return topk(resid)

    @shape_checked
    def forward(
        self,
        resid: Float[Tensor, "batch pos d_model"],
        pos: Float[Tensor, "batch pos d_pos"] | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        return self.mlp_sublayer(self.attn_sublayer(resid, pos), pos)

    # The two halves are separate so that a hybrid forward (sparse_lens.bridges) can enter or
    # leave the block at its MLP input, a sublayer site; forward is exactly one after the other.
    def attn_sublayer(
        self,
        resid: Float[Tensor, "batch pos d_model"],
        pos: Float[Tensor, "batch pos d_pos"] | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """hook_resid_pre to hook_resid_mid: the residual stream the MLP reads."""
        resid = self.hook_resid_pre(resid)
        attn_in = self.ln1(resid)
        if pos is not None:
            attn_in = torch.cat([attn_in, self.ln_p1(pos)], dim=-1)
        resid = resid + self.hook_attn_out(self.attn(attn_in))
        return self.hook_resid_mid(self._residual(resid, self.topk_resid_mid))

    def mlp_sublayer(
        self,
        resid: Float[Tensor, "batch pos d_model"],
        pos: Float[Tensor, "batch pos d_pos"] | None = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """The residual stream after hook_resid_mid to hook_resid_post."""
        mlp_in = self.ln2(resid)
        if pos is not None:
            mlp_in = torch.cat([mlp_in, self.ln_p2(pos)], dim=-1)
        resid = resid + self.hook_mlp_out(self.mlp(mlp_in))
        return self.hook_resid_post(self._residual(resid, self.topk_resid_post))
