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
import json
import math

from sparse_lens.circuits.compare import CompareRow, geometric_mean_ratio
from sparse_lens.pretrained import PRETRAINED_DIR


def _load(model: str) -> tuple[dict, dict, dict]:
    directory = PRETRAINED_DIR / model
    evaluation = json.loads((directory / "eval.json").read_text())
    tasks = {row["task"]: row for row in evaluation["tasks"]}
    natural = {row["task"]: row for row in evaluation.get("natural", [])}
    circuits = {}
    for path in sorted((directory / "circuits").glob("*.json")):
        if path.name.endswith(".validation.json"):
            continue
        record = json.loads(path.read_text())
        record["missed"] = path.name.endswith(".missed.json")
        circuits[record["task"]] = record
    return tasks, natural, circuits


def _geomean(values: list[int]) -> float | None:
    if not values:
        return None
    return math.exp(sum(math.log(max(v, 1)) for v in values) / len(values))


def _full(row: dict, target: float) -> str:
    """Full-model task loss and accuracy; bold where the full model meets the target."""
    mark = "**" if row["loss"] <= target else ""
    return f"{mark}{row['loss']:.3f}{mark} / {row['accuracy']:.2f}"


def _circuit(circuit: dict | None) -> str:
    if circuit is None:
        return "not pruned"
    if circuit["missed"]:
        return f"missed (best {circuit['best_loss']:.3f})"
    return f"{circuit['n_nodes']}, {circuit['n_edges']} ({circuit['achieved_loss']:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sparse", default="stdlib-sparse")
    parser.add_argument("--dense", default="stdlib-dense")
    parser.add_argument("--target-loss", type=float, default=0.15)
    args = parser.parse_args()

    s_tasks, s_natural, s_circuits = _load(args.sparse)
    d_tasks, d_natural, d_circuits = _load(args.dense)
    print(
        "| task | sparse loss / acc | dense loss / acc | sparse circuit: nodes, edges (loss) "
        "| dense circuit: nodes, edges (loss) | dense / sparse edges |"
    )
    print("|---|---|---|---|---|---|")
    rows = []
    for task in sorted(s_tasks):
        s, d = s_tasks[task], d_tasks[task]
        sc, dc = s_circuits.get(task), d_circuits.get(task)
        found_s = sc if sc and not sc["missed"] else None
        found_d = dc if dc and not dc["missed"] else None
        row = CompareRow(
            task,
            found_s and found_s["n_edges"],
            found_d and found_d["n_edges"],
            found_s and found_s["n_nodes"],
            found_d and found_d["n_nodes"],
            found_s["achieved_loss"] if found_s else float("nan"),
            found_d["achieved_loss"] if found_d else float("nan"),
        )
        rows.append(row)
        print(
            f"| {task} | {_full(s, args.target_loss)} | {_full(d, args.target_loss)} "
            f"| {_circuit(sc)} | {_circuit(dc)} | "
            f"{'-' if row.ratio is None else f'{row.ratio:.1f}x'} |"
        )
    both = [r for r in rows if r.ratio is not None]
    solved_s = sum(1 for r in s_tasks.values() if r["loss"] <= args.target_loss)
    solved_d = sum(1 for r in d_tasks.values() if r["loss"] <= args.target_loss)
    print()
    print(
        f"full model at task loss <= {args.target_loss}: sparse {solved_s}/20, dense {solved_d}/20"
    )
    for name, records in (("sparse", s_circuits), ("dense", d_circuits)):
        met = sum(1 for r in records.values() if not r["missed"])
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
    for name, natural in (("sparse", s_natural), ("dense", d_natural)):
        for task, row in sorted(natural.items()):
            print(
                f"natural-code {task} ({name}, {row['n_prompts']} instances mined from the "
                f"held-out stdlib files): loss {row['loss']:.3f}, accuracy {row['accuracy']:.3f}"
            )


if __name__ == "__main__":
    main()
