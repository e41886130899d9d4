"""The registry of ablation modes, importable without torch (CLI choices come from here).

Built-in modes are registered by import path, so listing them (``sparse-lens prune --help``)
does not import torch; a class is imported the first time a mode is used. Register your own
with the decorator::

    @register_ablation("median")
    class MedianAblation(Ablation): ...
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from sparse_lens.errors import SparseLensError

ABLATIONS: dict[str, Any] = {
    "mean": "sparse_lens.circuits.ablation:MeanAblation",
    "zero": "sparse_lens.circuits.ablation:ZeroAblation",
    "resample": "sparse_lens.circuits.ablation:ResampleAblation",
}
"""Mode name -> an Ablation subclass, or its "module:Class" path (imported on first use)."""


def register_ablation(name: str) -> Callable[[type], type]:
    """Class decorator adding an :class:`~sparse_lens.circuits.ablation.Ablation` mode."""

    def decorate(cls: type) -> type:
        cls.name = name
        ABLATIONS[name] = cls
        return cls

    return decorate


def ablation_names() -> list[str]:
    """Registered ablation modes, in registration order."""
    return list(ABLATIONS)


def ablation_class(name: str) -> type:
    """The class of mode ``name`` (SparseLensError naming the choices if unknown)."""
    if name not in ABLATIONS:
        raise SparseLensError(
            f"unknown ablation {name!r}; choose one of {ablation_names()}", field="ablation"
        )
    entry = ABLATIONS[name]
    if isinstance(entry, str):
        module, attr = entry.split(":")
        entry = getattr(importlib.import_module(module), attr)
        entry.name = name
        ABLATIONS[name] = entry
    return entry
