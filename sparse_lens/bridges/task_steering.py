"""Steering on a task's contrast pairs, against random-direction controls.

Each prompt's counterfactual is the node's value, token by token, on its partner prompt (the
two differ only in the contrasted span, so they have the same length), or one fixed value. The
score is the dense model's mean logit(correct) - logit(wrong) at the scored position: steering
a node that carries the contrast toward the partner's value drives it down, through zero at
the point where the dense model prefers the partner's answer. A control steers with the same
deltas along another channel's decoder row rescaled to the node's row norm, so only the
direction differs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from sparse_lens.bridges.module import Bridges
from sparse_lens.bridges.steer import node_values, steer, steering_node
from sparse_lens.errors import SparseLensError


def partner_values(values: torch.Tensor, batch) -> torch.Tensor:
    """Node values of each prompt's pair partner, at the same positions (a TaskBatch of pairs
    interleaved a0, b0, a1, b1, ...)."""
    last = batch.last_pos
    if len(last) % 2 or not torch.equal(last[0::2], last[1::2]):
        raise SparseLensError(
            "the task's two prompts of a pair have different token lengths, so a token-by-token "
            "counterfactual is undefined; pass a fixed value instead",
            field="value",
        )
    swapped = torch.arange(len(last)) ^ 1  # 0<->1, 2<->3, ...
    return values[swapped]


@torch.no_grad()
def steer_task(
    dense,
    sparse,
    bridges: Bridges,
    node: str,
    batch,
    strengths: Sequence[float],
    value: float | None = None,
    n_controls: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """Curves of the node and of ``n_controls`` random directions on ``batch`` (a TaskBatch)."""
    target = steering_node(sparse, node)
    tokens = batch.tokens
    if value is None:
        counterfactual = partner_values(node_values(dense, sparse, bridges, target, tokens), batch)
    else:
        counterfactual = float(value)
    scored = (batch.last_pos, batch.correct_ids, batch.wrong_ids)
    curve = steer(dense, sparse, bridges, node, tokens, scored, counterfactual, strengths)
    decoder = bridges.decoders[target.site.index].weight
    row_norm = decoder[:, target.channel].norm()
    others = [c for c in range(decoder.shape[1]) if c != target.channel]
    generator = torch.Generator().manual_seed(seed)
    picks = [others[int(i)] for i in torch.randperm(len(others), generator=generator)[:n_controls]]
    controls = []
    for channel in picks:
        row = decoder[:, channel]
        direction = row * (row_norm / row.norm().clamp_min(1e-12))
        controls.append(
            steer(
                dense,
                sparse,
                bridges,
                node,
                tokens,
                scored,
                counterfactual,
                strengths,
                direction=direction,
            )
        )
    base = curve.logit_diff[0] if strengths and strengths[0] == 0 else None
    return {
        "node": node,
        "task": batch.task,
        "n_prompts": len(batch),
        "strengths": curve.strengths,
        "logit_diff": curve.logit_diff,
        "control_channels": picks,
        "control_logit_diff": [c.logit_diff for c in controls],
        "control_mean": [
            sum(c.logit_diff[k] for c in controls) / max(len(controls), 1)
            for k in range(len(strengths))
        ],
        "baseline": base,
        "counterfactual": "partner prompt" if value is None else float(value),
        "rms_dense": curve.rms_dense,
        "rms_sparse": curve.rms_sparse,
    }
