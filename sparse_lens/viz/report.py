"""The circuit report: one self-contained HTML page that works offline.

It gathers everything needed to read a circuit: the numbers (circuit size, losses, validation
controls), the diagram, each node's activation on task prompts of both classes, the attention
patterns of the circuit's heads and each node's top-activating held-out snippets.

Self-contained and silent by construction: the circuitsvis bundle is inlined once
(:mod:`.offline`), the diagram is inline SVG, styles are inline, and a Content-Security-Policy
forbids the browser from loading anything at all, so even a future circuitsvis that tried to
fetch would be stopped. :func:`~.offline.external_references` re-checks the finished page
before it is written. Output is deterministic: no timestamps, element ids numbered in order.
"""

from __future__ import annotations

import json
from html import escape
from pathlib import Path
from typing import Any

from jaxtyping import Int
from torch import Tensor

import sparse_lens
from sparse_lens.errors import SparseLensError
from sparse_lens.io.atomic import write_text
from sparse_lens.viz.activations import check_circuit, str_tokens, top_activating
from sparse_lens.viz.circuit_data import CircuitData, circuit_data, circuit_dict
from sparse_lens.viz.graph import HOVER_CSS, HOVER_SCRIPT, circuit_svg
from sparse_lens.viz.offline import CSP, bundle_script, external_references
from sparse_lens.viz.panels import (
    Part,
    activation_bounds,
    activation_parts,
    assemble,
    batch_activations,
    class_means,
    class_table,
    head_parts,
    prompt_rows,
    row_activations,
    snippet_html,
)
from sparse_lens.viz.tables import summary_html, validation_html

