"""Training curves from a run's ``metrics.jsonl``: losses against tokens, L0 on a second axis.

The trainer appends two kinds of lines: training steps (``loss``, ``l0``, ``tokens``, ``step``)
and held-out evaluations (``heldout_loss``, ``tokens``, ``step``). Both are plotted against
tokens seen (steps when a line has no ``tokens``), so runs with different batch sizes compare.
L0 (the fraction of weights kept) is annealed during training; it shares the x axis because
loss plateaus and bumps usually line up with its schedule.

A bare ``matplotlib.figure.Figure`` is returned (no pyplot): nothing global changes, nothing is
shown twice in a notebook, and it works headless.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from sparse_lens.errors import SparseLensError
from sparse_lens.io.checkpoint import METRICS_FILE


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl (a directory means its metrics.jsonl); skips torn lines."""
    path = Path(path)
    if path.is_dir():
        path = path / METRICS_FILE
    if not path.is_file():
        raise SparseLensError("metrics file not found", path=path)
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
        if isinstance(record, dict):
            records.append(record)
    return records


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _series(records: Sequence[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
    xs, ys = [], []
    for record in records:
        y = _number(record.get(key))
        x = _number(record.get("tokens", record.get("step")))
        if y is not None and x is not None:
            xs.append(x)
            ys.append(y)
    return xs, ys


def plot_training_curves(
    metrics: str | Path | Sequence[Mapping[str, Any]], title: str | None = None, log_x: bool = False
) -> Figure:
    """Train and held-out loss vs tokens, and L0 on the right axis (see the module docstring).

    ``metrics``: a metrics.jsonl path, a run directory, or the records as a list of dicts.
    """
    records = read_metrics(metrics) if isinstance(metrics, (str, Path)) else list(metrics)
    uses_tokens = any(_number(r.get("tokens")) is not None for r in records)
    train = _series(records, "loss")
    heldout = _series(records, "heldout_loss")
    l0 = _series(records, "l0")
    if not train[0] and not heldout[0]:
        raise SparseLensError("no 'loss' or 'heldout_loss' values in the metrics", field="metrics")

    fig = Figure(figsize=(8, 4.5), layout="constrained")
    ax = fig.add_subplot()
    if train[0]:
        ax.plot(*train, color="#2563eb", linewidth=1.2, label="train loss")
    if heldout[0]:
        ax.plot(
            *heldout,
            color="#ea580c",
            marker="o",
            markersize=3.5,
            linewidth=1.5,
            label="held-out loss",
        )
    ax.set_xlabel("tokens" if uses_tokens else "step")
    ax.set_ylabel("loss (nats / token)")
    ax.grid(alpha=0.3)
    if log_x:
        ax.set_xscale("log")
    handles, labels = ax.get_legend_handles_labels()
    if l0[0]:
        ax_l0 = ax.twinx()
        ax_l0.plot(
            *l0,
            color="#6b7280",
            linestyle="--",
            linewidth=1.2,
            label="L0 (fraction of weights kept)",
        )
        ax_l0.set_ylabel("L0 (fraction of weights kept)")
        ax_l0.set_ylim(bottom=0)
        more = ax_l0.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    ax.legend(handles, labels, loc="upper right")
    ax.set_title(title or "training curves")
    return fig
