"""The circuit tasks as data: one declarative TOML file per task, and everything built on them.

A task is a binary next-token choice shown by contrast pairs: two prompts that differ only
where the task file says (its ``[contrast.*]`` slots), with answer A right on one and answer B
on the other. The twenty tasks of the paper are the files of the repository's ``tasks/``
folder (installed as package data); add a task by adding a file there or by pointing
``tasks_dir`` (``--tasks-dir``) at your own folder or folders, whose files add to the built-in
ones (a name defined twice is an error naming both files).

    >>> from sparse_lens.tasks import get_task, generate_pairs, make_batch, task_loss
    >>> task = get_task("single_double_quote")
    >>> pairs = generate_pairs(task, 64, seed=0, split="train")        # tokenised pairs
    >>> batch = make_batch(pairs, n_ctx=model.cfg.n_ctx)                # right-padded
    >>> loss, acc = task_loss(model(batch.tokens, return_type="logits"), batch)

Modules: :mod:`.files` (where task files are found), :mod:`.spec` (parse and validate a
file), :mod:`.generate` (template expansion,
splits, token checks), :mod:`.batch` (batches, loss, evaluation), :mod:`.natural` (instances
mined from real code). Only :mod:`.batch` and :mod:`.natural` evaluation import torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sparse_lens.errors import SparseLensError
from sparse_lens.tasks.files import BUILTIN_TASKS_DIR, TasksDirs, task_files
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
    "TasksDirs",
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


def task_names(tasks_dir: TasksDirs = None) -> list[str]:
    """Names of the available tasks (built-in plus ``tasks_dir``), sorted."""
    return sorted(task_files(tasks_dir))


def get_task(name: str, tasks_dir: TasksDirs = None) -> Task:
    """Load one task by name, from the built-ins or ``tasks_dir``."""
    files = task_files(tasks_dir)
    if name not in files:
        raise SparseLensError(
            f"unknown task {name!r}; available: {', '.join(sorted(files))}", field="task"
        )
    return load_task(files[name])


def load_tasks(tasks_dir: TasksDirs = None) -> dict[str, Task]:
    """Load and validate every available task, by name (sorted)."""
    return {name: load_task(path) for name, path in sorted(task_files(tasks_dir).items())}


def __getattr__(name: str):
    # torch-dependent parts load on first use so `sparse-lens tasks list` stays fast
    if name in {"TaskBatch", "make_batch", "task_loss", "evaluate_task", "evaluate_batch"}:
        from sparse_lens.tasks import batch

        return getattr(batch, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
