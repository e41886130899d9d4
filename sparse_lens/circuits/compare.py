"""Sparse vs dense: the same pruning on both models, task by task, compared by edge count.

Node sites are the same on a dense model (AbsTopK off, dense weights), so pruning runs on it
unchanged and circuit sizes compare directly. The paper's headline (about 16x fewer edges for
the sparse model at matched pretraining loss) is the geometric mean over tasks of
dense edges / sparse edges; tasks where either model misses the target are left out of the
mean (and shown), and an edge count of 0 counts as 1 so one empty circuit cannot zero it.

Circuits can be kept in ``circuits_dir`` (``<dir>/<weights hash[:16]>/<task>.json``) and are
reused when the file's weights hash and settings match, so a comparison over all tasks can be
resumed or re-printed without pruning again.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from sparse_lens.circuits.ablation import MeanCache, weights_hash
from sparse_lens.circuits.circuit import Circuit
from sparse_lens.circuits.pruning import PruneConfig, prune_task
from sparse_lens.errors import SparseLensError
from sparse_lens.io.checkpoint import CircuitStore
from sparse_lens.tasks.files import TasksDirs


@dataclass
class CompareRow:
    """One task's circuit sizes on the sparse and the dense model (None: target missed)."""

    task: str
    sparse_edges: int | None
    dense_edges: int | None
    sparse_nodes: int | None
    dense_nodes: int | None
    sparse_loss: float
    dense_loss: float

    @property
    def ratio(self) -> float | None:
        if self.sparse_edges is None or self.dense_edges is None:
            return None
        return max(self.dense_edges, 1) / max(self.sparse_edges, 1)


def geometric_mean_ratio(rows: Sequence[CompareRow]) -> float | None:
    """Geometric mean of dense / sparse edges over tasks where both met the target."""
    ratios = [r.ratio for r in rows if r.ratio is not None]
    if not ratios:
        return None
    return math.exp(sum(math.log(r) for r in ratios) / len(ratios))


def _circuit_for(
    model: nn.Module,
    task: str,
    config: PruneConfig,
    cache: MeanCache | None,
    circuits_dir: Path | None,
    model_id: str,
    progress: bool,
    tasks_dir: TasksDirs,
) -> tuple[Circuit | None, float]:
    store = None
    if circuits_dir is not None:
        store = CircuitStore(circuits_dir / weights_hash(model)[:16])
        path = store.circuit_file(task)
        if path.is_file():
            try:
                saved = Circuit.load(path, model)
            except SparseLensError:
                saved = None
            if saved is not None and saved.settings == config.to_dict():
                return saved, saved.achieved_loss
    result = prune_task(
        model,
        task,
        config=config,
        cache=cache,
        tasks_dir=tasks_dir,
        model_id=model_id,
        progress=progress,
    )
    if result.circuit is not None and store is not None:
        store.save_circuit(result.circuit)
    return result.circuit, result.best_loss


def compare_models(
    sparse: nn.Module,
    dense: nn.Module,
    tasks: Sequence[str],
    *,
    config: PruneConfig | None = None,
    sparse_cache: MeanCache | None = None,
    dense_cache: MeanCache | None = None,
    circuits_dir: str | Path | None = None,
    sparse_id: str = "sparse",
    dense_id: str = "dense",
    tasks_dir: TasksDirs = None,
    progress: bool = True,
) -> list[CompareRow]:
    """Prune every task on both models with the same settings; one :class:`CompareRow` each."""
    config = config or PruneConfig()
    directory = Path(circuits_dir) if circuits_dir is not None else None
    rows = []
    for task in tasks:
        found = []
        for model, cache, model_id in (
            (sparse, sparse_cache, sparse_id),
            (dense, dense_cache, dense_id),
        ):
            found.append(
                _circuit_for(model, task, config, cache, directory, model_id, progress, tasks_dir)
            )
        (s, s_loss), (d, d_loss) = found
        rows.append(
            CompareRow(
                task=task,
                sparse_edges=None if s is None else s.n_edges,
                dense_edges=None if d is None else d.n_edges,
                sparse_nodes=None if s is None else s.n_nodes,
                dense_nodes=None if d is None else d.n_nodes,
                sparse_loss=float(s_loss),
                dense_loss=float(d_loss),
            )
        )
    return rows


def format_comparison(rows: Sequence[CompareRow]) -> str:
    """The per-task table and the geometric mean ratio."""

    def cell(x: int | None, loss: float) -> str:
        return f"{x}" if x is not None else f"missed ({loss:.3f})"

    lines = [f"{'task':<28}{'sparse edges':>16}{'dense edges':>16}{'dense/sparse':>14}"]
    for r in rows:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else "-"
        lines.append(
            f"{r.task:<28}{cell(r.sparse_edges, r.sparse_loss):>16}{cell(r.dense_edges, r.dense_loss):>16}{ratio:>14}"
        )
    mean = geometric_mean_ratio(rows)
    n = sum(r.ratio is not None for r in rows)
    lines.append(
        f"geometric mean dense/sparse edge ratio: {mean:.2f}x over {n} of {len(rows)} tasks"
        if mean is not None
        else "geometric mean: no task met the target on both models"
    )
    return "\n".join(lines)
