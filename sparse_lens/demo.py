"""The README's main job: one task circuit of a shipped model, found, checked and explained.

    >>> from sparse_lens.demo import format_demo, run_demo
    >>> result = run_demo("stdlib-sparse", "single_double_quote", out="quote.html")
    >>> print(format_demo(result))          # what `sparse-lens demo` prints
    >>> result.exit_code                    # 0: a circuit meets the target; 1: none does

The stages, each the existing API's own function (the demo adds no method of its own):

1. **Model**: :meth:`SparseTransformer.from_pretrained` (a directory or a shipped name).
2. **Circuit**: the model's own ``circuits/<task>.json`` when it exists and belongs to these
   weights (:meth:`Circuit.load` with the model runs :meth:`Circuit.check_model`), else learned
   node-mask pruning (:func:`~sparse_lens.circuits.prune`) under mean ablation. A search that
   misses the target is reported as a miss: the best node set it found is shown *as* a miss
   (``target_met`` false, exit code 1), never as a circuit.
3. **Validation** (:func:`~sparse_lens.circuits.validate`): full model, circuit only, circuit
   ablated, and random node sets of the same size and type mix, under mean ablation, on fresh
   test-split pairs. The shuffled-label control is a whole second pruning run, too slow for a
   demo: its numbers come from the shipped ``circuits/<task>.validation.json`` when that was
   made for these weights, and otherwise the account says it was skipped
   (``sparse-lens validate`` runs it).
4. **Roles**: each node's mean activation at the scored position on class-A vs class-B
   prompts (which answer it tracks) and the held-out pretraining tokens where it peaks
   (:mod:`sparse_lens.viz.activations`), turned into a one-line guess. These are descriptions of
   data, not claims of mechanism.
5. **Report**: :func:`sparse_lens.viz.write_report` with the validation and held-out windows.

Where the mean cache lives: beside the model (``<model_dir>/mean_cache.safetensors``, as every
circuits command does) when that directory is the user's and writable; for a model shipped
inside the package, or a read-only directory, a cache shipped with the model is used if it
matches, else one in the user cache dir (``$SPARSE_LENS_CACHE`` or ``~/.cache/sparse-lens``)
keyed by the weights hash, so an installed package is never written to.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparse_lens.defaults import MEAN_TOKENS, N_PAIRS, N_RANDOM_SETS
from sparse_lens.tasks.files import TasksDirs

DEFAULT_MODEL = "stdlib-sparse"
DEFAULT_TASK = "single_double_quote"
DEFAULT_OUT = "sparse-lens-demo.html"
PAPER_SIZES = {"single_double_quote": (12, 9)}
"""(nodes, edges) of the paper's circuit for a task, printed for comparison."""
N_STAGES = 6
MAX_NODE_SET = 256
"""A missed target's best node set is shown (as a miss) only up to this many nodes."""
MAX_PRINTED_EDGES = 60
"""Edges printed in the account (largest |weight| first); the report and JSON have them all."""
TOP_TOKENS = 8
"""Held-out windows per node whose peak tokens feed the role guess."""
SHUFFLED_KEYS = (
    "shuffled_label_circuit_edges",
    "shuffled_label_circuit_nodes",
    "shuffled_label_loss",
    "shuffled_label_target_met",
)


@dataclass
class NodeRole:
    """What the data says about one circuit node (see :func:`role_guess`)."""

    name: str
    type: str
    description: str
    mean_a: float
    """Mean activation at the scored position over class-A prompts (full model)."""
    mean_b: float
    top_tokens: list[tuple[str, float]]
    """Held-out pretraining tokens where the node peaks, with its activation there."""
    guess: str


