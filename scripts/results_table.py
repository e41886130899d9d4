"""Print the README's results table from the files shipped with the two models (maintainers).

    python scripts/results_table.py [--sparse stdlib-sparse] [--dense stdlib-dense]

Reads each model's eval.json (full-model task loss and accuracy on the test split) and its
circuits/<task>.json (pruned circuits meeting the target under mean ablation), and prints one
Markdown row per task plus the geometric means of edges and their ratio, computed with
:func:`sparse_lens.circuits.compare.geometric_mean_ratio` as ``sparse-lens compare`` does.
Nothing is recomputed here; tests/test_shipped.py recomputes the numbers this table reads.
"""

from __future__ import annotations

import argparse
import math

from sparse_lens.circuits import Circuit
from sparse_lens.circuits.compare import CompareRow, geometric_mean_ratio
from sparse_lens.defaults import TARGET_LOSS
from sparse_lens.io.checkpoint import ModelDir
from sparse_lens.io.records import MissedTarget, ModelEval


def _load(model: str) -> tuple[ModelEval, dict[str, Circuit | MissedTarget]]:
    store = ModelDir.resolve(model).circuits
    results: dict[str, Circuit | MissedTarget] = {
        task: Circuit.load(store.circuit_file(task)) for task in store.circuit_tasks()
    }
    results.update({task: store.missed(task) for task in store.missed_tasks()})
    return store.evaluation(), results


def _geomean(values: list[int]) -> float | None:
    if not values:
        return None
    return math.exp(sum(math.log(max(v, 1)) for v in values) / len(values))


def _full(row, target: float) -> str:
    """Full-model task loss and accuracy; bold where the full model meets the target."""
    mark = "**" if row.loss <= target else ""
    return f"{mark}{row.loss:.3f}{mark} / {row.accuracy:.2f}"


def _circuit(result: Circuit | MissedTarget | None) -> str:
    if result is None:
        return "not pruned"
    if isinstance(result, MissedTarget):
        return f"missed (best {result.best_loss:.3f})"
    return f"{result.n_nodes}, {result.n_edges} ({result.achieved_loss:.3f})"


def _found(result: Circuit | MissedTarget | None) -> Circuit | None:
    return result if isinstance(result, Circuit) else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparse", default="stdlib-sparse")
    parser.add_argument("--dense", default="stdlib-dense")
    parser.add_argument("--target-loss", type=float, default=TARGET_LOSS)
    args = parser.parse_args()

    s_eval, s_circuits = _load(args.sparse)
    d_eval, d_circuits = _load(args.dense)
    print(
        "| task | sparse loss / acc | dense loss / acc | sparse circuit: nodes, edges (loss) "
        "| dense circuit: nodes, edges (loss) | dense / sparse edges |"
    )
    print("|---|---|---|---|---|---|")
    rows = []
    for task in sorted(row.task for row in s_eval.tasks):
        s, d = s_eval.task(task), d_eval.task(task)
        sc, dc = s_circuits.get(task), d_circuits.get(task)
        found_s, found_d = _found(sc), _found(dc)
        row = CompareRow(
            task,
            found_s and found_s.n_edges,
            found_d and found_d.n_edges,
            found_s and found_s.n_nodes,
            found_d and found_d.n_nodes,
            found_s.achieved_loss if found_s else float("nan"),
            found_d.achieved_loss if found_d else float("nan"),
        )
        rows.append(row)
        print(
            f"| {task} | {_full(s, args.target_loss)} | {_full(d, args.target_loss)} "
            f"| {_circuit(sc)} | {_circuit(dc)} | "
            f"{'-' if row.ratio is None else f'{row.ratio:.1f}x'} |"
        )
    both = [r for r in rows if r.ratio is not None]
    solved_s = len(s_eval.solved(args.target_loss))
    solved_d = len(d_eval.solved(args.target_loss))
    print()
    print(
        f"full model at task loss <= {args.target_loss}: sparse {solved_s}/20, dense {solved_d}/20"
    )
    for name, records in (("sparse", s_circuits), ("dense", d_circuits)):
        met = sum(1 for r in records.values() if _found(r) is not None)
        print(f"{name}: {len(records)} tasks pruned, {met} circuits meet the target")
    print(f"both models have a circuit for {len(both)} tasks")
    gs = _geomean([r.sparse_edges for r in both])
    gd = _geomean([r.dense_edges for r in both])
    ratio = geometric_mean_ratio(rows)
    if ratio is not None:
        print(
            f"geometric mean of edges over the {len(both)} tasks both met: sparse {gs:.1f}, "
            f"dense {gd:.1f}, ratio {ratio:.2f}x (paper: about 16x)"
        )
    for name, evaluation in (("sparse", s_eval), ("dense", d_eval)):
        for row in sorted(evaluation.natural, key=lambda r: r.task):
            print(
                f"natural-code {row.task} ({name}, {row.n_prompts} instances mined from the "
                f"held-out stdlib files): loss {row.loss:.3f}, accuracy {row.accuracy:.3f}"
            )


if __name__ == "__main__":
    main()
