"""Contrast batches, the task loss, and evaluation.

Batch layout. Prompts have different lengths. ``TaskBatch.tokens`` holds them RIGHT-padded
(pad = ``<|endoftext|>``) with each prompt's real last index in ``last_pos``; logits are read at
``last_pos``. For a causal model this is exact: the logits at ``last_pos`` see only the real
tokens before them, and every prompt keeps its true positions (left padding would shift them
for models with position embeddings). Padded positions compute garbage that nothing reads;
code that averages activations over positions should weight them by ``batch.mask``. Prompts
longer than ``n_ctx`` are LEFT-truncated so their last token (the scored position) stays. Pairs
are interleaved: rows 2i and 2i+1 are the A and B prompts of pair i.

The loss. For each prompt, a binary cross-entropy over its two answers at the last position:
``-log_softmax([logit_correct, logit_wrong])[0] = softplus(logit_wrong - logit_correct)``;
accuracy is ``logit_correct > logit_wrong``. :func:`task_loss` returns the MEAN over prompts.
The paper's two-sided loss SUMS this cross-entropy over the two prompts of a pair, so our mean
is half the paper's per-pair value (the paper's viewer halves stored losses for the same
reason); a target loss quoted per pair is twice the number this function returns.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor

from sparse_lens.defaults import N_PAIRS
from sparse_lens.errors import SparseLensError
from sparse_lens.tasks.files import TasksDirs
from sparse_lens.tasks.generate import PairSet, Prompt

if TYPE_CHECKING:
    from sparse_lens.tasks.spec import Task

__all__ = ["TaskBatch", "evaluate_batch", "evaluate_task", "make_batch", "task_loss"]


@dataclass
class TaskBatch:
    """Tokenised prompts of one task, ready for a forward pass and :func:`task_loss`.

    Attributes:
        tokens: [batch, pos] right-padded token ids.
        last_pos: [batch] index of each prompt's last real token (where logits are scored).
        answer_ids: [batch, 2] the scored token of answer A and of answer B for each prompt.
        label: [batch] which answer is correct (0: A, 1: B).
        pair_index: [batch] the pair each prompt belongs to (natural prompts: their own index).
        prompts: the prompt texts (before truncation).
        task: the task name.
    """

    tokens: Int[Tensor, "batch pos"]
    last_pos: Int[Tensor, " batch"]
    answer_ids: Int[Tensor, "batch 2"]
    label: Int[Tensor, " batch"]
    pair_index: Int[Tensor, " batch"]
    prompts: list[str]
    task: str = ""

    def __len__(self) -> int:
        return int(self.tokens.shape[0])

    @property
    def correct_ids(self) -> Int[Tensor, " batch"]:
        return self.answer_ids.gather(1, self.label[:, None])[:, 0]

    @property
    def wrong_ids(self) -> Int[Tensor, " batch"]:
        return self.answer_ids.gather(1, (1 - self.label)[:, None])[:, 0]

    @property
    def mask(self) -> Bool[Tensor, "batch pos"]:
        """True on real tokens, False on padding."""
        pos = torch.arange(self.tokens.shape[1], device=self.tokens.device)
        return pos[None, :] <= self.last_pos[:, None]

    def to(self, device: torch.device | str) -> TaskBatch:
        return replace(
            self,
            tokens=self.tokens.to(device),
            last_pos=self.last_pos.to(device),
            answer_ids=self.answer_ids.to(device),
            label=self.label.to(device),
            pair_index=self.pair_index.to(device),
        )

    def __getitem__(self, index: slice) -> TaskBatch:
        """Rows ``index`` (a slice), trimmed to their own longest prompt."""
        if not isinstance(index, slice):
            raise TypeError("TaskBatch supports slicing only")
        last_pos = self.last_pos[index]
        width = int(last_pos.max()) + 1 if len(last_pos) else 0
        return replace(
            self,
            tokens=self.tokens[index, :width],
            last_pos=last_pos,
            answer_ids=self.answer_ids[index],
            label=self.label[index],
            pair_index=self.pair_index[index],
            prompts=self.prompts[index],
        )


def make_batch(
    prompts: PairSet | Sequence[Prompt],
    *,
    n_ctx: int | None = None,
    pad_id: int | None = None,
    task: str | None = None,
) -> TaskBatch:
    """Stack prompts into a right-padded :class:`TaskBatch` (see the module docstring).

    A :class:`PairSet` gives its prompts interleaved (a0, b0, a1, b1, ...) with its pad id; a
    plain sequence of prompts counts each prompt as its own pair. ``n_ctx`` left-truncates.
    """
    if isinstance(prompts, PairSet):
        items = prompts.prompts()
        pair_index = [i // 2 for i in range(len(items))]
        pad = prompts.pad_id if pad_id is None else pad_id
        name = prompts.task if task is None else task
    else:
        items = list(prompts)
        pair_index = list(range(len(items)))
        pad = 0 if pad_id is None else pad_id
        name = task or ""
    if not items:
        raise SparseLensError("no prompts to batch")
    if n_ctx is not None and n_ctx < 1:
        raise SparseLensError(f"n_ctx must be >= 1, got {n_ctx}", field="n_ctx")
    seqs = [p.tokens[-n_ctx:] if n_ctx is not None else p.tokens for p in items]
    width = max(len(s) for s in seqs)
    tokens = torch.full((len(seqs), width), pad, dtype=torch.long)
    for row, seq in enumerate(seqs):
        tokens[row, : len(seq)] = torch.tensor(seq, dtype=torch.long)
    return TaskBatch(
        tokens=tokens,
        last_pos=torch.tensor([len(s) - 1 for s in seqs], dtype=torch.long),
        answer_ids=torch.tensor([p.answer_ids for p in items], dtype=torch.long),
        label=torch.tensor([p.label for p in items], dtype=torch.long),
        pair_index=torch.tensor(pair_index, dtype=torch.long),
        prompts=[p.text for p in items],
        task=name,
    )


def task_loss(
    logits: Float[Tensor, "batch vocab"] | Float[Tensor, "batch pos vocab"],
    batch: TaskBatch,
    reduction: str = "mean",
) -> (
    tuple[Float[Tensor, ""], Float[Tensor, ""]]
    | tuple[Float[Tensor, " batch"], Float[Tensor, " batch"]]
):
    """Binary cross-entropy over the two answers at the last position, and accuracy.

    ``logits`` are either already at the last position ([batch, vocab]) or the full output
    ([batch, pos, vocab], read at ``batch.last_pos``). ``reduction="mean"`` gives two scalars
    (mean over prompts: half the paper's per-pair sum, see the module docstring); ``"none"``
    gives per-prompt values. Differentiable in ``logits``.
    """
    if logits.ndim == 3:
        rows = torch.arange(logits.shape[0], device=logits.device)
        logits = logits[rows, batch.last_pos.to(logits.device)]
    if logits.shape[0] != len(batch):
        raise ValueError(f"logits have {logits.shape[0]} rows, the batch has {len(batch)} prompts")
    ids = batch.answer_ids.to(logits.device)
    label = batch.label.to(logits.device)
    pair = logits.gather(1, ids).float()  # [batch, 2]: logit of A, logit of B
    correct = pair.gather(1, label[:, None])[:, 0]
    wrong = pair.gather(1, (1 - label)[:, None])[:, 0]
    loss = F.softplus(wrong - correct)
    accuracy = (correct > wrong).float()
    if reduction == "none":
        return loss, accuracy
    if reduction != "mean":
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    return loss.mean(), accuracy.mean()


@torch.no_grad()
def evaluate_batch(model, batch: TaskBatch, *, batch_size: int = 64) -> dict:
    """Loss and accuracy of ``model`` on ``batch`` (forward in chunks of ``batch_size``)."""
    device = _device(model)
    d_vocab = getattr(getattr(model, "cfg", None), "d_vocab", None)
    if d_vocab is not None:
        top = int(torch.maximum(batch.tokens.max(), batch.answer_ids.max()))
        if top >= d_vocab:
            raise SparseLensError(
                f"task {batch.task!r} uses token id {top} but the model's vocabulary has "
                f"{d_vocab} tokens: tokenize with the model's own tokenizer"
            )
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    try:
        losses, accs, p_correct = [], [], []
        for start in range(0, len(batch), batch_size):
            chunk = batch[start : start + batch_size].to(device)
            logits = model(chunk.tokens, return_type="logits")
            loss, acc = task_loss(logits, chunk, reduction="none")
            losses.append(loss.cpu())
            accs.append(acc.cpu())
            p_correct.append(torch.exp(-loss).cpu())
    finally:
        if was_training:
            model.train()
    loss = torch.cat(losses)
    acc = torch.cat(accs)
    return {
        "task": batch.task,
        "n_prompts": len(batch),
        "loss": float(loss.mean()),
        "accuracy": float(acc.mean()),
        "p_correct": float(torch.cat(p_correct).mean()),
        "loss_per_prompt": loss.tolist(),
    }


def evaluate_task(
    model,
    task: Task | str,
    n_pairs: int = N_PAIRS,
    seed: int = 0,
    split: str = "test",
    *,
    tasks_dir: TasksDirs = None,
    batch_size: int = 64,
    tokenizer=None,
) -> dict:
    """Generate ``n_pairs`` pairs of ``task`` from ``split`` and evaluate ``model`` on them.

    Tokenises with ``tokenizer`` or ``model.tokenizer`` (else the default stdlib tokenizer) and
    truncates to ``model.cfg.n_ctx``. Returns a JSON-ready dict: task, split, seed, n_pairs,
    n_prompts, loss (mean binary CE per prompt), loss_per_pair (the paper's two-sided sum),
    accuracy, p_correct (mean two-way probability of the right answer), regenerated.
    """
    from sparse_lens.tasks import get_task
    from sparse_lens.tasks.generate import generate_pairs

    spec = get_task(task, tasks_dir=tasks_dir) if isinstance(task, str) else task
    tok = tokenizer if tokenizer is not None else getattr(model, "tokenizer", None)
    pairs = generate_pairs(spec, n_pairs, seed=seed, split=split, tokenizer=tok)
    n_ctx = getattr(getattr(model, "cfg", None), "n_ctx", None)
    result = evaluate_batch(model, make_batch(pairs, n_ctx=n_ctx), batch_size=batch_size)
    result.pop("loss_per_prompt")
    return {
        "task": spec.name,
        "split": split,
        "seed": seed,
        "n_pairs": len(pairs),
        "n_prompts": result["n_prompts"],
        "loss": result["loss"],
        "loss_per_pair": 2 * result["loss"],
        "accuracy": result["accuracy"],
        "p_correct": result["p_correct"],
        "regenerated": pairs.stats.regenerated,
    }


def _device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (AttributeError, StopIteration):
        return torch.device("cpu")
