"""Causal self-attention with AbsTopK on its read, q/k/v and write, and an optional sink.

The paper's node sites are HookPoints here: ``hook_read`` (the residual read after norm,
position concat and AbsTopK), ``hook_q``/``hook_k``/``hook_v`` (channels after AbsTopK, applied
over all heads jointly, not per head). The write (output after W_O and AbsTopK) is the block's
``hook_attn_out``.

The sink is a prepended key/value slot with zero key and zero value whose score is a learned
per-head logit; it lets a head attend "nowhere". ``hook_attn_scores`` and ``hook_pattern`` cover
the real keys only, so with a sink a pattern row sums to 1 minus the sink's share.

When nothing hooks the scores or the pattern, the forward uses fused scaled-dot-product attention
(same maths, far less memory on long contexts); a test checks both paths agree.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from sparse_lens.config import SparseConfig
from sparse_lens.model.components import AbsTopK, maybe_abstopk
from sparse_lens.model.sparse_exec import SparseMatmul
from sparse_lens.model.typecheck import shape_checked


def _bias(module: nn.Module, name: str, shape: tuple[int, ...], learned: bool) -> None:
    if learned:
        setattr(module, name, nn.Parameter(torch.zeros(shape)))
    else:  # keep TL accessors (b_Q, ...) working on bias-free models
        module.register_buffer(name, torch.zeros(shape), persistent=False)


def _hooked(hook: HookPoint) -> bool:
    return bool(hook.fwd_hooks) or bool(hook.bwd_hooks)


class Attention(nn.Module):
    def __init__(self, cfg: SparseConfig):
        super().__init__()
        self.cfg = cfg
        self.always_explicit = False  # see SparseTransformer.set_explicit_attention
        # Set by sparse_lens.io.interop.to_nnsight: whether an nnsight trace waits on the scores
        # or the pattern of this module (nnsight's interception is invisible to _hooked).
        self.patterns_wanted: Callable[[], bool] | None = None
        h, d_in, dh = cfg.n_heads, cfg.d_in, cfg.d_head
        self.W_Q = nn.Parameter(torch.empty(h, d_in, dh))
        self.W_K = nn.Parameter(torch.empty(h, d_in, dh))
        self.W_V = nn.Parameter(torch.empty(h, d_in, dh))
        self.W_O = nn.Parameter(torch.empty(h, dh, cfg.d_model))
        for name, shape in (("b_Q", (h, dh)), ("b_K", (h, dh)), ("b_V", (h, dh)), ("b_O", (cfg.d_model,))):
            _bias(self, name, shape, cfg.use_bias)
        if cfg.attn_sink:
            self.sink_logit = nn.Parameter(torch.zeros(h))

        self.topk_read = maybe_abstopk(cfg, "attn_in")
        self.topk_q = maybe_abstopk(cfg, "attn_q")
        self.topk_k = maybe_abstopk(cfg, "attn_k")
        self.topk_v = maybe_abstopk(cfg, "attn_v")
        self.topk_write = maybe_abstopk(cfg, "attn_out")
        self.matmul_qkv, self.matmul_o = SparseMatmul(), SparseMatmul()

        self.hook_read = HookPoint()  # [batch, pos, d_in]   node: attention residual read
        self.hook_q = HookPoint()  # [batch, pos, head, d_head]  node: q channel
        self.hook_k = HookPoint()  # [batch, pos, head, d_head]  node: k channel
        self.hook_v = HookPoint()  # [batch, pos, head, d_head]  node: v channel
        self.hook_attn_scores = HookPoint()  # [batch, head, query_pos, key_pos]
        self.hook_pattern = HookPoint()  # [batch, head, query_pos, key_pos]
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]
        self.set_use_attn_result(cfg.use_attn_result)

    def set_use_attn_result(self, use: bool) -> None:
        """Create or drop ``hook_result`` (the forward reads ``cfg.use_attn_result``)."""
        if use and not hasattr(self, "hook_result"):
            self.hook_result = HookPoint()  # [batch, pos, head, d_model]
        elif not use and hasattr(self, "hook_result"):
            del self.hook_result

    def _explicit(self) -> bool:
        return (
            self.always_explicit
            or _hooked(self.hook_attn_scores)
            or _hooked(self.hook_pattern)
            or (self.patterns_wanted is not None and self.patterns_wanted())
        )

    def _project_qkv(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        # One [d_in, 3 * h * d_head] matmul instead of 3 * h tiny per-head ones (the weights stay
        # stored in TL layout; this concatenation is a cheap copy of the small weight tensors).
        h, dh = self.cfg.n_heads, self.cfg.d_head

        def weight() -> Tensor:  # built only when used: the sparse path caches its own copy
            return torch.cat([self.W_Q, self.W_K, self.W_V]).permute(1, 0, 2).reshape(x.shape[-1], 3 * h * dh)

        b = torch.cat([self.b_Q, self.b_K, self.b_V]).reshape(-1)
        sources = (self.W_Q, self.W_K, self.W_V)
        qkv = self.matmul_qkv(x, weight, b, sources, self.cfg.sparse_exec)  # bias fused in
        shape = (*x.shape[:-1], h, dh)
        topk = (self.topk_q, self.topk_k, self.topk_v)
        if all(isinstance(t, AbsTopK) for t in topk) and len({t.frac for t in topk}) == 1:
            # AbsTopK acts on each of q, k, v separately: one call over [..., 3, h * d_head].
            qkv = self.topk_q(qkv.view(*x.shape[:-1], 3, h * dh)).flatten(-2)
            topk = (nn.Identity(),) * 3
        q, k, v = qkv.split(h * dh, dim=-1)
        return tuple(t(part).view(shape) for t, part in zip(topk, (q, k, v), strict=True))

    @shape_checked
    def forward(self, x: Float[Tensor, "batch pos d_in"]) -> Float[Tensor, "batch pos d_model"]:
        x = self.hook_read(self.topk_read(x))
        q, k, v = self._project_qkv(x)
        q, k, v = self.hook_q(q), self.hook_k(k), self.hook_v(v)

        if self._explicit():
            z = self._explicit_attention(q, k, v)
        else:
            z = self._fused_attention(q, k, v)
        z = self.hook_z(z)

        if self.cfg.use_attn_result:
            result = self.hook_result(torch.einsum("bphd,hdm->bphm", z, self.W_O))
            out = result.sum(-2) + self.b_O
        else:
            W_O = self.W_O.reshape(-1, self.cfg.d_model)
            out = self.matmul_o(z.flatten(-2), W_O, self.b_O, (self.W_O,), self.cfg.sparse_exec)
        return self.topk_write(out)

    def _explicit_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        n_pos = q.shape[1]
        scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(self.cfg.d_head)
        causal = torch.ones(n_pos, n_pos, dtype=torch.bool, device=q.device).tril()
        scores = self.hook_attn_scores(scores.masked_fill(~causal, float("-inf")))
        if self.cfg.attn_sink:
            sink = self.sink_logit.view(1, -1, 1, 1).expand(*scores.shape[:3], 1)
            pattern = F.softmax(torch.cat([sink, scores], dim=-1), dim=-1)[..., 1:]
        else:
            pattern = F.softmax(scores, dim=-1)
        pattern = self.hook_pattern(pattern)
        return torch.einsum("bhqk,bkhd->bqhd", pattern, v)

    def _fused_attention(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [batch, head, pos, d_head]
        scale = 1 / math.sqrt(self.cfg.d_head)
        if not self.cfg.attn_sink:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale).transpose(1, 2)
        # The sink as one more causal position, so the fast causal kernel still applies (an
        # explicit mask would force the slow math path: ~7x slower on CPU). A dummy query and the
        # sink key are prepended; an extra head dimension (1 on queries, 0 on real keys,
        # sink_logit / scale on the sink key) makes the sink's score exactly sink_logit; its value
        # is zero. Values get the extra (zero) dimension too: the fused kernel needs one head
        # size for q, k and v (else torch falls back to the math path, 3.4x slower fwd + bwd).
        # Row 0 (the dummy query) and the extra output dimension are dropped.
        batch, heads, n_pos, d_head = q.shape
        q = F.pad(q, (0, 1, 1, 0), value=1.0)  # the dummy query row (all ones) is dropped below
        sink_key = F.pad((self.sink_logit / scale).view(1, heads, 1, 1), (d_head, 0)).expand(batch, -1, -1, -1)
        k = torch.cat([sink_key, F.pad(k, (0, 1))], dim=2)
        v = F.pad(v, (0, 1, 1, 0))
        z = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale)
        return z[:, :, 1:, :d_head].transpose(1, 2)