REPORT_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; color: #111827; margin: 0; background: #fff; }
header { padding: 20px 32px 8px; border-bottom: 1px solid #e5e7eb; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 4px 0; color: #4b5563; }
nav { padding: 8px 32px; background: #f9fafb; border-bottom: 1px solid #e5e7eb; font-size: 14px; }
nav a { margin-right: 18px; color: #1d4ed8; text-decoration: none; }
section { padding: 12px 32px 20px; border-bottom: 1px solid #f3f4f6; }
h2 { font-size: 18px; margin: 12px 0 8px; }
h3 { font-size: 15px; margin: 14px 0 6px; }
h4 { font-size: 13px; margin: 10px 0 4px; }
p.note { color: #4b5563; font-size: 13px; max-width: 60em; }
table.numbers { border-collapse: collapse; font-size: 13px; margin: 6px 0 12px; }
table.numbers th, table.numbers td { border: 1px solid #e5e7eb; padding: 4px 10px; text-align: left; }
table.numbers th { background: #f9fafb; }
table.numbers td.num { text-align: right; font-family: ui-monospace, monospace; }
.circuit-box { overflow-x: auto; border: 1px solid #e5e7eb; border-radius: 6px; display: inline-block; max-width: 100%; }
.prompt { margin: 8px 0 18px; }
.prompt-label { font-size: 12px; color: #374151; margin: 4px 0; white-space: pre-wrap; font-family: ui-monospace, monospace; }
.snippet-grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(440px, 1fr)); gap: 4px 24px; }
.node-snippets ol { margin: 0; padding-left: 22px; }
pre.snippet { margin: 2px 0 8px; padding: 4px 6px; background: #f9fafb; border-radius: 4px; font-size: 12px; white-space: pre-wrap; word-break: break-all; }
pre.snippet .peak { outline: 2px solid #111827; border-radius: 2px; }
.snippet-value { font-family: ui-monospace, monospace; font-weight: bold; font-size: 12px; }
.snippet-where { color: #6b7280; font-size: 11px; }
/* circuitsvis pads ColoredTokensMulti by 20px per node to make room for its hover table; the
   table overlays the next prompt just as well, and long circuits stay readable */
.cv-vis[data-component="ColoredTokensMulti"] > div { padding-bottom: 8px !important; }
footer { padding: 12px 32px 24px; color: #6b7280; font-size: 12px; }
"""


def _json_like(value: Any, what: str) -> dict[str, Any]:
    if isinstance(value, (str, Path)):
        path = Path(value)
        if not path.is_file():
            raise SparseLensError(f"{what} file not found", path=path)
        try:
            value = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise SparseLensError(f"not a JSON {what} file ({error})", path=path) from None
        if not isinstance(value, dict):
            raise SparseLensError(f"a {what} file holds one JSON object", path=path)
        return value
    return circuit_dict(value)


def _prompt_label(model: Any, row: list[int], i: int) -> str:
    return (
        repr(model.to_string(row))
        if getattr(model, "tokenizer", None) is not None
        else f"prompt {i}"
    )


def _example_batch(model: Any, task: Any, examples: int, seed: int) -> Any:
    """``examples`` test-split pairs of ``task`` (a name or Task), tokenised by the model."""
    from sparse_lens.tasks import generate_pairs, get_task, make_batch

    if getattr(model, "tokenizer", None) is None:
        raise SparseLensError(
            "this model has no tokenizer, so task examples cannot be built; pass examples as tokens",
            field="examples",
        )
    spec = get_task(task) if isinstance(task, str) else task
    pairs = generate_pairs(spec, examples, seed=seed, split="test", tokenizer=model.tokenizer)
    return make_batch(pairs, n_ctx=model.cfg.n_ctx)


def _examples(model: Any, task: Any, examples: Any, seed: int) -> tuple[list[list[int]], Any]:
    """(token rows, TaskBatch or None): the prompts the report shows, with classes if a batch."""
    if isinstance(examples, int):
        if task is None:
            raise SparseLensError(
                "give a task (or examples) so the report can show task prompts", field="task"
            )
        examples = _example_batch(model, task, examples, seed)
    batch = examples if hasattr(examples, "label") and hasattr(examples, "last_pos") else None
    return prompt_rows(model, examples), batch


def _activation_section(
    model: Any, data: CircuitData, rows: list[list[int]], batch: Any
) -> tuple[list[Part], dict[str, tuple[float, float]], list[tuple[list[int], str]]]:
    """Activation parts (by class for a task batch), class means, and prompts for attention."""
    labels = [_prompt_label(model, row, i) for i, row in enumerate(rows)]
    if batch is None:
        acts = row_activations(model, data, rows)
        bounds = activation_bounds(acts, len(data.nodes))
        parts = activation_parts(model, data, rows, labels, bounds, acts)
        return parts, {}, list(zip(rows[:2], labels[:2], strict=True))

    acts = batch_activations(model, data, batch)
    bounds = activation_bounds(acts, len(data.nodes))  # one colour scale for both classes
    answers = tuple(str_tokens(model, batch.answer_ids[0].tolist()))
    means = class_means(data, acts, batch.label.tolist())
    parts: list[Part] = ["<h3>Mean activation at the scored position, per class</h3>"]
    parts.append(class_table(data, means, answers))
    attention_rows = []
    for cls, name in ((0, "A"), (1, "B")):
        picked = [i for i in range(len(rows)) if int(batch.label[i]) == cls]
        parts.append(f"<h3>Class {name}: correct answer {escape(repr(answers[cls]))}</h3>")
        parts += activation_parts(
            model,
            data,
            [rows[i] for i in picked],
            [labels[i] for i in picked],
            bounds,
            [acts[i] for i in picked],
        )
        attention_rows += [(rows[i], f"class {name}: {labels[i]}") for i in picked[:1]]
    return parts, means, attention_rows


def _attention_section(
    model: Any, data: CircuitData, prompts: list[tuple[list[int], str]]
) -> list[Part]:
    heads = data.heads(model.cfg.d_head)
    if not heads:
        return [
            '<p class="note">The circuit has no q, k or v nodes, so no attention head is part of it.</p>'
        ]
    parts: list[Part] = []
    for row, label in prompts:
        parts += head_parts(model, row, heads, label)
    return parts


def _top_section(model: Any, data: CircuitData, heldout: Tensor | None, top_k: int) -> str:
    if heldout is None:
        note = "No held-out windows given (pass <code>heldout=</code> / <code>--heldout-windows</code>)."
        return f'<p class="note">{note}</p>'
    snippets = top_activating(model, data, heldout, k=top_k)
    note = (
        f"Each node's {top_k} held-out windows (of {heldout.shape[0]}, {heldout.shape[1]} tokens each) "
        "with the largest |activation|; the peak token is boxed, the others are shaded by the node's "
        "activation (blue positive, red negative). Hover a token for its value."
    )
    return f'<p class="note">{note}</p><div class="snippet-grid">{snippet_html(model, data, snippets)}</div>'


DIAGRAM_NOTE = (
    "Layers top to bottom. Dashed vertical lines are residual channels; grey boxes are residual "
    "reads, yellow ones writes, blue/green/pink q/k/v channels (boxed by head), purple ellipses "
    "neurons. Edges are the nonzero weights between kept nodes: blue positive, red negative, wider "
    "for larger |weight|. Hover a node or an edge for its name and values."
)
ACTIVATION_NOTE = (
    "Activations in the full model (nothing ablated), on one colour scale per node across all "
    "prompts. Pick a node above a prompt to colour its tokens; hover a token for every node's value."
)


def render_report(
    model: Any,
    circuit: Any,
    task: Any = None,
    validation: Any = None,
    *,
    examples: Any = 3,
    heldout: Int[Tensor, "window pos"] | None = None,
    top_k: int = 5,
    seed: int = 0,
    title: str | None = None,
) -> str:
    """The report page as a string; see :func:`write_report` for the arguments."""
    data = circuit_data(circuit)
    check_circuit(model, data)
    task = task if task is not None else data.task
    task_name = task if isinstance(task, str) or task is None else getattr(task, "name", str(task))
    validation = None if validation is None else _json_like(validation, "validation report")
    rows, batch = _examples(model, task, examples, seed)
    activations, means, attention_prompts = _activation_section(model, data, rows, batch)
    notes = {
        name: f"mean activation at the scored token: class A {a:+.3f}, class B {b:+.3f}"
        for name, (a, b) in means.items()
    }
    svg = circuit_svg(data, model=model, node_notes=notes, standalone=False)

    heading = title or f"Circuit for {task_name or 'a task'}"
    cfg = model.cfg
    sections: list[Part] = [
        f"<header><h1>{escape(heading)}</h1><p>{len(data.nodes)} nodes, {len(data.edges)} edges "
        f"&middot; model: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} heads of "
        f"{cfg.d_head}, d_mlp {cfg.d_mlp}, vocab {cfg.d_vocab}</p></header>",
        '<nav><a href="#numbers">Numbers</a><a href="#diagram">Diagram</a>'
        '<a href="#activations">Activations</a><a href="#attention">Attention</a>'
        '<a href="#top">Top activations</a></nav>',
        '<section id="numbers"><h2>Numbers</h2>',
        summary_html(data),
        "<h3>Validation</h3>",
        validation_html(validation, data),
        "</section>",
        f'<section id="diagram"><h2>Circuit diagram</h2><p class="note">{DIAGRAM_NOTE}</p>',
        f'<div class="circuit-box">{svg}</div></section>',
        '<section id="activations"><h2>Node activations on task prompts</h2>',
        f'<p class="note">{ACTIVATION_NOTE}</p>',
        *activations,
        "</section>",
        '<section id="attention"><h2>Attention patterns of the circuit\'s heads</h2>',
        *_attention_section(model, data, attention_prompts),
        "</section>",
        '<section id="top"><h2>Top-activating held-out snippets</h2>',
        _top_section(model, data, heldout, top_k),
        "</section>",
        f"<footer>sparse-lens {sparse_lens.__version__} &middot; a self-contained page: it loads "
        "nothing from the network or the disk.</footer>",
    ]
    page = (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{escape(heading)}</title><style>{REPORT_CSS}{HOVER_CSS}</style>\n"
        f"{bundle_script()}\n</head><body>\n{assemble(sections, 'cv', with_bundle=False)}\n"
        f"<script>{HOVER_SCRIPT}</script>\n</body></html>\n"
    )
    found = external_references(page)
    if found:  # an internal bug, not the user's: the page must never fetch anything
        raise RuntimeError(f"the report would load external resources: {found[:3]}")
    return page


def write_report(
    model: Any,
    circuit: Any,
    task: Any = None,
    validation: Any = None,
    *,
    out_path: str | Path,
    examples: Any = 3,
    heldout: Int[Tensor, "window pos"] | None = None,
    top_k: int = 5,
    seed: int = 0,
    title: str | None = None,
) -> Path:
    """Write the circuit report (see the module docstring) to ``out_path``; returns the path.

    Args:
        model: the SparseTransformer the circuit belongs to.
        circuit: a Circuit, its JSON dict, or the path of its JSON file.
        task: task name or Task; default: the circuit's ``task``.
        validation: the validation report (dict, object with ``to_dict``, or JSON path).
        examples: how many test-split contrast pairs to show (int), or the prompts themselves
            (a TaskBatch, text, or a [batch, pos] token tensor; text and tokens have no classes).
        heldout: [window, pos] held-out pretraining tokens for the top-activating snippets.
        top_k: snippets per node.
        seed: seed of the example pairs.
    """
    page = render_report(
        model,
        circuit,
        task,
        validation,
        examples=examples,
        heldout=heldout,
        top_k=top_k,
        seed=seed,
        title=title,
    )
    return write_text(out_path, page)
