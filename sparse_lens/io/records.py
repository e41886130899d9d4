"""Typed records of the result files a model directory carries beside its weights.

``eval.json`` (:class:`ModelEval`: the full model on every template task, and on the natural-code
instances mined from held-out files) and ``circuits/<task>.missed.json`` (:class:`MissedTarget`:
a pruning run that found no circuit meeting the target). Each record is a frozen dataclass whose
field order is the file's key order, so ``from_dict(json.loads(text)).to_json_str() == text``
for every file the package ships (tests/test_records.py checks them all). Reading goes through
:mod:`sparse_lens.schema`: an unknown or ill-typed field is one error naming the file and field.

Pruning settings stay a plain mapping: they are :class:`~sparse_lens.circuits.PruneConfig`'s
``to_dict()`` at the time of the run, and the circuits stage (above this one) parses them.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sparse_lens.errors import SparseLensError
from sparse_lens.io.atomic import json_text
from sparse_lens.schema import Reader, dataclass_from_dict


@dataclass(frozen=True)
class TaskEval:
    """The full model on ``n_pairs`` generated contrast pairs of one task
    (:func:`sparse_lens.tasks.evaluate_task`)."""

    task: str
    split: str
    seed: int
    n_pairs: int
    n_prompts: int
    loss: float
    """Mean binary cross-entropy per prompt (the pruning target's scale)."""
    loss_per_pair: float
    accuracy: float
    p_correct: float
    regenerated: int


@dataclass(frozen=True)
class NaturalEval:
    """The full model on task instances mined from real code
    (:func:`sparse_lens.tasks.evaluate_natural`); ``_a`` / ``_b`` split by the true answer."""

    task: str
    natural: bool
    seed: int
    files: int
    found: int
    skipped: int
    answers: tuple[str, ...]
    n_prompts: int
    loss: float
    accuracy: float
    p_correct: float
    n_a: int
    loss_a: float | None
    accuracy_a: float | None
    n_b: int
    loss_b: float | None
    accuracy_b: float | None


@dataclass(frozen=True)
class ModelEval:
    """``eval.json``: every template task on one split, and the natural-code tasks."""

    n_pairs: int
    split: str
    tasks: tuple[TaskEval, ...]
    natural: tuple[NaturalEval, ...] = ()

    def task(self, name: str) -> TaskEval:
        for row in self.tasks:
            if row.task == name:
                return row
        raise SparseLensError(f"no evaluation of task {name!r}", field="tasks")

    def solved(self, target_loss: float) -> list[str]:
        """The tasks whose full-model loss meets ``target_loss``, in file order."""
        return [row.task for row in self.tasks if row.loss <= target_loss]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json_str(self) -> str:
        return json_text(self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, source: str | Path | None = None) -> ModelEval:
        top = Reader(data, source)
        tasks = _rows(top, "tasks", TaskEval)
        natural = _rows(top, "natural", NaturalEval, default=[])
        result = cls(top.integer("n_pairs", minimum=1), top.text("split"), tasks, natural)
        top.done()
        return result


@dataclass(frozen=True)
class MissedTarget:
    """``<task>.missed.json``: pruning found no circuit at the target; the best loss it reached."""

    task: str
    best_loss: float
    full_loss: float
    settings: dict[str, Any]
    """The pruning settings of the run (``PruneConfig.to_dict()``)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json_str(self) -> str:
        # The shipped files end without a newline; kept so they round-trip byte for byte.
        return json_text(self.to_dict(), newline=False)

    @classmethod
    def from_dict(cls, data: Any, source: str | Path | None = None) -> MissedTarget:
        return dataclass_from_dict(cls, data, source=source)


def _rows(top: Reader, key: str, cls: type, default: Any = ...) -> tuple:
    rows = top.array(key) if default is ... else top.array(key, default)
    return tuple(
        dataclass_from_dict(cls, row, source=top.source, prefix=f"{key}[{i}].")
        for i, row in enumerate(rows)
    )


__all__ = ["MissedTarget", "ModelEval", "NaturalEval", "TaskEval"]
