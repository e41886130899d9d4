"""The MLP sublayer: read -> W_in -> activation -> AbsTopK (neurons) -> W_out -> AbsTopK (write)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from sparse_lens.config import SparseConfig
from sparse_lens.model.attention import _bias
from sparse_lens.model.components import maybe_abstopk
from sparse_lens.model.sparse_exec import SparseMatmul
from sparse_lens.model.typecheck import shape_checked

ACTIVATIONS = {"gelu": F.gelu, "relu": F.relu}  # "gelu" is the exact erf GELU, as in OpenAI's code


class MLP(nn.Module):
    def __init__(self, cfg: SparseConfig):
        super().__init__()
        self.cfg = cfg
        self.W_in = nn.Parameter(torch.empty(cfg.d_in, cfg.d_mlp))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model))
        _bias(self, "b_in", (cfg.d_mlp,), cfg.use_bias)
        _bias(self, "b_out", (cfg.d_model,), cfg.use_bias)
        self.act = ACTIVATIONS[cfg.act_fn]
        self.topk_read = maybe_abstopk(cfg, "mlp_in")
        self.topk_neuron = maybe_abstopk(cfg, "mlp_neuron")
        self.topk_write = maybe_abstopk(cfg, "mlp_out")
        self.matmul_in, self.matmul_out = SparseMatmul(), SparseMatmul()

        self.hook_read = HookPoint()  # [batch, pos, d_in]   node: MLP residual read
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]   pre-activation
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]  node: neuron (after act + AbsTopK)

    @shape_checked
    def forward(self, x: Float[Tensor, "batch pos d_in"]) -> Float[Tensor, "batch pos d_model"]:
        x = self.hook_read(self.topk_read(x))
        sparse = self.cfg.sparse_exec
        pre = self.hook_pre(self.matmul_in(x, self.W_in, self.b_in, (self.W_in,), sparse))
        post = self.hook_post(self.topk_neuron(self.act(pre)))
        return self.topk_write(self.matmul_out(post, self.W_out, self.b_out, (self.W_out,), sparse))
