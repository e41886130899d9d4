"""Notebook views: objects that Jupyter displays, built from the same panels as the report.

Each view holds finished, offline HTML (see :mod:`.offline`): circuitsvis's own ``_repr_html_``
probes google.com and then loads the library from unpkg, which a notebook run offline or in
CI must not do. Every view can also ``save(path)`` itself as a standalone page.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from html import escape
from pathlib import Path
from typing import Any

from sparse_lens.io.atomic import write_text
from sparse_lens.viz.circuit_data import circuit_data
from sparse_lens.viz.graph import HOVER_CSS, HOVER_SCRIPT, circuit_svg
from sparse_lens.viz.offline import CSP
from sparse_lens.viz.panels import activation_parts, assemble, head_parts, prompt_rows

PAGE_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #111827; margin: 24px; }
.prompt { margin: 8px 0 18px; }
.prompt-label { font-size: 13px; color: #374151; margin: 4px 0; white-space: pre-wrap; font-family: ui-monospace, monospace; }
.circuit-box { overflow-x: auto; }
"""


class HTMLView:
    """Offline HTML that Jupyter renders (``_repr_html_``) and that saves as a page."""

    def __init__(self, html: str, title: str = "sparse-lens"):
        self.html = html
        self.title = title

    def _repr_html_(self) -> str:
        return self.html

    def page(self) -> str:
        """A complete standalone page (offline, and forbidden to load anything: see CSP)."""
        return (
            '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
            f"<title>{escape(self.title)}</title>"
            f"<style>{PAGE_CSS}</style></head><body>\n{self.html}\n</body></html>\n"
        )

    def save(self, path: str | Path) -> Path:
        return write_text(path, self.page())


class CircuitView(HTMLView):
    """The circuit diagram: HTML (with hover highlighting) or plain SVG."""

    def __init__(self, svg: str, html: str, title: str):
        super().__init__(html, title)
        self.svg = svg

    def _repr_svg_(self) -> str:
        return self.svg


def _ids() -> str:
    return "cv-" + uuid.uuid4().hex[:10]  # unique across the outputs of one notebook


def show_circuit(
    circuit: Any, model: Any = None, node_notes: dict[str, str] | None = None
) -> CircuitView:
    """The circuit diagram of ``circuit`` (a Circuit, its dict or its JSON path).

    ``model`` adds node descriptions and groups q/k/v channels by head.
    """
    data = circuit_data(circuit)
    inline = circuit_svg(data, model=model, node_notes=node_notes, standalone=False)
    html = (
        f'<div class="circuit-box"><style>{HOVER_CSS}</style>{inline}'
        f"<script>{HOVER_SCRIPT}</script></div>"
    )
    return CircuitView(
        circuit_svg(data, model=model, node_notes=node_notes), html, data.task or "circuit"
    )


def show_node_activations(model: Any, circuit: Any, prompts: Any) -> HTMLView:
    """Each prompt's tokens coloured by the activation of each circuit node (full model).

    ``prompts``: a string, a list of strings, a [batch, pos] token tensor or a TaskBatch.
    """
    data = circuit_data(circuit)
    rows = prompt_rows(model, prompts)
    labels = [
        repr(model.to_string(row)) if model.tokenizer is not None else f"prompt {i}"
        for i, row in enumerate(rows)
    ]
    return HTMLView(
        assemble(activation_parts(model, data, rows, labels), _ids()), "node activations"
    )


def show_head_patterns(
    model: Any, prompt: Any, heads: Sequence[tuple[int, int]] | None = None
) -> HTMLView:
    """Attention patterns of ``heads`` ((layer, head) pairs; default: every head) on one prompt."""
    rows = prompt_rows(model, prompt)
    if heads is None:
        heads = [
            (layer, head)
            for layer in range(model.cfg.n_layers)
            for head in range(model.cfg.n_heads)
        ]
    parts = []
    for row in rows:
        label = repr(model.to_string(row)) if model.tokenizer is not None else None
        parts += head_parts(model, row, list(heads), label)
    return HTMLView(assemble(parts, _ids()), "attention patterns")
