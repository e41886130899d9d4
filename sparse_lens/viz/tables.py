"""The report's number tables: what the circuit is, and whether it is real.

The validation table follows the validation report's JSON contract (sparse_lens.circuits):
top-level keys are the circuit's own ablation mode, ``by_ablation`` repeats them per mode. One
column per mode, because a circuit found under mean ablation whose sufficiency collapses under
zero ablation leans on the mean values, which is worth seeing side by side. Lists (one loss per
random node set) are shown as mean +- std with their range. Keys this module does not know are
still shown, so a newer report never loses numbers in an older viewer.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from html import escape
from typing import Any

from sparse_lens.viz.circuit_data import CircuitData

SUMMARY_KEYS = (
    "task",
    "n_nodes",
    "n_edges",
    "target_loss",
    "achieved_loss",
    "target_met",
    "calibrated_loss",
    "ablation",
    "model_id",
    "split",
    "seed",
)
VALIDATION_ROWS = (
    ("full_loss", "full model", "task loss with nothing ablated"),
    (
        "circuit_only_loss",
        "circuit only",
        "every other node ablated (sufficiency: stays near the target)",
    ),
    (
        "circuit_ablated_loss",
        "circuit ablated",
        "only the circuit's nodes ablated (necessity: rises)",
    ),
    (
        "random_circuit_only_loss",
        "random sets only",
        "random node sets of the same size and types kept (control)",
    ),
    (
        "random_ablated_loss",
        "random sets ablated",
        "random node sets of the same size and types ablated (control)",
    ),
    (
        "shuffled_label_circuit_edges",
        "shuffled labels: edges",
        "circuit size when pruning a task with no signal (control)",
    ),
    ("shuffled_label_circuit_nodes", "shuffled labels: nodes", "its node count"),
    ("shuffled_label_loss", "shuffled labels: best loss", "the best loss pruning reached on it"),
    (
        "shuffled_label_target_met",
        "shuffled labels: target met",
        "whether nonsense reached the target",
    ),
)
# described elsewhere on the page (the circuit summary) or in the line under the table
_CONTEXT_KEYS = (
    "task",
    "weights_hash",
    "ablation",
    "n_nodes",
    "n_edges",
    "target_loss",
    "by_ablation",
)
_META_KEYS = ("n_prompts", "split", "n_random", "random_match", "seed")


def fmt(value: Any) -> str:
    if value is None:
        return "&mdash;"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.4f}"
    return escape(str(value))


def stat_cell(value: Any) -> str:
    """A number as is; a list of numbers as mean +- std, range and count."""
    if not isinstance(value, (list, tuple)):
        return fmt(value)
    nums = [float(v) for v in value if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if not nums:
        return "&mdash;"
    mean = sum(nums) / len(nums)
    std = math.sqrt(sum((x - mean) ** 2 for x in nums) / max(len(nums) - 1, 1))
    return (
        f"{mean:.4f} &plusmn; {std:.4f} "
        f'<span class="range">(min {min(nums):.4f}, max {max(nums):.4f}, n={len(nums)})</span>'
    )


def summary_html(data: CircuitData) -> str:
    """The circuit's own numbers (size, target and achieved loss, how it was found)."""
    values = {key: data.meta[key] for key in SUMMARY_KEYS if key in data.meta}
    values.setdefault("n_nodes", len(data.nodes))
    values.setdefault("n_edges", len(data.edges))
    rows = "".join(
        f'<tr><th>{key}</th><td class="num" data-key="{key}">{fmt(value)}</td></tr>'
        for key, value in values.items()
        if not isinstance(value, (dict, list))
    )
    return f'<table class="numbers summary"><tbody>{rows}</tbody></table>'


def validation_html(validation: Mapping[str, Any] | None, data: CircuitData) -> str:
    """The validation report as a table, one column per ablation mode (own mode first)."""
    if validation is None:
        return (
            '<p class="note">No validation report given (pass <code>validation=</code> / '
            "<code>--validation</code>).</p>"
        )
    own = str(validation.get("ablation") or data.meta.get("ablation") or "circuit's")
    modes: dict[str, Mapping[str, Any]] = {own: validation}
    for mode, entry in (validation.get("by_ablation") or {}).items():
        if mode != own and isinstance(entry, Mapping):
            modes[str(mode)] = {"full_loss": validation.get("full_loss"), **entry}

    known = [row for row in VALIDATION_ROWS if any(row[0] in entry for entry in modes.values())]
    skip = {key for key, _, _ in VALIDATION_ROWS} | set(_CONTEXT_KEYS) | set(_META_KEYS)
    extra = [
        (key, escape(key), "")
        for key, value in validation.items()
        if key not in skip and not isinstance(value, Mapping)
    ]
    head = "".join(
        f"<th>{escape(mode)} ablation{' (the circuit&#x27;s)' if mode == own and len(modes) > 1 else ''}</th>"
        for mode in modes
    )
    rows = []
    for key, label, meaning in known + extra:
        cells = "".join(
            f'<td class="num" data-key="{escape(key)}"'
            + ("" if mode == own else f' data-mode="{escape(mode)}"')
            + f">{stat_cell(entry.get(key))}</td>"
            for mode, entry in modes.items()
        )
        rows.append(f"<tr><th>{label}</th>{cells}<td>{escape(meaning)}</td></tr>")
    return (
        f'<table class="numbers validation"><thead><tr><th>measurement</th>{head}'
        f"<th>what it tests</th></tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"{_validation_note(validation, data)}"
    )


def _validation_note(validation: Mapping[str, Any], data: CircuitData) -> str:
    parts = []
    if "n_prompts" in validation:
        split = f" ({escape(str(validation['split']))} split)" if "split" in validation else ""
        parts.append(f"Losses on {fmt(validation['n_prompts'])} prompts{split}.")
    if "n_random" in validation:
        match = validation.get("random_match")
        parts.append(
            f"{fmt(validation['n_random'])} random node sets"
            + (f" matched by {escape(str(match))}" if match else "")
            + "."
        )
    if "shuffled_label_circuit_edges" in validation:
        parts.append(
            f"The circuit itself has {len(data.edges)} edges; pruning on shuffled labels should "
            "need many more, or fail."
        )
    return f'<p class="note">{" ".join(parts)}</p>' if parts else ""
