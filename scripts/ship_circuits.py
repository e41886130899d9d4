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
import json
import sys
import time

from sparse_lens import SparseTransformer
from sparse_lens.circuits import Circuit, PruneConfig, mean_cache_for, prune_task, validate_circuit
from sparse_lens.data import load_corpus, stdlib_dir
from sparse_lens.errors import SparseLensError
from sparse_lens.pretrained import PRETRAINED_DIR
from sparse_lens.tasks import evaluate_natural, evaluate_task, task_names
from sparse_lens.tasks.natural import natural_tasks

N_EVAL_PAIRS = 256


def evaluate_all(model, directory) -> dict:
    path = directory / "eval.json"
    if path.is_file():
        return json.loads(path.read_text())
    templates = [evaluate_task(model, name, n_pairs=N_EVAL_PAIRS) for name in task_names()]
    heldout_files = [stdlib_dir() / d.name for d in load_corpus(None).heldout]
    natural = [evaluate_natural(model, name, heldout_files) for name in natural_tasks()]
    result = {"n_pairs": N_EVAL_PAIRS, "split": "test", "tasks": templates, "natural": natural}
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", help="shipped model name")
    parser.add_argument("--tasks-from", help="prune the tasks this shipped model solves")
    parser.add_argument("--tasks", nargs="*", help="prune exactly these tasks")
    parser.add_argument("--target-loss", type=float, default=0.15)
    parser.add_argument(
        "--steps",
        type=int,
        default=200,
        help="optimiser steps per search run (default 200; PruneConfig's 60 finds larger circuits)",
    )
    parser.add_argument("--no-shuffled", action="store_true", help="skip shuffled-label pruning")
    args = parser.parse_args()

    directory = PRETRAINED_DIR / args.model
    model = SparseTransformer.from_pretrained(args.model)
    evaluation = evaluate_all(model, directory)
    for row in evaluation["tasks"]:
        print(
            f"{row['task']:<28} loss {row['loss']:.4f} acc {row['accuracy']:.3f}", file=sys.stderr
        )
    source = (
        evaluate_all(
            SparseTransformer.from_pretrained(args.tasks_from), PRETRAINED_DIR / args.tasks_from
        )
        if args.tasks_from
        else evaluation
    )
    tasks = args.tasks or [r["task"] for r in source["tasks"] if r["loss"] <= args.target_loss]
    print(f"pruning {len(tasks)} tasks: {tasks}", file=sys.stderr)

    cache = mean_cache_for(model, None)  # user cache dir: too big to ship
    out = directory / "circuits"
    out.mkdir(exist_ok=True)
    config = PruneConfig(target_loss=args.target_loss, steps=args.steps)
    for task in tasks:
        path = out / f"{task}.json"
        start = time.perf_counter()
        circuit = None
        if path.is_file():
            try:
                circuit = Circuit.load(path, model)
            except SparseLensError:
                circuit = None
        if circuit is None:
            result = prune_task(model, task, config=config, cache=cache, model_id=args.model)
            if result.circuit is None:
                print(f"{task}: target missed (best {result.best_loss:.4f})", file=sys.stderr)
                (out / f"{task}.missed.json").write_text(
                    json.dumps(
                        {
                            "task": task,
                            "best_loss": result.best_loss,
                            "full_loss": result.full_loss,
                            "settings": config.to_dict(),
                        },
                        indent=2,
                    )
                )
                continue
            circuit = result.circuit
            circuit.save(path)
            (out / f"{task}.missed.json").unlink(missing_ok=True)  # an earlier pass's miss
        report_path = out / f"{task}.validation.json"
        if not report_path.is_file():
            report = validate_circuit(model, circuit, cache, shuffled=not args.no_shuffled)
            report_path.write_text(json.dumps(report, indent=2) + "\n")
        print(
            f"{task}: {circuit.n_nodes} nodes, {circuit.n_edges} edges, loss "
            f"{circuit.achieved_loss:.4f} ({time.perf_counter() - start:.0f} s)",
            file=sys.stderr,
        )


if __name__ == "__main__":
    main()