@dataclass
class DemoResult:
    """Everything the demo found; :func:`format_demo` turns it into the printed account.

    ``circuit`` is None only when no node set worth showing was found (the best one was the
    whole model, or too large to read); ``target_met`` says whether the circuit shown meets
    its target. ``source`` is ``"shipped"`` (read from ``circuit_path``) or ``"pruned"``.
    """

    model: str
    model_dir: Path
    task: str
    answers: tuple[str, str]
    target_loss: float
    source: str
    circuit: Any = None
    circuit_path: Path | None = None
    target_met: bool = False
    full_loss: float | None = None
    best_loss: float | None = None
    search: list[dict[str, Any]] = field(default_factory=list)
    validation: dict[str, Any] | None = None
    roles: list[NodeRole] = field(default_factory=list)
    report_path: Path | None = None
    notes: list[str] = field(default_factory=list)
    miss_reason: str = ""
    """Why a missed target shows no node set at all."""
    seconds: float = 0.0

    @property
    def exit_code(self) -> int:
        return 0 if self.target_met and self.circuit is not None else 1


class _Stages:
    """``[k/6] what`` lines on stderr, with the seconds each stage took."""

    def __init__(self, enabled: bool, stream: Any = None):
        self.enabled = enabled
        self.stream = stream or sys.stderr
        self.start = self.last = time.perf_counter()
        self.k = 0

    def __call__(self, text: str) -> None:
        """Close the running stage and announce the next one."""
        self.done()
        self.k += 1
        if self.enabled:
            print(
                f"sparse-lens demo [{self.k}/{N_STAGES}] {text} ...", file=self.stream, flush=True
            )
        self.last = time.perf_counter()

    def done(self) -> None:
        if self.enabled and self.k:
            took = time.perf_counter() - self.last
            print(f"sparse-lens demo [{self.k}/{N_STAGES}] done in {took:.1f} s", file=self.stream)

    def total(self) -> float:
        return time.perf_counter() - self.start


# --------------------------------------------------------------------------------------------
# Locating things


def demo_mean_cache(
    model: Any,
    model_dir: Path,
    *,
    n_tokens: int,
    corpus: list[str] | None,
    progress: bool,
) -> tuple[Any, str]:
    """(mean cache, where it lives): beside the model, or the user cache for an install
    (:func:`~sparse_lens.circuits.mean_cache_for` never writes into the package)."""
    from sparse_lens.circuits.ablation import mean_cache_for

    cache = mean_cache_for(model, model_dir, n_tokens=n_tokens, corpus=corpus, progress=progress)
    return cache, str(cache.path) if cache.path is not None else "not saved"


# --------------------------------------------------------------------------------------------
# Roles


def role_guess(
    mean_a: float, mean_b: float, answers: tuple[str, str], top_tokens: list[tuple[str, float]]
) -> str:
    """A one-line reading of a node from its class means and its held-out peak tokens.

    A node "tracks" a class when its mean at the scored position is at least twice as large in
    magnitude on that class's prompts; it "separates" them when the means differ by a quarter
    of the larger one or more; else it is the same on both (context the task needs, not which
    answer is right). The most frequent peak token is named when it recurs.
    """
    big = max(abs(mean_a), abs(mean_b))
    if not math.isfinite(big) or big < 1e-6:
        parts = ["silent at the scored position on task prompts"]
    elif abs(mean_a) >= 2 * abs(mean_b):
        parts = [f"tracks class A (answer {answers[0]!r})"]
    elif abs(mean_b) >= 2 * abs(mean_a):
        parts = [f"tracks class B (answer {answers[1]!r})"]
    elif abs(mean_a - mean_b) >= 0.25 * big:
        larger = "A" if mean_a > mean_b else "B"
        parts = [f"separates the classes (higher on {larger})"]
    else:
        parts = ["same on both classes: context, not which answer"]
    counts = Counter(token for token, _ in top_tokens)
    if counts:
        token, n = counts.most_common(1)[0]
        if n >= 2:
            parts.append(f"peaks on {token!r} in held-out code")
    return "; ".join(parts)


