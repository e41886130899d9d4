"""Evaluate a shipped model on every task and ship its task circuits (maintainers).

    python scripts/ship_circuits.py stdlib-sparse                  # tasks the model solves
    python scripts/ship_circuits.py stdlib-dense --tasks-from stdlib-sparse
    python scripts/ship_circuits.py stdlib-sparse --tasks single_double_quote indent_for ...

The shipped circuits were made with ``--tasks`` naming all 20 tasks, for both models (pruning
can meet the target on tasks the full model misses). Writes into
sparse_lens/pretrained/<model>/: eval.json (all 20 template tasks on the test split, and the
natural-code versions mined from the held-out stdlib files), and for each pruned task either
circuits/<task>.json with circuits/<task>.validation.json (mean and zero ablation, 20 random
node sets, shuffled-label pruning) or circuits/<task>.missed.json (best loss reached).
Resumable: a circuit whose file exists and matches the weights is kept; a task recorded as
missed is pruned again. Without ``--tasks``, the tasks whose full-model loss meets the target
are pruned (``--tasks-from MODEL``: the tasks MODEL solves).
"""

from __future__ import annotations

import argparse
import sys
import time

from sparse_lens.circuits import Circuit, PruneConfig, mean_cache_for, prune_task, validate_circuit
from sparse_lens.data import load_corpus, stdlib_dir
from sparse_lens.defaults import N_EVAL_PAIRS, SHIPPED_PRUNE_STEPS, TARGET_LOSS
from sparse_lens.errors import SparseLensError
from sparse_lens.io.checkpoint import CircuitStore, ModelDir
from sparse_lens.io.records import MissedTarget, ModelEval
from sparse_lens.tasks import evaluate_natural, evaluate_task, task_names
from sparse_lens.tasks.natural import natural_tasks


def evaluate_all(model, store: CircuitStore) -> ModelEval:
    """The store's eval.json, made first if it is missing."""
    evaluation = store.evaluation()
    if evaluation is not None:
        return evaluation
    templates = [evaluate_task(model, name, n_pairs=N_EVAL_PAIRS) for name in task_names()]
    heldout_files = [stdlib_dir() / d.name for d in load_corpus(None).heldout]
    natural = [evaluate_natural(model, name, heldout_files) for name in natural_tasks()]
    evaluation = ModelEval.from_dict(
        {"n_pairs": N_EVAL_PAIRS, "split": "test", "tasks": templates, "natural": natural}
    )
    store.save_eval(evaluation)
    return evaluation


def saved_circuit(store: CircuitStore, task: str, model) -> Circuit | None:
    """The stored circuit for ``task`` if it belongs to these weights."""
    try:
        return Circuit.load(store.circuit_file(task), model)
    except SparseLensError:
        return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="shipped model name")
    parser.add_argument("--tasks-from", help="prune the tasks this shipped model solves")
    parser.add_argument("--tasks", nargs="*", help="prune exactly these tasks")
    parser.add_argument("--target-loss", type=float, default=TARGET_LOSS)
    parser.add_argument(
        "--steps",
        type=int,
        default=SHIPPED_PRUNE_STEPS,
        help=f"optimiser steps per search run (default {SHIPPED_PRUNE_STEPS}; PruneConfig's "
        f"{PruneConfig.steps} finds larger circuits)",
    )
    parser.add_argument("--no-shuffled", action="store_true", help="skip shuffled-label pruning")
    args = parser.parse_args()

    located = ModelDir.resolve(args.model)
    model = located.load()
    store = located.circuits
    evaluation = evaluate_all(model, store)
    for row in evaluation.tasks:
        print(f"{row.task:<28} loss {row.loss:.4f} acc {row.accuracy:.3f}", file=sys.stderr)
    if args.tasks_from:
        other = ModelDir.resolve(args.tasks_from)
        evaluation = evaluate_all(other.load(), other.circuits)
    tasks = args.tasks or evaluation.solved(args.target_loss)
    print(f"pruning {len(tasks)} tasks: {tasks}", file=sys.stderr)

    cache = mean_cache_for(model, None)  # user cache dir: too big to ship
    config = PruneConfig(target_loss=args.target_loss, steps=args.steps)
    for task in tasks:
        start = time.perf_counter()
        circuit = saved_circuit(store, task, model)
        if circuit is None:
            result = prune_task(model, task, config=config, cache=cache, model_id=args.model)
            if result.circuit is None:
                print(f"{task}: target missed (best {result.best_loss:.4f})", file=sys.stderr)
                store.save_missed(
                    MissedTarget(task, result.best_loss, result.full_loss, config.to_dict())
                )
                continue
            circuit = result.circuit
            store.save_circuit(circuit)
        if store.validation(task) is None:
            report = validate_circuit(model, circuit, cache, shuffled=not args.no_shuffled)
            store.save_validation(task, report)
        print(
            f"{task}: {circuit.n_nodes} nodes, {circuit.n_edges} edges, loss "
            f"{circuit.achieved_loss:.4f} ({time.perf_counter() - start:.0f} s)",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
