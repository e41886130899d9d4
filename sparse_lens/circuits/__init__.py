"""Minimal task circuits: mean cache and ablations, node masks, pruning, the Circuit, validation.

The pipeline (each step a function, each artefact a file)::

    cache = mean_cache_for(model, model_dir)                  # <model_dir>/mean_cache.safetensors
    result = prune_task(model, "single_double_quote", cache=cache)
    result.circuit.save("quote.json")                         # nodes, edges from the weights, losses
    report = validate_circuit(model, result.circuit, cache)   # sufficiency, necessity, controls

Modules: :mod:`.registry` (ablation modes, torch-free), :mod:`.ablation` (mean cache, the
modes), :mod:`.masks` (tau masks as TL hooks, Heaviside with a sigmoid surrogate),
:mod:`.evaluate` (task loss at the scored position, calibration), :mod:`.faithfulness`
(agreement and KL with the full model, pair-bootstrap intervals), :mod:`.pruning` (optimisation,
search, bisection), :mod:`.controls` (structure-matched random
sets, nonsense tasks), :mod:`.circuit` (the Circuit and its edges), :mod:`.validation` (controls and
report), :mod:`.compare` (sparse vs dense sizes).

Names are imported lazily (as in :mod:`sparse_lens.tasks`), so the CLI can read the ablation
registry without importing torch. (The modules are ``pruning`` and ``validation`` rather than
``prune`` and ``validate`` so that a submodule never shadows the function of the same name.)
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ablation": (
        "Ablation",
        "MeanCache",
        "compute_mean_cache",
        "load_mean_cache",
        "make_ablation",
        "mean_cache_for",
        "pretraining_tokens",
        "save_mean_cache",
        "weights_hash",
    ),
    "registry": ("ABLATIONS", "ablation_names", "register_ablation"),
    "circuit": ("Circuit", "CircuitEdge", "CircuitNode", "IOConnection", "circuit_edges"),
    "compare": ("CompareRow", "compare_models", "format_comparison", "geometric_mean_ratio"),
    "controls": ("random_token_batch", "structure_matched_sets"),
    "evaluate": ("answer_logits", "binary_loss", "calibrate", "hooked_loss"),
    "faithfulness": ("Faithfulness", "Interval", "circuit_faithfulness", "target_from_fraction"),
    "masks": ("NodeMasks", "heaviside_gate", "keep_hooks"),
    "pruning": (
        "PruneConfig",
        "PruneResult",
        "discretise",
        "optimise_masks",
        "prune",
        "prune_task",
        "shuffle_pair_labels",
        "task_batches",
        "task_pairs",
    ),
    "validation": ("format_report", "random_node_sets", "validate", "validate_circuit"),
}
_WHERE = {name: module for module, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{module}"), name)


def __dir__() -> list[str]:
    return __all__
