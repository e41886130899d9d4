"""Is a circuit real? Sufficiency, necessity, and the controls that give them meaning.

For a circuit on a task's held-out (test) pairs, under each ablation mode:

- ``full_loss``: the unmodified model;
- ``circuit_only_loss`` (sufficiency): every node except the circuit's is ablated;
- ``circuit_ablated_loss`` (necessity): only the circuit's nodes are ablated;
- ``random_circuit_only_loss`` / ``random_ablated_loss``: the same two numbers for random node
  sets of the same size and node-type mix (:func:`random_node_sets`; optionally matched per
  hook, i.e. per layer too). A circuit is only meaningful if it beats these by far: a small random set ablated
  should barely matter, and a random set kept alone should fail;
- ``shuffled_label_*``: pruning on the same pairs with labels swapped at random per pair, a task
  with no signal (a replication's critique: learned masks can reach low loss on nonsense). It is
  fitted and measured on the same shuffled pairs, since held-out nonsense cannot be predicted;
  its size is what "reaching the target" costs without a real mechanism.

Zero ablation is reported next to mean ablation because it tends to give smaller, less faithful
circuits; a circuit found under the mean whose sufficiency collapses under zero ablation leans
on the mean values.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any

import torch
from torch import nn

from sparse_lens.circuits.ablation import MeanCache, make_ablation
from sparse_lens.circuits.circuit import Circuit
from sparse_lens.circuits.evaluate import hooked_loss
from sparse_lens.circuits.masks import keep_hooks
from sparse_lens.circuits.pruning import (
    PruneConfig,
    prune,
    shuffle_pair_labels,
    take_rows,
    task_pairs,
)
from sparse_lens.defaults import N_PAIRS, N_RANDOM_SETS
from sparse_lens.nodes import node_sites
from sparse_lens.tasks.batch import TaskBatch
from sparse_lens.tasks.files import TasksDirs

LOSS_KEYS = (
    "circuit_only_loss",
    "circuit_ablated_loss",
    "random_circuit_only_loss",
    "random_ablated_loss",
    "shuffled_label_circuit_edges",
    "shuffled_label_circuit_nodes",
    "shuffled_label_loss",
    "shuffled_label_target_met",
)


def random_node_sets(
    model: nn.Module, circuit: Circuit, n_sets: int, seed: int = 0, match: str = "type"
) -> list[list[tuple[str, int]]]:
    """``n_sets`` random node sets with the circuit's size and node-type mix.

    ``match="type"``: as many nodes of each type (attn_read, q, ..., neuron) as the circuit,
    drawn uniformly from that type's nodes in all layers. ``match="hook"``: as many at every
    hook (same layer and type), a stricter control for circuits concentrated in one layer.
    """
    sites = node_sites(model.cfg)
    key = (lambda s: s.type) if match == "type" else (lambda s: s.hook)
    if match not in ("type", "hook"):
        raise ValueError(f"match must be 'type' or 'hook', got {match!r}")
    by_hook = {s.hook: s for s in sites}
    counts: dict[str, int] = {}
    for node in circuit.nodes:
        group = key(by_hook[node.hook])
        counts[group] = counts.get(group, 0) + 1
    pools = {
        group: [(s.hook, i) for s in sites if key(s) == group for i in range(s.width)]
        for group in counts
    }
    generator = torch.Generator().manual_seed(seed)
    sets = []
    for _ in range(n_sets):
        nodes = []
        for group, count in counts.items():
            picked = torch.randperm(len(pools[group]), generator=generator)[:count]
            nodes += [pools[group][i] for i in sorted(picked.tolist())]
        sets.append(nodes)
    return sets


def _keep(model: nn.Module, nodes: list[tuple[str, int]], invert: bool) -> dict[str, torch.Tensor]:
    keep = {s.hook: torch.zeros(s.width, dtype=torch.bool) for s in node_sites(model.cfg)}
    for hook, index in nodes:
        keep[hook][index] = True
    return {h: ~m for h, m in keep.items()} if invert else keep


def _config_of(circuit: Circuit) -> PruneConfig:
    """The pruning settings recorded in a circuit (defaults for anything missing)."""
    known = {f.name for f in dataclasses.fields(PruneConfig)}
    settings = {k: v for k, v in circuit.settings.items() if k in known}
    return PruneConfig.from_dict(settings)


def validate(
    model: nn.Module,
    circuit: Circuit,
    batch: TaskBatch,
    cache: MeanCache | None = None,
    *,
    train: TaskBatch | None = None,
    ablations: tuple[str, ...] = ("mean", "zero"),
    n_random: int = N_RANDOM_SETS,
    match: str = "type",
    shuffled: bool = True,
    shuffled_config: PruneConfig | None = None,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """The validation report of ``circuit`` on ``batch`` (see the module docstring).

    The top-level loss keys are for the circuit's own ablation mode; ``by_ablation`` holds the
    same keys for every mode in ``ablations`` (the circuit's own mode is always included).
    Shuffled-label pruning (``shuffled``) needs ``train`` pairs; it uses ``shuffled_config`` or
    the circuit's recorded settings.
    """
    circuit.check_model(model)
    if cache is not None:
        cache.check_model(model, circuit.weights_hash)
    modes = list(dict.fromkeys([circuit.ablation, *ablations]))
    full_loss = hooked_loss(model, batch)
    random_sets = random_node_sets(model, circuit, n_random, seed=seed, match=match)
    by_mode: dict[str, dict[str, Any]] = {}
    for mode in modes:
        ablation = make_ablation(mode, cache, seed=seed)

        def loss_of(nodes: list[tuple[str, int]], invert: bool, ablation=ablation) -> float:
            return hooked_loss(
                model, batch, keep_hooks(model, _keep(model, nodes, invert), ablation)
            )

        entry: dict[str, Any] = {
            "circuit_only_loss": hooked_loss(model, batch, circuit.hooks(model, ablation, "keep")),
            "circuit_ablated_loss": hooked_loss(
                model, batch, circuit.hooks(model, ablation, "ablate")
            ),
            "random_circuit_only_loss": [loss_of(s, invert=False) for s in random_sets],
            "random_ablated_loss": [loss_of(s, invert=True) for s in random_sets],
            "shuffled_label_circuit_edges": None,
            "shuffled_label_circuit_nodes": None,
            "shuffled_label_loss": None,
            "shuffled_label_target_met": None,
        }
        if shuffled and train is not None:
            entry.update(
                _shuffled(model, circuit, train, cache, mode, shuffled_config, seed, progress)
            )
        by_mode[mode] = entry
    report: dict[str, Any] = {
        "task": circuit.task,
        "n_prompts": len(batch),
        "weights_hash": circuit.weights_hash,
        "ablation": circuit.ablation,
        "n_nodes": circuit.n_nodes,
        "n_edges": circuit.n_edges,
        "target_loss": circuit.target_loss,
        "n_random": n_random,
        "random_match": match,
        "seed": seed,
        "full_loss": full_loss,
        **by_mode[circuit.ablation],
        "by_ablation": by_mode,
    }
    return report


def _shuffled(
    model: nn.Module,
    circuit: Circuit,
    train: TaskBatch,
    cache: MeanCache | None,
    mode: str,
    config: PruneConfig | None,
    seed: int,
    progress: bool,
) -> dict[str, Any]:
    config = dataclasses.replace(config or _config_of(circuit), ablation=mode, seed=seed)
    nonsense = shuffle_pair_labels(train, seed=seed)
    pairs = torch.unique(nonsense.pair_index)[: config.n_val_pairs]
    measured = take_rows(nonsense, torch.isin(nonsense.pair_index, pairs).nonzero().squeeze(-1))
    result = prune(
        model,
        nonsense,
        measured,
        config=config,
        cache=cache,
        task=f"{circuit.task} (shuffled labels)",
        split="train (shuffled)",
        progress=progress,
    )
    found = result.circuit
    return {
        "shuffled_label_circuit_edges": None if found is None else found.n_edges,
        "shuffled_label_circuit_nodes": None if found is None else found.n_nodes,
        "shuffled_label_loss": result.best_loss,
        "shuffled_label_target_met": result.target_met,
    }


def validate_circuit(
    model: nn.Module,
    circuit: Circuit,
    cache: MeanCache | None = None,
    *,
    n_pairs: int = N_PAIRS,
    split: str = "test",
    tasks_dir: TasksDirs = None,
    shuffled: bool = True,
    **kwargs: Any,
) -> dict[str, Any]:
    """:func:`validate` on ``n_pairs`` fresh pairs of the circuit's task (``split``); the
    shuffled-label control prunes on the task's train pairs (as many as the circuit used)."""
    circuit.check_model(model)
    config = _config_of(circuit)
    held = task_pairs(
        model, circuit.task, n_pairs, seed=circuit.seed, split=split, tasks_dir=tasks_dir
    )
    train = None
    if shuffled:
        train = task_pairs(
            model,
            circuit.task,
            config.n_train_pairs,
            seed=circuit.seed,
            split="train",
            tasks_dir=tasks_dir,
        )
    report = validate(model, circuit, held, cache, train=train, shuffled=shuffled, **kwargs)
    report["split"] = split
    return report


def format_report(report: dict[str, Any]) -> str:
    """A printed table: one column per ablation mode."""
    modes = list(report["by_ablation"])
    width = 34

    def fmt(x: Any) -> str:
        if x is None:
            return "-"
        return f"{x:.4f}" if isinstance(x, float) else str(x)

    def row(label: str, values: list[str]) -> str:
        return label.ljust(width) + "".join(v.rjust(16) for v in values)

    lines = [
        f"task {report['task']}: circuit of {report['n_nodes']} nodes, {report['n_edges']} edges "
        f"(found under {report['ablation']} ablation, target {report['target_loss']}); "
        f"{report['n_prompts']} prompts, {report['n_random']} random sets",
        row("", [f"{m} ablation" for m in modes]),
        row("full model", [fmt(report["full_loss"])] * len(modes)),
    ]
    get = report["by_ablation"]
    lines.append(
        row("circuit only (sufficiency)", [fmt(get[m]["circuit_only_loss"]) for m in modes])
    )
    lines.append(
        row("circuit ablated (necessity)", [fmt(get[m]["circuit_ablated_loss"]) for m in modes])
    )
    for key, label, pick in (
        ("random_circuit_only_loss", "random only: mean / min", min),
        ("random_ablated_loss", "random ablated: mean / max", max),
    ):
        values = []
        for m in modes:
            xs = get[m][key]
            values.append(f"{statistics.fmean(xs):.3f} / {pick(xs):.3f}" if xs else "-")
        lines.append(row(label, values))
    lines.append(
        row("shuffled labels: edges", [fmt(get[m]["shuffled_label_circuit_edges"]) for m in modes])
    )
    lines.append(
        row("shuffled labels: best loss", [fmt(get[m]["shuffled_label_loss"]) for m in modes])
    )
    return "\n".join(lines)
