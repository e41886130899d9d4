"""Mean next-token cross-entropy straight from the final residual, in chunks of tokens.

The plain path materialises logits [batch, pos, d_vocab] (plus a bigram gather of the same
size, their sum, log-softmax and its gradient: five tensors of batch * pos * d_vocab floats,
~34 MB each at the cpu preset) and streams them through memory several times. This computes
the same loss a chunk of rows at a time, so each chunk's logits stay in cache, and, because the
loss is a scalar mean, computes the gradients in the same pass: d loss / d logits is
``(softmax - onehot(target)) / n``, turned at once into the gradients of the final residual,
``W_U``, ``b_U`` and the bigram table; backward only scales them by the incoming gradient.

It is used by ``SparseTransformer.forward`` only for ``return_type="loss"`` with gradients
enabled and nothing observing the logits (see ``SparseTransformer._fused_loss_applies``); a
test checks loss and gradients against the plain path.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor
from torch.autograd.function import once_differentiable

#: Rows per chunk: ~2 MB of float32 logits at d_vocab 2048, which stays in L2.
CHUNK_ELEMENTS = 1 << 19


class _FusedNextTokenLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, W_U, b_U, W_bigram, previous, target, chunk):
        needs = ctx.needs_input_grad
        n = x.shape[0]
        grad_x = torch.empty_like(x) if needs[0] else None
        grad_W = torch.zeros_like(W_U, dtype=torch.float32) if needs[1] else None
        grad_b = torch.zeros_like(b_U, dtype=torch.float32) if needs[2] else None
        grad_bigram = (
            torch.zeros_like(W_bigram, dtype=torch.float32) if W_bigram is not None and needs[3] else None
        )
        total = torch.zeros((), dtype=torch.float64, device=x.device)
        for start in range(0, n, chunk):
            rows = slice(start, start + chunk)
            xc = x[rows]
            if W_bigram is None:
                logits = (xc @ W_U).float()
            else:
                logits = W_bigram.index_select(0, previous[rows]).float()
                logits.addmm_(xc.float(), W_U.float())
            logits += b_U
            lse = torch.logsumexp(logits, dim=-1, keepdim=True)
            tc = target[rows, None]
            total += (lse - logits.gather(1, tc)).sum(dtype=torch.float64)
            if not any(needs[:4]):
                continue
            grad = logits.sub_(lse).exp_()  # softmax, in place
            grad.scatter_add_(1, tc, grad.new_full(tc.shape, -1.0))
            grad.mul_(1.0 / n)
            if grad_x is not None:
                grad_x[rows] = grad @ W_U.T.to(grad.dtype)
            if grad_W is not None:
                grad_W.addmm_(xc.T.to(grad.dtype), grad)
            if grad_b is not None:
                grad_b += grad.sum(0)
            if grad_bigram is not None:
                grad_bigram.index_add_(0, previous[rows], grad)
        ctx.grads = (grad_x, grad_W, grad_b, grad_bigram)
        ctx.dtypes = (x.dtype, W_U.dtype, b_U.dtype, None if W_bigram is None else W_bigram.dtype)
        return (total / n).to(torch.float32)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss):
        out = [  # in place: these buffers are ours, and a fresh [d_vocab, d_vocab] costs faults
            None if g is None else g.mul_(grad_loss).to(dtype)
            for g, dtype in zip(ctx.grads, ctx.dtypes, strict=True)
        ]
        ctx.grads = None
        return (*out, None, None, None)


def fused_next_token_loss(
    x: Float[Tensor, "batch pos d_model"],
    W_U: Float[Tensor, "d_model d_vocab"],
    b_U: Float[Tensor, " d_vocab"],
    W_bigram: Float[Tensor, "d_vocab d_vocab"] | None,
    tokens: Int[Tensor, "batch pos"],
) -> Float[Tensor, ""]:
    """mean over [batch, pos - 1] of -log softmax(x @ W_U + b_U + W_bigram[token])[next token].

    ``x`` is the final residual after ``ln_final``; equals ``SparseTransformer.loss_fn`` of
    the logits to float rounding.
    """
    d_model, d_vocab = W_U.shape
    x = x[:, :-1].reshape(-1, d_model)
    previous = tokens[:, :-1].reshape(-1)
    target = tokens[:, 1:].reshape(-1).long()
    chunk = max(1, CHUNK_ELEMENTS // d_vocab)
    return _FusedNextTokenLoss.apply(x, W_U, b_U, W_bigram, previous, target, chunk)
