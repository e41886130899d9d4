"""`sparse-lens report`: one offline HTML page about a task circuit.

A thin shell over :func:`sparse_lens.viz.write_report`. The circuit comes from ``--circuit``
(read with ``Circuit.load``, which refuses a circuit found on other weights), else from the
model's own ``circuits/<task>.json`` (as shipped models have), else it is pruned here with the
circuits package's defaults. The validation report is ``--validation``, else the
``<circuit>.validation.json`` beside the circuit file; either must describe this circuit (same
task, weights hash and node and edge counts). Held-out windows for the top-activating
snippets are the model's own held-out pretraining tokens (the ones its mean cache uses).
"""

from __future__ import annotations

import argparse

from sparse_lens.cli.options import add_tasks_dir


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="write a self-contained HTML report of a task circuit",
        description="Write one offline HTML page: circuit diagram, validation numbers, node "
        "activations on task prompts of both classes, attention patterns of the circuit's heads "
        "and each node's top-activating held-out snippets. Loads nothing from the network.",
    )
    parser.add_argument(
        "model", help="a model directory (config.json + model.safetensors) or shipped name"
    )
    parser.add_argument("--task", required=True, help="task name (see `sparse-lens tasks list`)")
    add_tasks_dir(parser)
    parser.add_argument(
        "--circuit", metavar="CIRCUIT.json", help="the circuit; default: prune one now"
    )
    parser.add_argument(
        "--validation", metavar="REPORT.json", help="a validation report to tabulate"
    )
    parser.add_argument(
        "--out", required=True, metavar="report.html", help="where to write the page"
    )
    parser.add_argument(
        "--examples", type=int, default=3, help="test-split pairs to show (default 3)"
    )
    parser.add_argument(
        "--heldout-windows",
        type=int,
        default=32,
        help="held-out pretraining windows searched for top activations (default 32; 0: skip)",
    )
    parser.add_argument("--top-k", type=int, default=5, help="snippets per node (default 5)")
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the example pairs and of pruning"
    )
    parser.set_defaults(func=run_report, _parser=parser)


def run_report(args: argparse.Namespace) -> int:
    if args.examples < 1 or args.heldout_windows < 0 or args.top_k < 1:
        args._parser.error("--examples and --top-k must be >= 1, --heldout-windows >= 0")

    from sparse_lens.io.checkpoint import ModelDir
    from sparse_lens.tasks import get_task
    from sparse_lens.viz import write_report

    task = get_task(args.task, args.tasks_dir)  # an unknown task fails before any work
    located = ModelDir.resolve(args.model)  # shipped names too: reuse the shipped mean cache
    model = located.load().eval()
    model_dir = located.path
    circuit_path = args.circuit or _own_circuit(located, task.name)
    circuit = (
        _load_circuit(circuit_path, model) if circuit_path else _prune(model, model_dir, task, args)
    )
    validation = args.validation or _beside(circuit_path)
    if validation is not None:
        _check_validation(validation, circuit)

    heldout = None
    if args.heldout_windows:
        from sparse_lens.circuits import pretraining_tokens

        n_tokens = args.heldout_windows * model.cfg.n_ctx
        heldout = pretraining_tokens(model, model_dir, n_tokens=n_tokens)[: args.heldout_windows]

    path = write_report(
        model,
        circuit,
        task,
        validation,
        out_path=args.out,
        examples=args.examples,
        heldout=heldout,
        top_k=args.top_k,
        seed=args.seed,
    )
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB, self-contained)")
    return 0


def _own_circuit(located, task: str):
    """The model directory's own circuit for ``task`` (shipped models carry them), if any."""
    path = located.circuits.circuit_file(task)
    return str(path) if path.is_file() else None


def _beside(circuit_path):
    """``<stem>.validation.json`` next to a circuit file, if it exists."""
    from pathlib import Path

    from sparse_lens.io.checkpoint import CircuitStore

    if not circuit_path:
        return None
    path = Path(circuit_path)
    path = CircuitStore(path.parent).validation_file(path.stem)
    return str(path) if path.is_file() else None


def _check_validation(path: str, circuit) -> None:
    """A validation report of another circuit must not be tabulated as this one's."""
    import json
    from pathlib import Path

    from sparse_lens.errors import SparseLensError

    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise SparseLensError(f"cannot read the validation report ({error})", path=path) from None
    if not isinstance(report, dict):
        raise SparseLensError("a validation report must hold a JSON object", path=path)
    expected = {
        "task": circuit.task,
        "weights_hash": circuit.weights_hash,
        "n_nodes": circuit.n_nodes,
        "n_edges": circuit.n_edges,
    }
    for key, value in expected.items():
        if key in report and report[key] != value:
            raise SparseLensError(
                f"belongs to another circuit ({report[key]!r} here, {value!r} in the circuit); "
                "validate this circuit with `sparse-lens validate`",
                path=path,
                field=key,
            )


def _load_circuit(path: str, model):
    from sparse_lens.circuits import Circuit

    return Circuit.load(path, model)


def _prune(model, model_dir, task, args: argparse.Namespace):
    """The circuits package's default pruning; a SparseLensError if no circuit meets the target."""
    from sparse_lens.circuits import PruneConfig, mean_cache_for, prune_task
    from sparse_lens.errors import SparseLensError

    cache = mean_cache_for(model, model_dir)
    result = prune_task(
        model, task, config=PruneConfig(seed=args.seed), cache=cache, model_id=str(args.model)
    )
    if result.circuit is None:
        raise SparseLensError(
            f"no circuit reaches the target loss (best {result.best_loss:.3f}, full model "
            f"{result.full_loss:.3f}); prune with other settings and pass --circuit",
            field="task",
        )
    return result.circuit
