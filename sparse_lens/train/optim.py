"""Optimizer, gradient normalisation and weight decay, as the paper's recipe has them.

- Adam with betas (0.9, 0.95) and eps 0.1 (sic: the paper's value; with gradients normalised to
  RMS 1 the large eps damps the update of rarely-active weights).
- Every step the gradient is rescaled to global RMS 1 (``sqrt(mean(g**2))`` over every gradient
  element of the model). The paper calls this essential. Under DistributedDataParallel this runs
  after ``backward()``, when the gradients are already all-reduced, so every rank computes the
  same scale.
- Decoupled weight decay 0.1 is applied by hand *after* the sparsifying projection (as the
  official trainer does), so it only shrinks kept weights and never revives zeros. It applies to
  the sparse matrices and the embeddings (the 2-D weights of the original layout) but not to
  biases, norm weights, attention-sink logits or the bigram table.

Optimizer state is saved as plain tensors keyed by parameter name in a safetensors file, never
pickled, so a checkpoint loads with no code execution and survives parameter reordering.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from sparse_lens.errors import SparseLensError
from sparse_lens.io.atomic import atomic_path

#: Target kinds that receive decoupled weight decay.
DECAYED_KINDS = ("matrix", "embedding")


def build_optimizer(
    model: nn.Module,
    lr: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 0.1,
) -> torch.optim.Adam:
    """Adam over every trainable parameter, in ``named_parameters`` order, one group.

    Weight decay is 0 here because it is applied by hand after the projection
    (:func:`apply_weight_decay_`). The LR is overwritten every step from the schedule. The fused
    kernel (one pass per tensor) is ~3x faster than foreach on CPU; older torch falls back.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    options = dict(lr=lr, betas=betas, eps=eps, weight_decay=0.0)
    try:
        return torch.optim.Adam(params, fused=True, **options)
    except (RuntimeError, TypeError, ValueError):  # fused unsupported for this device / dtype
        return torch.optim.Adam(params, foreach=True, **options)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


@torch.no_grad()
def normalize_grad_rms_(params: Iterable[Tensor]) -> float:
    """Divide all gradients by their global RMS (so it becomes 1); returns the RMS before.

    Gradients that are all zero are left as they are (RMS 0 has no direction to keep).
    """
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    count = sum(g.numel() for g in grads)
    norms = torch._foreach_norm(grads)
    total = torch.linalg.vector_norm(torch.stack([n.to(torch.float32) for n in norms]))
    rms = total / count**0.5
    value = float(rms)
    if value > 0.0 and torch.isfinite(rms):
        torch._foreach_mul_(grads, 1.0 / value)
    return value


@torch.no_grad()
def apply_weight_decay_(params: Sequence[Tensor], lr: float, weight_decay: float) -> None:
    """AdamW-style decoupled decay ``w *= 1 - lr * weight_decay`` (keeps zeros at zero)."""
    if weight_decay and lr and params:
        torch._foreach_mul_(list(params), 1.0 - lr * weight_decay)


def save_optimizer_state(
    optimizer: torch.optim.Optimizer, names: Sequence[str], path: str | Path
) -> None:
    """Write Adam moments and step counts to ``path`` (safetensors), keyed ``<param>::<key>``.

    ``names`` are the parameter names in the order the optimizer holds them.
    """
    state = optimizer.state_dict()["state"]
    tensors: dict[str, Tensor] = {}
    for index, entries in state.items():
        for key, value in entries.items():
            if not isinstance(value, Tensor):
                value = torch.tensor(value)
            tensors[f"{names[index]}::{key}"] = value.detach().cpu().contiguous()
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp))


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, names: Sequence[str], path: str | Path
) -> None:
    """Restore state written by :func:`save_optimizer_state` into a freshly built optimizer."""
    try:
        tensors = load_file(str(path))
    except Exception as error:  # safetensors raises several types for a bad file
        raise SparseLensError(f"cannot read optimizer state ({error})", path=path) from error
    position = {name: index for index, name in enumerate(names)}
    state: dict[int, dict[str, Tensor]] = {}
    for key, value in tensors.items():
        name, _, entry = key.rpartition("::")
        if name not in position:
            raise SparseLensError(
                f"optimizer state has parameter '{name}' the model lacks; the checkpoint "
                "belongs to a different architecture",
                path=path,
            )
        state.setdefault(position[name], {})[entry] = value
    full = optimizer.state_dict()
    full["state"] = state
    optimizer.load_state_dict(full)
