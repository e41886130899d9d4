"""Held-out pretraining loss of any model, on the very windows the trainer evaluates.

The trainer scores the first ``eval_batches * batch_size`` non-overlapping n_ctx windows of the
held-out split; :func:`heldout_loss` rebuilds them from the corpus and the model's own tokenizer,
so a shipped model's recorded ``final_heldout_loss`` can be checked after loading.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from sparse_lens.data import eval_batches, load_corpus, split_tokens
from sparse_lens.defaults import HELDOUT_FRACTION
from sparse_lens.errors import SparseLensError


@dataclass(frozen=True)
class HeldoutLoss:
    loss: float
    """Mean next-token cross-entropy (nats) over the windows."""
    n_windows: int
    manifest_hash: str
    """Identity of the corpus the held-out split came from (compare with training.json)."""


@torch.no_grad()
def heldout_loss(
    model: torch.nn.Module,
    corpus: list[str | Path] | None = None,
    *,
    batch_size: int = 16,
    n_batches: int = 4,
    heldout_fraction: float = HELDOUT_FRACTION,
    progress: bool = False,
) -> HeldoutLoss:
    """Loss of ``model`` on the first ``batch_size * n_batches`` held-out windows of ``corpus``
    (default: the standard library), tokenized with the model's tokenizer; defaults match the
    trainer's (``batch_size`` and ``eval_batches`` of the run's train config)."""
    if model.tokenizer is None:
        raise SparseLensError(
            "the model has no tokenizer; load one with set_tokenizer", field="tokenizer"
        )
    data = load_corpus(corpus or None, heldout_fraction=heldout_fraction)
    tokens = split_tokens(data, "heldout", model.tokenizer, progress=progress)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    for window in eval_batches(tokens, batch_size, model.cfg.n_ctx, n_batches * batch_size):
        total += float(model(window, return_type="loss")) * window.shape[0]
        count += window.shape[0]
    model.train(was_training)
    return HeldoutLoss(
        loss=total / max(count, 1), n_windows=count, manifest_hash=data.manifest_hash
    )
