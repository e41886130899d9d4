"""Looking at circuits: a diagram, notebook views and one offline HTML report.

    >>> from sparse_lens.viz import show_circuit, show_node_activations, write_report
    >>> show_circuit(circuit, model)                       # SVG diagram (hover for names/weights)
    >>> show_node_activations(model, circuit, ["print('hi"])
    >>> show_head_patterns(model, "x = 1", heads=[(1, 0)])
    >>> plot_training_curves("runs/tiny/metrics.jsonl")    # a matplotlib Figure
    >>> write_report(model, circuit, validation=report, out_path="quote.html", heldout=windows)

Everything works offline and never fetches: circuitsvis is used through its inlined bundle
(:mod:`.offline`), never its CDN mode. Modules: :mod:`.circuit_data` (reading a circuit),
:mod:`.graph` (SVG diagram), :mod:`.activations` (what nodes do), :mod:`.panels` (shared HTML
parts), :mod:`.inline` (notebook views), :mod:`.tables` (circuit and validation numbers),
:mod:`.report` (the page), :mod:`.curves` (training curves; needs matplotlib, imported on first
use).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from sparse_lens.viz.circuit_data import CircuitData, circuit_data
from sparse_lens.viz.graph import circuit_svg
from sparse_lens.viz.inline import (
    CircuitView,
    HTMLView,
    show_circuit,
    show_head_patterns,
    show_node_activations,
)
from sparse_lens.viz.offline import external_references
from sparse_lens.viz.report import render_report, write_report

if TYPE_CHECKING:
    from sparse_lens.viz.curves import plot_training_curves, read_metrics

__all__ = [
    "CircuitData",
    "CircuitView",
    "HTMLView",
    "circuit_data",
    "circuit_svg",
    "external_references",
    "plot_training_curves",
    "read_metrics",
    "render_report",
    "show_circuit",
    "show_head_patterns",
    "show_node_activations",
    "write_report",
]


def __getattr__(name: str):
    if name in ("plot_training_curves", "read_metrics"):  # matplotlib is an optional dependency
        from sparse_lens.viz import curves

        return getattr(curves, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