def node_roles(
    model: Any, circuit: Any, batch: Any, heldout: Any, answers: tuple[str, str]
) -> list[NodeRole]:
    """Class means at the scored position and held-out peak tokens for each circuit node."""
    from sparse_lens.nodes import describe_node
    from sparse_lens.viz.activations import str_tokens, top_activating
    from sparse_lens.viz.circuit_data import circuit_data
    from sparse_lens.viz.panels import batch_activations, class_means

    data = circuit_data(circuit)
    means = class_means(data, batch_activations(model, data, batch), batch.label.tolist())
    snippets = top_activating(model, data, heldout, k=TOP_TOKENS) if heldout is not None else {}
    roles = []
    for node in circuit.nodes:
        top = [
            (str_tokens(model, [s.tokens[s.highlight]])[0], s.value)
            for s in snippets.get(node.name, [])
        ]
        a, b = means[node.name]
        roles.append(
            NodeRole(
                name=node.name,
                type=node.type,
                description=describe_node(model.cfg, node.hook, node.index),
                mean_a=a,
                mean_b=b,
                top_tokens=top,
                guess=role_guess(a, b, answers, top),
            )
        )
    return roles


# --------------------------------------------------------------------------------------------
# Pruning, with an honest miss


def _best_node_set(model: Any, result: Any, val: Any, cache: Any, config: Any, **build: Any):
    """(circuit, why not): the node set of the search run that came closest to the target, as
    a Circuit whose ``target_met`` is False; None (and the reason) when that set is the whole
    model or too large to read."""
    import torch

    from sparse_lens.circuits import Circuit, calibrate, make_ablation
    from sparse_lens.circuits.evaluate import binary_loss, hooked_answer_logits
    from sparse_lens.circuits.masks import NodeMasks, keep_hooks
    from sparse_lens.nodes import node_sites

    if not result.runs:
        return None, "the search made no runs"
    closest = min(result.runs, key=lambda run: run["loss"])  # the first minimum, as prune keeps
    masks = NodeMasks(node_sites(model.cfg))
    k = int(closest["n_nodes"])
    if k >= masks.n_nodes:
        return None, f"the closest node set is the whole model ({k} nodes)"
    if k > MAX_NODE_SET:
        return None, f"the closest node set has {k} nodes, too many to read (> {MAX_NODE_SET})"
    keep = torch.zeros(masks.n_nodes, dtype=torch.bool)
    keep[torch.sort(-result.tau, stable=True).indices[:k]] = True
    per_site = masks.keep_dict(keep)
    ablation = make_ablation(config.ablation, cache, seed=config.seed)
    with torch.no_grad():
        logits = hooked_answer_logits(model, val, keep_hooks(model, per_site, ablation))
    loss = float(binary_loss(logits, val.label).mean())
    scale, shift, calibrated = calibrate(logits, val.label, config.calibration_steps)
    nodes = [(h, int(i)) for h, m in per_site.items() for i in m.nonzero().squeeze(-1).tolist()]
    circuit = Circuit.build(
        model,
        nodes,
        split="validation",
        target_loss=config.target_loss,
        achieved_loss=loss,
        calibrated_loss=calibrated,
        logit_scale=scale,
        logit_shift=shift,
        ablation=config.ablation,
        seed=config.seed,
        settings=config.to_dict(),
        search=result.runs,
        **build,
    )
    return circuit, ""


def _shipped_circuit(
    model: Any, path: Path, target_loss: float | None, notes: list[str]
) -> Any | None:
    """The model's own circuit at ``path`` if it exists, belongs to these weights and has the
    requested target; else None, with the reason in ``notes``."""
    from sparse_lens.circuits import Circuit
    from sparse_lens.errors import SparseLensError

    if not path.is_file():
        return None
    try:
        circuit = Circuit.load(path, model)  # refuses other weights (Circuit.check_model)
    except SparseLensError as error:
        notes.append(f"the shipped circuit is not usable ({error}); pruned a new one")
        return None
    if target_loss is not None and not math.isclose(circuit.target_loss, target_loss):
        notes.append(
            f"the shipped circuit targets loss {circuit.target_loss}, not {target_loss}; "
            "pruned a new one"
        )
        return None
    return circuit


