"""Weight-sparse training: top-k projection, schedules, the trainer and its presets.

Public API (imported lazily, so ``sparse-lens --help`` and config parsing stay cheap):

- :class:`TrainConfig`, :class:`RunConfig`, :func:`load_preset`, :func:`load_config_file`,
  :func:`apply_overrides`, :func:`preset_names` (``sparse_lens.train.config``)
- :class:`Schedule` (L0 annealing and the sharkfin LR, ``sparse_lens.train.schedules``)
- :class:`Sparsifier`, :func:`project_`, :func:`topk_mask` (``sparse_lens.train.sparsifier``)
- :func:`build_optimizer`, :func:`normalize_grad_rms_` (``sparse_lens.train.optim``)
- :class:`Trainer`, :class:`Callback`, :class:`TrainResult`, :class:`TrainingDiverged`
  (``sparse_lens.train.trainer``), :func:`train_from_config` (``sparse_lens.train.runner``)
- :func:`heldout_loss` (any model on the trainer's held-out windows, ``sparse_lens.train.heldout``)
- :func:`export_token_set`, :func:`load_token_set` (a corpus's token streams to train from
  elsewhere, ``sparse_lens.train.token_set``)
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "TrainConfig": "config",
    "RunConfig": "config",
    "load_preset": "config",
    "load_config_file": "config",
    "apply_overrides": "config",
    "preset_names": "config",
    "Schedule": "schedules",
    "Sparsifier": "sparsifier",
    "project_": "sparsifier",
    "topk_mask": "sparsifier",
    "UnitLayout": "sparsifier",
    "nonzero_budget": "sparsifier",
    "build_optimizer": "optim",
    "normalize_grad_rms_": "optim",
    "Trainer": "trainer",
    "Callback": "trainer",
    "TrainResult": "trainer",
    "TrainingDiverged": "trainer",
    "TrainData": "data",
    "load_train_data": "data",
    "train_from_config": "runner",
    "heldout_loss": "heldout",
    "HeldoutLoss": "heldout",
    "export_token_set": "token_set",
    "load_token_set": "token_set",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)


def __dir__() -> list[str]:
    return __all__
