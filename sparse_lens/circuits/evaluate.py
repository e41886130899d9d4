"""Task loss of a (hooked) model, computed only where it is scored, and logit calibration.

Pruning runs hundreds of forward/backward passes, and a task is scored at ONE position per
prompt on TWO vocabulary entries. :func:`answer_logits` therefore runs the blocks
(``stop_at_layer=n_layers``), then the model's head
(:func:`sparse_lens.model.graph.logits_from_resid`) at each prompt's last position only, on
just the two answer entries. That skips a [batch, pos, d_vocab] unembedding that is most of a
small model's cost; tests check it equals the forward pass's logits there and
:func:`sparse_lens.tasks.task_loss` on the full logits.

The loss is the tasks package's: per prompt, binary cross-entropy over the two answers,
``softplus(logit_wrong - logit_correct)``, averaged over prompts (half the paper's pair sum).

Calibration (paper: a scalar logit scale and shift, 16 LBFGS steps) acts on the binary logit
difference: ``d = logit_A - logit_B`` becomes ``scale * d + shift``. Equivalently both answer
logits are multiplied by ``scale`` and ``shift`` is added to answer A's. It is fitted on the
same prompts it is reported on (the validation split) and reported next to the raw loss; it
shows how much of a circuit's loss is miscalibration rather than missing signal.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor, nn

from sparse_lens.model.graph import logits_from_resid
from sparse_lens.tasks.batch import TaskBatch

Hooks = Sequence[tuple[str, Callable]]


def answer_logits(
    model: nn.Module, batch: TaskBatch, start: tuple[int, Tensor] | None = None
) -> Float[Tensor, "batch 2"]:
    """Logits of answer A and answer B at each prompt's last position (differentiable).

    ``start`` = (layer, the residual stream entering that block) runs the blocks from there
    (the same numbers as the whole forward, when the stream came from it)."""
    device = model.W_E.device
    tokens = batch.tokens.to(device)
    last_pos = batch.last_pos.to(device)
    ids = batch.answer_ids.to(device)
    n_layers = model.cfg.n_layers
    if start is None:
        resid = model(tokens, stop_at_layer=n_layers)
    else:
        resid = model(start[1], start_at_layer=start[0], stop_at_layer=n_layers, tokens=tokens)
    rows = torch.arange(len(batch), device=device)
    # one position per prompt, kept as a pos dim of 1 so ln_final's hooks see [batch, pos, ...]
    last = (resid[rows, last_pos][:, None], tokens[rows, last_pos][:, None], ids[:, None])
    return logits_from_resid(model, *last)[:, 0]


def binary_loss(
    pair_logits: Float[Tensor, "batch 2"], label: Int[Tensor, " batch"]
) -> Float[Tensor, " batch"]:
    """softplus(logit_wrong - logit_correct) per prompt (the tasks package's task loss)."""
    label = label.to(pair_logits.device)
    correct = pair_logits.gather(1, label[:, None])[:, 0]
    wrong = pair_logits.gather(1, (1 - label)[:, None])[:, 0]
    return F.softplus(wrong - correct)


def length_chunks(batch: TaskBatch, chunk_size: int) -> list[tuple[Tensor, TaskBatch]]:
    """``batch`` cut into chunks of similar-length prompts, each trimmed to its own longest.

    Prompts are right-padded to the batch's longest, so a random batch spends much of its
    compute on padding; sorting by length first wastes little. Returns (row indices, chunk)
    pairs so results can be put back in the original order.
    """
    order = torch.sort(batch.last_pos, stable=True).indices
    return [(rows, take_rows(batch, rows)) for rows in order.split(chunk_size)]


def take_rows(batch: TaskBatch, rows: Tensor) -> TaskBatch:
    """The prompts ``rows`` of ``batch`` (any order), trimmed to their longest prompt."""
    last_pos = batch.last_pos[rows]
    width = int(last_pos.max()) + 1
    return replace(
        batch,
        tokens=batch.tokens[rows, :width],
        last_pos=last_pos,
        answer_ids=batch.answer_ids[rows],
        label=batch.label[rows],
        pair_index=batch.pair_index[rows],
        prompts=[batch.prompts[i] for i in rows.tolist()],
    )


def chunked_answer_logits(
    model: nn.Module, batch: TaskBatch, chunk_size: int = 32
) -> Float[Tensor, "batch 2"]:
    """:func:`answer_logits` over length-sorted chunks, in the batch's order (differentiable)."""
    chunks = length_chunks(batch, chunk_size)
    logits = [answer_logits(model, chunk) for _, chunk in chunks]
    rows = torch.cat([r for r, _ in chunks]).to(logits[0].device)
    return torch.cat(logits)[torch.argsort(rows)]


@torch.no_grad()
def hooked_answer_logits(
    model: nn.Module, batch: TaskBatch, hooks: Hooks = (), batch_size: int = 64
) -> Float[Tensor, "batch 2"]:
    """:func:`answer_logits` under ``hooks``, over length-sorted chunks of ``batch_size``."""
    with model.hooks(fwd_hooks=list(hooks)):
        return chunked_answer_logits(model, batch, batch_size).float().cpu()


def hooked_loss(
    model: nn.Module, batch: TaskBatch, hooks: Hooks = (), batch_size: int = 64
) -> float:
    """Mean task loss of ``model`` under ``hooks`` on ``batch``."""
    return float(
        binary_loss(hooked_answer_logits(model, batch, hooks, batch_size), batch.label).mean()
    )


def calibrate(
    pair_logits: Float[Tensor, "batch 2"], label: Int[Tensor, " batch"], steps: int = 16
) -> tuple[float, float, float]:
    """Fit ``scale * (logit_A - logit_B) + shift`` by LBFGS; return (scale, shift, loss).

    The returned loss is the mean binary CE after calibration; it is never above the loss at
    (scale=1, shift=0), which LBFGS starts from (if the fit diverges the identity is kept).
    """
    diff = (pair_logits[:, 0] - pair_logits[:, 1]).detach().double()
    sign = 1.0 - 2.0 * label.to(diff.device).double()  # +1 where A is right, -1 where B is

    def loss_of(scale: Tensor, shift: Tensor) -> Tensor:
        return F.softplus(-(scale * diff + shift) * sign).mean()

    scale = torch.ones((), dtype=torch.float64, requires_grad=True)
    shift = torch.zeros((), dtype=torch.float64, requires_grad=True)
    with torch.no_grad():
        identity = float(loss_of(scale, shift))
    if steps > 0:
        optimizer = torch.optim.LBFGS(
            [scale, shift], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe"
        )

        def closure() -> Tensor:
            optimizer.zero_grad()
            loss = loss_of(scale, shift)
            loss.backward()
            return loss

        optimizer.step(closure)
    with torch.no_grad():
        fitted = float(loss_of(scale, shift))
    if not fitted <= identity:  # also catches NaN
        return 1.0, 0.0, identity
    return scale.detach().item(), shift.detach().item(), fitted