def _pruned_circuit(
    model: Any, spec: Any, config: Any, cache: Any, result: DemoResult, progress: bool, err: Any
) -> Any | None:
    """Prune ``spec`` (recording the search in ``result``); on a miss, the closest node set."""
    from sparse_lens.circuits import prune, task_batches

    train, val = task_batches(model, spec, config)
    # prune prints one line per search run on stdout; that is progress, so it goes to stderr
    with contextlib.redirect_stdout(err):
        found = prune(
            model,
            train,
            val,
            config=config,
            cache=cache,
            task=spec.name,
            model_id=result.model,
            progress=progress,
        )
    result.full_loss, result.best_loss = found.full_loss, found.best_loss
    result.search, result.target_met = found.runs, found.target_met
    if found.circuit is not None:
        return found.circuit
    circuit, result.miss_reason = _best_node_set(
        model, found, val, cache, config, task=spec.name, model_id=result.model
    )
    return circuit


# --------------------------------------------------------------------------------------------
# The demo


def run_demo(
    model: str | Path = DEFAULT_MODEL,
    task: str = DEFAULT_TASK,
    out: str | Path | None = DEFAULT_OUT,
    *,
    reprune: bool = False,
    target_loss: float | None = None,
    steps: int | None = None,
    seed: int = 0,
    n_pairs: int = N_PAIRS,
    n_random: int = N_RANDOM_SETS,
    heldout_windows: int = 32,
    corpus: list[str] | None = None,
    mean_tokens: int = MEAN_TOKENS,
    tasks_dir: TasksDirs = None,
    progress: bool = True,
    stream: Any = None,
) -> DemoResult:
    """Load ``model``, get its ``task`` circuit, validate it, describe its nodes, write a report.

    Args:
        model: a checkpoint directory or a shipped model name.
        task: a task name (:func:`sparse_lens.tasks.task_names`).
        out: where to write the HTML report (None: no report). A circuit pruned here is also
            saved beside it as ``<out stem>.circuit.json``.
        reprune: prune even if the model ships a circuit for ``task``.
        target_loss: the loss a circuit must reach when pruned here (default
            :data:`~sparse_lens.defaults.TARGET_LOSS`, the paper's).
            A shipped circuit with another target is not used.
        steps: optimiser steps per pruning run (default: :class:`PruneConfig`'s).
        seed: pruning seed, and seed of the random control sets.
        n_pairs: test-split contrast pairs for validation and class means.
        n_random: random node sets of the circuit's size and type mix.
        heldout_windows: held-out pretraining windows searched for each node's peak tokens
            (0: none).
        corpus: corpus for the mean cache and held-out windows (default: the model's training
            corpus from its ``training.json``, else the standard library).
        mean_tokens: tokens the mean cache averages over (when it has to be computed).
        tasks_dir: folder(s) of extra task files where ``task`` may be defined.
        progress: stage lines and progress bars on ``stream`` (default stderr).

    Returns:
        A :class:`DemoResult`; user errors raise :class:`~sparse_lens.errors.SparseLensError`.
    """
    from sparse_lens.circuits import PruneConfig, task_pairs, validate
    from sparse_lens.errors import SparseLensError
    from sparse_lens.io.checkpoint import ModelDir
    from sparse_lens.tasks import get_task

    if n_pairs < 1 or n_random < 1 or heldout_windows < 0 or mean_tokens < 1:
        raise SparseLensError(
            "n_pairs, n_random and mean_tokens must be >= 1 and heldout_windows >= 0",
            field="n_pairs",
        )
    spec = get_task(task, tasks_dir)  # an unknown task fails before any work
    answers = (spec.answer_a_text, spec.answer_b_text)
    stage = _Stages(progress, stream)

    stage(f"loading model {model}")
    located = ModelDir.resolve(model)
    net = located.load().eval()
    model_dir = located.path

    stage("mean cache (node means over held-out pretraining tokens)")
    cache, cache_where = demo_mean_cache(
        net, model_dir, n_tokens=mean_tokens, corpus=corpus, progress=progress
    )

    store = located.circuits
    circuit_path = store.circuit_file(spec.name)
    result = DemoResult(
        model=str(model),
        model_dir=model_dir,
        task=spec.name,
        answers=answers,
        target_loss=PruneConfig.target_loss if target_loss is None else float(target_loss),
        source="pruned",
    )
    result.notes.append(f"mean cache: {cache_where}")
    circuit = None if reprune else _shipped_circuit(net, circuit_path, target_loss, result.notes)
    if reprune and circuit_path.is_file():
        result.notes.append("--reprune: the shipped circuit was not used")
    if circuit is not None:
        stage(f"loaded the shipped circuit {circuit_path.name}")
        result.source, result.circuit_path = "shipped", circuit_path
        result.target_loss, result.target_met = circuit.target_loss, circuit.target_met
    else:
        stage(f"pruning a circuit for {spec.name} (no shipped circuit used)")
        extra = {} if steps is None else {"steps": steps}
        config = PruneConfig(target_loss=result.target_loss, ablation="mean", seed=seed, **extra)
        circuit = _pruned_circuit(net, spec, config, cache, result, progress, stage.stream)
        if circuit is not None and out is not None:
            result.circuit_path = circuit.save(Path(out).with_suffix(".circuit.json"))
    result.circuit = circuit
    if circuit is None:
        if out is not None:
            result.notes.append(f"no report written to {out}: there is no circuit to show")
        stage.done()
        result.seconds = stage.total()
        return result

    stage(f"validating: circuit only, circuit ablated, {n_random} random node sets")
    held = task_pairs(net, spec, n_pairs, seed=circuit.seed, split="test")
    report = validate(
        net,
        circuit,
        held,
        cache,
        ablations=("mean",),
        n_random=n_random,
        shuffled=False,
        seed=seed,
        progress=progress,
    )
    report["split"] = "test"
    shuffled = _shipped_shuffled(store, circuit) if result.source == "shipped" else None
    if shuffled is not None:
        validation_path = store.validation_file(circuit.task)
        report.update(shuffled)
        report["by_ablation"][circuit.ablation].update(shuffled)
        report["shuffled_label_control"] = f"recorded in {validation_path.name}"
        result.notes.append(f"shuffled-label control: recorded in {validation_path}")
    else:
        for key in SHUFFLED_KEYS:  # not measured: keep them out of the report table
            report.pop(key, None)
            report["by_ablation"][circuit.ablation].pop(key, None)
        report["shuffled_label_control"] = (
            "skipped by the demo (a second pruning run); sparse-lens validate measures it"
        )
    result.validation = report
    result.full_loss = report["full_loss"]

    stage("node roles: class means at the scored token, held-out peak tokens")
    heldout = None
    if heldout_windows:
        from sparse_lens.circuits import pretraining_tokens

        n_tokens = heldout_windows * net.cfg.n_ctx
        heldout = pretraining_tokens(net, model_dir, n_tokens, corpus, progress=progress)
        heldout = heldout[:heldout_windows]
    result.roles = node_roles(net, circuit, held, heldout, answers)

    if out is not None:
        stage(f"writing the report {out}")
        from sparse_lens.viz import write_report

        met = "" if circuit.target_met else " (target NOT met: the best node set found)"
        result.report_path = write_report(
            net,
            circuit,
            spec,
            report,
            out_path=out,
            heldout=heldout,
            seed=seed,
            title=f"{spec.name} circuit of {Path(str(model)).name}{met}",
        ).resolve()
    stage.done()
    result.seconds = stage.total()
    return result


