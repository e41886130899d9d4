"""The circuit tasks as data: one declarative TOML file per task, and everything built on them.

A task is a binary next-token choice shown by contrast pairs: two prompts that differ only
where the task file says (its ``[contrast.*]`` slots), with answer A right on one and answer B
on the other. The twenty tasks of the paper ship in ``sparse_lens/tasks/defs/``; add a task by
adding a file there or by pointing ``tasks_dir`` (``--tasks-dir``) at your own folder, whose
files add to the built-in ones (a file named like a built-in task replaces it).

    >>> from sparse_lens.tasks import get_task, generate_pairs, make_batch, task_loss
    >>> task = get_task("single_double_quote")
    >>> pairs = generate_pairs(task, 64, seed=0, split="train")        # tokenised pairs
    >>> batch = make_batch(pairs, n_ctx=model.cfg.n_ctx)                # right-padded
    >>> loss, acc = task_loss(model(batch.tokens, return_type="logits"), batch)

Modules: :mod:`.spec` (parse and validate a file), :mod:`.generate` (template expansion,
splits, token checks), :mod:`.batch` (batches, loss, evaluation), :mod:`.natural` (instances
mined from real code). Only :mod:`.batch` and :mod:`.natural` evaluation import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sparse_lens.errors import SparseLensError
from sparse_lens.tasks.generate import (
    SPLITS,
    GenerationStats,
    Pair,
    PairSet,
    Prompt,
    generate_pairs,
    score_prompt,
)
from sparse_lens.tasks.natural import (
    NaturalInstance,
    NaturalSet,
    evaluate_natural,
    mine_natural,
    natural_tasks,
)
from sparse_lens.tasks.spec import Task, load_task

if TYPE_CHECKING:
    from sparse_lens.tasks.batch import TaskBatch

__all__ = [
    "BUILTIN_TASKS_DIR",
    "SPLITS",
    "GenerationStats",
    "NaturalInstance",
    "NaturalSet",
    "Pair",
    "PairSet",
    "Prompt",
    "Task",
    "TaskBatch",
    "evaluate_batch",
    "evaluate_natural",
    "evaluate_task",
    "generate_pairs",
    "get_task",
    "load_task",
    "load_tasks",
    "make_batch",
    "mine_natural",
    "natural_tasks",
    "score_prompt",
    "task_loss",
    "task_names",
]

BUILTIN_TASKS_DIR = Path(__file__).parent / "defs"


def _task_files(tasks_dir: str | Path | None) -> dict[str, Path]:
    """name -> file, built-ins first, then ``tasks_dir`` (which may replace a built-in)."""
    files = {p.stem: p for p in sorted(BUILTIN_TASKS_DIR.glob("*.toml"))}
    if tasks_dir is not None:
        folder = Path(tasks_dir)
        if not folder.is_dir():
            raise SparseLensError("tasks directory does not exist", path=folder, field="tasks_dir")
        own = sorted(folder.glob("*.toml"))
        if not own:
            raise SparseLensError(
                "no task files (*.toml) in the tasks directory", path=folder, field="tasks_dir"
            )
        files.update({p.stem: p for p in own})
    return files


def task_names(tasks_dir: str | Path | None = None) -> list[str]:
    """Names of the available tasks (built-in plus ``tasks_dir``), sorted."""
    return sorted(_task_files(tasks_dir))


def get_task(name: str, tasks_dir: str | Path | None = None) -> Task:
    """Load one task by name (from ``tasks_dir`` first, then the built-ins)."""
    files = _task_files(tasks_dir)
    if name not in files:
        raise SparseLensError(
            f"unknown task {name!r}; available: {', '.join(sorted(files))}", field="task"
        )
    return load_task(files[name])


def load_tasks(tasks_dir: str | Path | None = None) -> dict[str, Task]:
    """Load and validate every available task, by name (sorted)."""
    return {name: load_task(path) for name, path in sorted(_task_files(tasks_dir).items())}


def __getattr__(name: str):
    # torch-dependent parts load on first use so `sparse-lens tasks list` stays fast
    if name in {"TaskBatch", "make_batch", "task_loss", "evaluate_task", "evaluate_batch"}:
        from sparse_lens.tasks import batch

        return getattr(batch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
