"""Small building blocks: RMSNorm, AbsTopK, embeddings, unembedding and the bigram table.

Each class holds one concept and declares its HookPoints where they fire, with their shapes.
Weights are stored in TransformerLens layout (``W_E`` [d_vocab, d_model], ``W_U`` [d_model,
d_vocab]) so TL accessors read the real, sparse tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from sparse_lens.config import SparseConfig
from sparse_lens.model.sparse_exec import SparseMatmul
from sparse_lens.model.typecheck import shape_checked


@shape_checked
def abstopk(x: Float[Tensor, "... width"], k: int) -> Float[Tensor, "... width"]:
    """Keep the k entries of largest magnitude along the last dim, zero the rest.

    Ties at the threshold are broken by torch.topk (an arbitrary but deterministic choice), so
    exactly k entries survive per row; the gradient flows to those k entries only.
    """
    if k >= x.shape[-1]:
        return x
    return _AbsTopK.apply(x, k)


_SAME_WIDTH_INT = {
    torch.float32: torch.int32,
    torch.float64: torch.int64,
    torch.float16: torch.int16,
    torch.bfloat16: torch.int16,
}


def _magnitude_keys(x: Tensor) -> Tensor:
    """|x| as integers of the same width that order exactly as the magnitudes do.

    The bits of a non-negative float, read as a signed integer, are monotone in its value (NaN
    above inf, as torch.topk ranks it), so torch.topk on them makes the very same comparisons
    and picks the same indices, ties included, ~15% faster on CPU: it skips the NaN checks.
    """
    magnitude = x.abs()
    int_dtype = _SAME_WIDTH_INT.get(magnitude.dtype)
    return magnitude if int_dtype is None else magnitude.view(int_dtype)


class _AbsTopK(torch.autograd.Function):
    """One autograd node for the whole site, saving only the kept indices: the same values and
    gradients as ``zeros.scatter(keep, x.gather(keep))`` under autograd (bit for bit, signed
    zeros included), with half the passes. A boolean mask with ``torch.where`` would be ~5x
    slower on CPU (bool tensor kernels are slow there)."""

    @staticmethod
    def forward(ctx, x: Tensor, k: int) -> Tensor:
        keep = torch.topk(_magnitude_keys(x.detach()), k, dim=-1, sorted=False).indices
        ctx.save_for_backward(keep)
        return torch.zeros_like(x).scatter_(-1, keep, x.gather(-1, keep))

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (keep,) = ctx.saved_tensors
        return torch.zeros_like(grad).scatter_(-1, keep, grad.gather(-1, keep)), None


class AbsTopK(nn.Module):
    """Activation sparsity: k = int(frac * width) entries survive per token (paper frac = 1/4)."""

    def __init__(self, frac: float):
        super().__init__()
        self.frac = frac

    def forward(self, x: Tensor) -> Tensor:
        return abstopk(x, int(self.frac * x.shape[-1]))

    def extra_repr(self) -> str:
        return f"frac={self.frac}"


def maybe_abstopk(cfg: SparseConfig, location: str) -> nn.Module:
    """An AbsTopK module if the config sparsifies ``location``, else an identity."""
    frac = cfg.abstopk_at(location)
    return nn.Identity() if frac is None else AbsTopK(frac)


class RMSNorm(nn.Module):
    """RMSNorm with a weight and no bias (a zero weight keeps its meaning: the channel is off).

    ``hook_normalized`` sees x / scale before the weight, as in TransformerLens, so that
    ActivationCache.apply_ln_to_stack and the logit lens behave as on any TL model.
    """

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(width))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, width]

    @shape_checked
    def forward(self, x: Float[Tensor, "batch pos width"]) -> Float[Tensor, "batch pos width"]:
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.hook_normalized(x / scale) * self.w


class Embed(nn.Module):
    def __init__(self, cfg: SparseConfig):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model))

    @shape_checked
    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return F.embedding(tokens, self.W_E)


class PosEmbed(nn.Module):
    """Learned positions: [n_ctx, d_model] when added, [n_ctx, d_pos_emb] when concatenated."""

    def __init__(self, cfg: SparseConfig):
        super().__init__()
        self.W_pos = nn.Parameter(torch.empty(cfg.n_ctx, cfg.d_pos))

    def forward(self, batch: int, n_pos: int) -> Float[Tensor, "batch pos d_pos"]:
        return self.W_pos[:n_pos].unsqueeze(0).expand(batch, -1, -1).clone()  # hooks may edit it


class Unembed(nn.Module):
    """Logits = x @ W_U + b_U. With tied embeddings W_U is a view of ``embed.W_E`` (transposed).

    ``b_U`` is OpenAI's ``final_logits_bias``: a buffer, not trained; zeros unless imported.
    """

    def __init__(self, cfg: SparseConfig, embed: Embed):
        super().__init__()
        self._tied_embed = [embed] if cfg.tied_unembed else None  # a list hides it from nn.Module
        if not cfg.tied_unembed:
            self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab))
        self.register_buffer("b_U", torch.zeros(cfg.d_vocab), persistent=cfg.final_logits_bias)
        self.cfg = cfg
        self.matmul = SparseMatmul()

    def __getattr__(self, name: str):
        if name == "W_U" and self.__dict__.get("_tied_embed"):
            return self.__dict__["_tied_embed"][0].W_E.T
        return super().__getattr__(name)

    @shape_checked
    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        W_U = self.W_U
        source = W_U if self._tied_embed is None else self._tied_embed[0].W_E
        out = self.matmul.sparse_or_none(x, W_U, self.b_U, (source,), self.cfg.sparse_exec)
        return x @ W_U + self.b_U if out is None else out


class BigramTable(nn.Module):
    """logits[t] += W_bigram[token[t]]: a dense [d_vocab, d_vocab] table (learnable or fixed).

    It carries bigram statistics so the sparse weights need not; it is never sparsified.
    """

    def __init__(self, cfg: SparseConfig):
        super().__init__()
        table = torch.zeros(cfg.d_vocab, cfg.d_vocab)
        if cfg.bigram_table == "learnable":
            self.W_bigram = nn.Parameter(table)
        else:
            self.register_buffer("W_bigram", table)
        self.hook_logits = HookPoint()  # [batch, pos, d_vocab]

    @shape_checked
    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_vocab"]:
        return self.hook_logits(F.embedding(tokens, self.W_bigram))