def _shipped_shuffled(store: Any, circuit: Any) -> dict[str, Any] | None:
    """The shuffled-label numbers of a shipped validation report made for this circuit."""
    from sparse_lens.errors import SparseLensError

    try:
        saved = store.validation(circuit.task)
    except SparseLensError:
        return None
    if not isinstance(saved, dict) or saved.get("weights_hash") != circuit.weights_hash:
        return None
    if saved.get("n_edges") not in (None, circuit.n_edges):
        return None
    entry = (saved.get("by_ablation") or {}).get(circuit.ablation) or saved
    picked = {key: entry.get(key) for key in SHUFFLED_KEYS}
    return picked if picked["shuffled_label_loss"] is not None else None


# --------------------------------------------------------------------------------------------
# The printed account


def _loss(x: float | None) -> str:
    return "-" if x is None else f"{x:.4f}"


def verdict(validation: dict[str, Any], target_loss: float) -> str:
    """One line: sufficient? necessary? better than the random controls?"""
    only, ablated = validation["circuit_only_loss"], validation["circuit_ablated_loss"]
    rand_only = validation["random_circuit_only_loss"]
    rand_ablated = validation["random_ablated_loss"]
    n = len(rand_only)
    sufficient = only <= target_loss
    beats_only = sum(only < x for x in rand_only)
    beats_ablated = sum(ablated > x for x in rand_ablated)
    necessary = ablated > max(rand_ablated) and ablated > validation["full_loss"] + 0.1
    parts = [
        f"{'sufficient' if sufficient else 'NOT sufficient'} (alone {only:.3f} "
        f"{'<=' if sufficient else '>'} target {target_loss})",
        f"{'necessary' if necessary else 'NOT clearly necessary'} (ablated {ablated:.3f} vs "
        f"full {validation['full_loss']:.3f}, random sets ablated at most {max(rand_ablated):.3f})",
        f"beats {beats_only}/{n} random sets kept alone and {beats_ablated}/{n} ablated",
    ]
    return "verdict: " + "; ".join(parts)


