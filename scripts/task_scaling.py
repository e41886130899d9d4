"""Evaluate models trained for different step counts on all 20 tasks (maintainers).

    sparse-lens train --preset cpu --steps 1000 --out runs/scale-1000
    sparse-lens train --preset cpu --steps 2000 --out runs/scale-2000
    python scripts/task_scaling.py runs/scale-1000 runs/scale-2000 stdlib-sparse

Prints one row per model: steps, tokens, held-out loss (as training.json records it), mean task
loss over the 20 template tasks, and how many tasks reach loss <= 0.15 and accuracy >= 0.9 on
256 test-split pairs. It measures whether more training moves the task losses, which is what
the shipped models' 1/20 solved tasks would need.
"""

from __future__ import annotations

import argparse
import statistics

from sparse_lens.defaults import N_EVAL_PAIRS, TARGET_LOSS
from sparse_lens.io.checkpoint import ModelDir
from sparse_lens.tasks import evaluate_task, task_names


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+", help="run directories or shipped model names")
    parser.add_argument("--target-loss", type=float, default=TARGET_LOSS)
    args = parser.parse_args()

    print(
        "| model | steps | tokens | held-out loss | mean task loss "
        f"| tasks <= {args.target_loss:g} | acc >= 0.9 |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        located = ModelDir.resolve(name)
        training = located.provenance()
        model = located.load()
        rows = [evaluate_task(model, task, n_pairs=N_EVAL_PAIRS) for task in task_names()]
        losses = [r["loss"] for r in rows]
        solved = sum(loss <= args.target_loss for loss in losses)
        accurate = sum(r["accuracy"] >= 0.9 for r in rows)
        print(
            f"| {name} | {training['steps']} | {training['tokens_seen'] / 1e6:.1f}M | "
            f"{training['final_heldout_loss']:.3f} | {statistics.mean(losses):.3f} | "
            f"{solved}/{len(rows)} | {accurate}/{len(rows)} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
