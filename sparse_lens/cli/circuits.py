"""`sparse-lens prune | validate | circuit show | compare`: task circuits from the command line.

    sparse-lens prune MODEL --task NAME [--target-loss 0.15] [--ablation MODE] [--seed S] --out FILE
    sparse-lens validate MODEL CIRCUIT.json [--json FILE]
    sparse-lens circuit show CIRCUIT.json [--model MODEL]
    sparse-lens compare SPARSE DENSE [--tasks all | a,b,...]

MODEL is a checkpoint directory or a shipped model name. The mean cache (means of every node
over held-out pretraining tokens) is computed on first use and saved as
``<model dir>/mean_cache.safetensors``, then reused by every task until the weights change.
``--ablation`` choices come from the ablation registry (sparse_lens.circuits.registry).
A circuit file that does not belong to the model (weights hash, hooks, indices) or is not a
valid circuit file is a one-line error with exit code 2; a target no node set reaches exits 1.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from sparse_lens.cli.options import add_tasks_dir
from sparse_lens.defaults import MEAN_TOKENS, N_PAIRS, N_RANDOM_SETS, TARGET_LOSS


def register(subparsers: argparse._SubParsersAction) -> None:
    from sparse_lens.circuits.registry import ablation_names

    modes = ablation_names()

    prune = subparsers.add_parser(
        "prune",
        help="find a task's minimal circuit by learned node-mask pruning",
        description="Learn a mask over every node (mean ablation of the rest), then bisect the "
        "number of nodes kept so the circuit meets the target loss on held-out pairs. Writes "
        "the circuit as JSON.",
    )
    prune.add_argument("model", help="model directory or shipped model name")
    prune.add_argument("--task", required=True, help="task name (see `sparse-lens tasks list`)")
    _pruning_options(prune, modes)
    prune.add_argument(
        "--out", required=True, metavar="CIRCUIT.json", help="where to write the circuit"
    )
    _common(prune)
    prune.set_defaults(func=run_prune)

    validate = subparsers.add_parser(
        "validate",
        help="sufficiency, necessity and controls for a circuit",
        description="Loss of the full model, of the circuit alone (everything else ablated) and "
        "with the circuit ablated, the same for random node sets of the same size and type mix, "
        "and the size of a circuit pruned on shuffled labels; under mean and zero ablation.",
    )
    validate.add_argument("model", help="the model the circuit was pruned on")
    validate.add_argument("circuit", metavar="CIRCUIT.json")
    validate.add_argument("--json", metavar="FILE", help="also write the report as JSON")
    validate.add_argument(
        "--n-pairs",
        type=int,
        default=N_PAIRS,
        help=f"held-out pairs to evaluate (default {N_PAIRS})",
    )
    validate.add_argument(
        "--split", default="test", help="task split to evaluate on (default test)"
    )
    validate.add_argument(
        "--n-random",
        type=int,
        default=N_RANDOM_SETS,
        help=f"random node sets (default {N_RANDOM_SETS})",
    )
    validate.add_argument(
        "--ablations",
        default="mean,zero",
        help="comma-separated modes to report (default mean,zero)",
    )
    validate.add_argument(
        "--no-shuffled", action="store_true", help="skip the shuffled-label pruning"
    )
    validate.add_argument("--seed", type=int, default=0, help="seed for random sets and shuffling")
    _common(validate)
    validate.set_defaults(func=run_validate)

    circuit = subparsers.add_parser("circuit", help="inspect circuit files")
    circuit_sub = circuit.add_subparsers(dest="circuit_command", required=True, metavar="COMMAND")
    show = circuit_sub.add_parser("show", help="a circuit's nodes and edges as a readable list")
    show.add_argument("circuit", metavar="CIRCUIT.json")
    show.add_argument("--model", help="check the circuit against this model and describe its nodes")
    show.set_defaults(func=run_show)

    compare = subparsers.add_parser(
        "compare",
        help="circuit sizes of a sparse and a dense model, task by task",
        description="Prune every task on both models with the same settings and print the edge "
        "counts and the geometric mean of dense/sparse edges (paper: about 16x).",
    )
    compare.add_argument("sparse", help="the weight-sparse model")
    compare.add_argument("dense", help="the dense model")
    compare.add_argument("--tasks", default="all", help="'all' or comma-separated task names")
    _pruning_options(compare, modes)
    compare.add_argument("--circuits-dir", metavar="DIR", help="keep / reuse circuits here")
    compare.add_argument("--json", metavar="FILE", help="also write the rows as JSON")
    _common(compare)
    compare.set_defaults(func=run_compare)


def _pruning_options(parser: argparse.ArgumentParser, modes: list[str]) -> None:
    parser.add_argument(
        "--target-loss",
        type=float,
        default=TARGET_LOSS,
        help=f"task loss to reach (default {TARGET_LOSS})",
    )
    parser.add_argument(
        "--ablation", choices=modes, default="mean", help="what pruned nodes become (default mean)"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed for masks and pair sampling (default 0)"
    )
    parser.add_argument(
        "--steps", type=int, help="optimiser steps per search run (default: PruneConfig's)"
    )
    parser.add_argument(
        "--no-refine",
        action="store_true",
        help="keep the bisected prefix of the ranking as it is (no greedy one-node removals)",
    )


def _common(parser: argparse.ArgumentParser) -> None:
    add_tasks_dir(parser)
    parser.add_argument(
        "--corpus",
        nargs="+",
        metavar="PATH",
        help="corpus for the mean cache (default: the model's training corpus, else the stdlib)",
    )
    parser.add_argument(
        "--mean-tokens", type=int, default=MEAN_TOKENS, help="tokens the means average over"
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def _load_model(name_or_path: str):
    """(model, its directory): a checkpoint directory or a shipped model name."""
    from sparse_lens.io.checkpoint import ModelDir

    located = ModelDir.resolve(name_or_path)
    return located.load(), located.path


def _needs_cache(*modes: str) -> bool:
    """Whether any of these ablation modes needs the mean cache (the mode's own answer)."""
    from sparse_lens.circuits.registry import ablation_class

    return any(ablation_class(mode).needs_cache for mode in modes)


def _cache(model, directory: Path, args: argparse.Namespace, needed: bool = True):
    from sparse_lens.circuits import mean_cache_for

    if not needed:
        return None
    return mean_cache_for(
        model,
        directory,
        n_tokens=args.mean_tokens,
        corpus=args.corpus,
        progress=not args.no_progress,
    )


def _config(args: argparse.Namespace):
    from sparse_lens.circuits import PruneConfig

    extra = {} if args.steps is None else {"steps": args.steps}
    return PruneConfig(
        target_loss=args.target_loss,
        ablation=args.ablation,
        seed=args.seed,
        refine=not args.no_refine,
        **extra,
    )


def run_prune(args: argparse.Namespace) -> int:
    from sparse_lens.circuits import prune_task

    config = _config(args)
    model, directory = _load_model(args.model)
    cache = _cache(model, directory, args, needed=_needs_cache(args.ablation))
    result = prune_task(
        model,
        args.task,
        config=config,
        cache=cache,
        tasks_dir=args.tasks_dir,
        model_id=str(args.model),
        progress=not args.no_progress,
    )
    if result.circuit is None:
        print(
            f"sparse-lens prune: target loss {config.target_loss} not met on task {args.task}: best "
            f"loss {result.best_loss:.4f} (full model {result.full_loss:.4f}); no circuit written",
            file=sys.stderr,
        )
        return 1
    circuit = result.circuit
    circuit.save(args.out)
    print(
        f"{circuit.task}: {circuit.n_nodes} nodes, {circuit.n_edges} edges; loss {circuit.achieved_loss:.4f} "
        f"(target {circuit.target_loss}, full model {result.full_loss:.4f}, calibrated "
        f"{circuit.calibrated_loss:.4f}) -> {args.out}"
    )
    return 0


def run_validate(args: argparse.Namespace) -> int:
    from sparse_lens.circuits import Circuit, format_report, validate_circuit
    from sparse_lens.circuits.registry import ablation_class

    model, directory = _load_model(args.model)
    circuit = Circuit.load(args.circuit, model)
    ablations = tuple(a.strip() for a in args.ablations.split(",") if a.strip())
    for mode in ablations:
        ablation_class(mode)  # unknown names are a one-line error before any work
    needs_cache = _needs_cache(circuit.ablation, *ablations)
    cache = _cache(model, directory, args, needed=needs_cache)
    report = validate_circuit(
        model,
        circuit,
        cache,
        n_pairs=args.n_pairs,
        split=args.split,
        tasks_dir=args.tasks_dir,
        ablations=ablations,
        n_random=args.n_random,
        shuffled=not args.no_shuffled,
        seed=args.seed,
        progress=not args.no_progress,
    )
    print(format_report(report))
    if args.json:
        from sparse_lens.io.atomic import write_json

        write_json(args.json, report)
    return 0


def run_show(args: argparse.Namespace) -> int:
    from sparse_lens.circuits import Circuit

    describe = None
    if args.model:
        from sparse_lens.nodes import describe_node

        model, _ = _load_model(args.model)
        circuit = Circuit.load(args.circuit, model)
        describe = lambda node: describe_node(model.cfg, node.hook, node.index)  # noqa: E731
    else:
        circuit = Circuit.load(args.circuit)
    print(format_circuit(circuit, describe))
    return 0


def format_circuit(circuit, describe=None) -> str:
    """A circuit as text: provenance, then nodes, edges and io connections, one per line."""
    met = "met" if circuit.target_met else "NOT met"
    lines = [
        f"circuit for task {circuit.task!r} on model {circuit.model_id or '?'} "
        f"(weights sha256 {circuit.weights_hash[:12]}...), {circuit.ablation} ablation",
        f"loss {circuit.achieved_loss:.4f} on the {circuit.split} split, target {circuit.target_loss} {met}; "
        f"calibrated {circuit.calibrated_loss:.4f} (scale {circuit.logit_scale:.3f}, shift {circuit.logit_shift:.3f})",
        f"{circuit.n_nodes} nodes, {circuit.n_edges} edges (seed {circuit.seed})",
        "",
        "nodes:",
    ]
    width = max((len(n.name) for n in circuit.nodes), default=0)
    for node in circuit.nodes:
        extra = f"  {describe(node)}" if describe else ""
        lines.append(f"  {node.name:<{width}}  {node.type}{extra}")
    lines.append("edges:")
    for edge in circuit.edges:
        lines.append(f"  {edge.src} -> {edge.dst}  {edge.weight:+.4f}")
    if circuit.io_connections:
        lines.append("io connections (not counted as edges):")
        for c in circuit.io_connections:
            lines.append(f"  {c.src} -> {c.dst}  ({c.n_weights} nonzero, norm {c.norm:.3f})")
    return "\n".join(lines)


def run_compare(args: argparse.Namespace) -> int:
    from sparse_lens.circuits import compare_models, format_comparison
    from sparse_lens.errors import SparseLensError
    from sparse_lens.tasks import task_names

    available = task_names(args.tasks_dir)
    if args.tasks == "all":
        tasks = available
    else:
        tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
        unknown = [t for t in tasks if t not in available]
        if unknown or not tasks:
            raise SparseLensError(
                f"unknown task(s) {unknown}; available: {', '.join(available)}", field="tasks"
            )
    config = _config(args)
    sparse, sparse_dir = _load_model(args.sparse)
    dense, dense_dir = _load_model(args.dense)
    needed = _needs_cache(args.ablation)
    rows = compare_models(
        sparse,
        dense,
        tasks,
        config=config,
        sparse_cache=_cache(sparse, sparse_dir, args, needed),
        dense_cache=_cache(dense, dense_dir, args, needed),
        circuits_dir=args.circuits_dir,
        sparse_id=str(args.sparse),
        dense_id=str(args.dense),
        tasks_dir=args.tasks_dir,
        progress=not args.no_progress,
    )
    print(format_comparison(rows))
    if args.json:
        from sparse_lens.io.atomic import write_json

        write_json(args.json, [{**vars(r), "ratio": r.ratio} for r in rows])
    return 0