def format_demo(result: DemoResult) -> str:
    """The demo's readable account (what `sparse-lens demo` prints on stdout)."""
    lines = [
        f"sparse-lens demo: task {result.task} on model {result.model}",
        f"  answers: class A {result.answers[0]!r}, class B {result.answers[1]!r}; "
        f"chance loss ln 2 = {math.log(2):.4f}",
    ]
    circuit = result.circuit
    if result.source == "pruned" and not result.target_met:
        lines += _miss_lines(result)
    if circuit is None:
        lines += [f"note: {n}" for n in result.notes]
        return "\n".join(lines)

    where = (
        f"shipped with the model: {result.circuit_path}"
        if result.source == "shipped"
        else "pruned now" + (f", saved to {result.circuit_path}" if result.circuit_path else "")
    )
    met = "met" if circuit.target_met else "NOT met"
    lines += [
        "",
        f"circuit ({where}; {circuit.ablation} ablation)",
        f"  achieved loss {circuit.achieved_loss:.4f} on the {circuit.split} split, "
        f"target {circuit.target_loss} {met}",
        f"  size: {circuit.n_nodes} nodes, {circuit.n_edges} edges"
        + (
            f" (the paper's circuit for this task: {PAPER_SIZES[result.task][0]} nodes, "
            f"{PAPER_SIZES[result.task][1]} edges)"
            if result.task in PAPER_SIZES
            else ""
        ),
        "",
        "nodes (mean activation at the scored token on class A / B prompts; held-out peaks):",
    ]
    for role in result.roles:
        tops = _peaks(role.top_tokens)
        lines += [
            f"  {role.name}  {role.type}: {role.description}",
            f"      A {role.mean_a:+.3f}  B {role.mean_b:+.3f}  held-out peaks: {tops}",
            f"      role guess: {role.guess}",
        ]
    lines.append("edges (nonzero weights between kept nodes):")
    edges = circuit.edges
    if len(edges) > MAX_PRINTED_EDGES:
        edges = sorted(edges, key=lambda e: -abs(e.weight))[:MAX_PRINTED_EDGES]
    width = max((len(e.src) for e in edges), default=0)
    lines += [f"  {e.src:<{width}} -> {e.dst}  {e.weight:+.4f}" for e in edges]
    if len(edges) < len(circuit.edges):
        lines.append(
            f"  ... {len(circuit.edges) - len(edges)} more (the {len(edges)} largest |weight| "
            "shown; all are in the report and the circuit JSON)"
        )
    if not circuit.edges:
        lines.append("  (none)")

    v = result.validation
    if v is not None:
        lines += [
            "",
            f"losses ({v['n_prompts']} {v['split']}-split prompts, {v['ablation']} ablation):",
        ]
        lines += _loss_lines(v, result)
        lines.append(verdict(v, circuit.target_loss))
    if result.report_path is not None:
        lines.append(f"report: {result.report_path}")
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


def _peaks(top_tokens: list[tuple[str, float]]) -> str:
    """Distinct peak tokens in rank order, each with its largest |activation| and count."""
    seen: dict[str, list[float]] = {}
    for token, value in top_tokens:
        seen.setdefault(token, []).append(value)
    return (
        ", ".join(
            f"{t!r} {max(vs, key=abs):+.2f}" + (f" (x{len(vs)})" if len(vs) > 1 else "")
            for t, vs in seen.items()
        )
        or "-"
    )


def _loss_lines(v: dict[str, Any], result: DemoResult) -> list[str]:
    rand_only, rand_ablated = v["random_circuit_only_loss"], v["random_ablated_loss"]
    n = len(rand_only)
    rows = [
        ("full model", _loss(v["full_loss"])),
        ("circuit only (sufficiency)", _loss(v["circuit_only_loss"])),
        ("circuit ablated (necessity)", _loss(v["circuit_ablated_loss"])),
        (
            f"{n} random sets only",
            f"mean {statistics.fmean(rand_only):.4f}, range {min(rand_only):.4f} .. {max(rand_only):.4f}",
        ),
        (
            f"{n} random sets ablated",
            f"mean {statistics.fmean(rand_ablated):.4f}, range "
            f"{min(rand_ablated):.4f} .. {max(rand_ablated):.4f}",
        ),
    ]
    if v.get("shuffled_label_loss") is not None:
        edges = v.get("shuffled_label_circuit_edges")
        met = "met" if v.get("shuffled_label_target_met") else "not met"
        rows.append(
            (
                "shuffled labels (recorded)",
                f"best loss {v['shuffled_label_loss']:.4f}, target {met}"
                + ("" if edges is None else f", {edges} edges"),
            )
        )
    else:
        rows.append(
            (
                "shuffled labels",
                "skipped in the demo (it is a second pruning run); `sparse-lens validate "
                f"{result.model} {result.circuit_path or 'CIRCUIT.json'}` runs it",
            )
        )
    return [f"  {label:<30} {value}" for label, value in rows]


def _miss_lines(result: DemoResult) -> list[str]:
    lines = [
        "",
        f"TARGET NOT MET: no node set reached loss {result.target_loss} on task {result.task}.",
        f"  full model {_loss(result.full_loss)}, best loss pruning found {_loss(result.best_loss)}",
    ]
    for i, run in enumerate(result.search, 1):
        lines.append(
            f"  search run {i} (k_coef {run['k_coef']:.0e}, lr {run['lr']:.0e}): "
            f"{run['open_after_training']} nodes open after training, best "
            f"{run['n_nodes']} nodes at loss {run['loss']:.4f}"
        )
    if result.circuit is None:
        lines.append(
            f"  No circuit is shown: {result.miss_reason}. A better-trained model, a higher "
            "--target-loss or more --steps may reach the target."
        )
    else:
        lines.append(
            f"  Below is the closest node set ({result.circuit.n_nodes} nodes), shown as a MISS, "
            "not as a circuit."
        )
    return lines


__all__ = [
    "DEFAULT_MODEL",
    "DEFAULT_OUT",
    "DEFAULT_TASK",
    "DemoResult",
    "NodeRole",
    "demo_mean_cache",
    "format_demo",
    "node_roles",
    "role_guess",
    "run_demo",
    "verdict",
]
