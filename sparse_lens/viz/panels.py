"""Building blocks shared by the notebook views and the HTML report.

A panel is a list of parts: plain HTML strings and circuitsvis :class:`~.offline.Visual`s.
:func:`assemble` numbers the visuals' elements and adds the circuitsvis bundle once, so the same
panels make a notebook cell's output and a section of the report.
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from sparse_lens.errors import SparseLensError
from sparse_lens.viz.activations import Snippet, head_patterns, node_activations, str_tokens
from sparse_lens.viz.circuit_data import CircuitData
from sparse_lens.viz.offline import Visual, bundle_script, visual

Part = str | Visual


def assemble(parts: Sequence[Part], id_prefix: str, with_bundle: bool = True) -> str:
    """HTML of ``parts``; visual i gets the element id ``{id_prefix}-{i}``."""
    out = [bundle_script()] if with_bundle and any(isinstance(p, Visual) for p in parts) else []
    count = 0
    for part in parts:
        if isinstance(part, Visual):
            out.append(part.html(f"{id_prefix}-{count}"))
            count += 1
        else:
            out.append(part)
    return "\n".join(out)


def prompt_rows(model: Any, prompts: Any) -> list[list[int]]:
    """Token ids of each prompt, without padding.

    ``prompts``: a string, a list of strings, a [batch, pos] token tensor, or a
    :class:`~sparse_lens.tasks.batch.TaskBatch` (rows cut at each prompt's ``last_pos``).
    """
    if isinstance(prompts, str):
        prompts = [prompts]
    if isinstance(prompts, Tensor):
        if prompts.ndim == 1:
            prompts = prompts[None]
        return [row.tolist() for row in prompts]
    if hasattr(prompts, "tokens") and hasattr(prompts, "last_pos"):
        return [
            prompts.tokens[i, : int(prompts.last_pos[i]) + 1].tolist()
            for i in range(len(prompts.tokens))
        ]
    if isinstance(prompts, Sequence) and all(isinstance(p, str) for p in prompts):
        if getattr(model, "tokenizer", None) is None:
            raise SparseLensError(
                "this model has no tokenizer; pass token ids instead of text", field="prompts"
            )
        return [model.to_tokens(p)[0].tolist() for p in prompts]
    raise TypeError(f"prompts must be text, token ids or a TaskBatch, got {type(prompts).__name__}")


def _tensor(row: list[int]) -> Int[Tensor, "1 pos"]:
    return torch.tensor([row], dtype=torch.long)


def activation_parts(
    model: Any,
    data: CircuitData,
    rows: Sequence[list[int]],
    labels: Sequence[str] | None = None,
    bounds: Sequence[float] | None = None,
    acts: Sequence[Tensor] | None = None,
) -> list[Part]:
    """Per prompt: its tokens coloured by each circuit node's activation (pick the node above).

    Colours use one symmetric scale per node (``bounds``, default: the node's largest
    |activation| over ``rows``), so prompts, and the two classes of a task, compare directly.
    circuitsvis would otherwise scale each prompt on its own and, for a node that is zero on a
    prompt, round its bound to 0 and draw the tokens white on white. ``acts``: the rows'
    activations when already computed (:func:`row_activations`).
    """
    import circuitsvis

    names = [node.name for node in data.nodes]
    if acts is None:
        acts = row_activations(model, data, rows)
    if bounds is None:
        bounds = activation_bounds(acts, len(names))
    parts: list[Part] = []
    for i, (row, act) in enumerate(zip(rows, acts, strict=True)):
        label = labels[i] if labels is not None else f"prompt {i}"
        parts.append(f'<div class="prompt"><div class="prompt-label">{escape(label)}</div>')
        if names:
            shown = circuitsvis.tokens.colored_tokens_multi(str_tokens(model, row), act, names)
            parts.append(
                visual(shown).with_props(
                    positiveBounds=list(bounds), negativeBounds=[-b for b in bounds]
                )
            )
        else:
            parts.append("<p>(the circuit has no nodes)</p>")
        parts.append("</div>")
    return parts


def row_activations(model: Any, data: CircuitData, rows: Sequence[list[int]]) -> list[Tensor]:
    """[pos, node] activations of each prompt (one forward per prompt: no padding effects)."""
    return [node_activations(model, data, _tensor(row))[0] for row in rows]


def activation_bounds(acts: Sequence[Tensor], n_nodes: int, floor: float = 1e-4) -> list[float]:
    """Per node, the largest |activation| in ``acts`` ([pos, node] tensors), at least ``floor``."""
    bounds = [floor] * n_nodes
    for act in acts:
        if act.numel():
            peak = act.abs().amax(dim=0).tolist()
            bounds = [max(b, float(p)) for b, p in zip(bounds, peak, strict=True)]
    return bounds


def head_parts(
    model: Any, row: list[int], heads: Sequence[tuple[int, int]], label: str | None = None
) -> list[Part]:
    """Attention patterns of ``heads`` on one prompt (circuitsvis attention_heads)."""
    import circuitsvis

    parts: list[Part] = []
    if label is not None:
        parts.append(f'<div class="prompt-label">{escape(label)}</div>')
    if not heads:
        return parts + ["<p>(no attention heads)</p>"]
    patterns = head_patterns(model, _tensor(row), heads)
    names = [f"L{layer}H{head}" for layer, head in heads]
    parts.append(
        visual(
            circuitsvis.attention.attention_heads(
                patterns, str_tokens(model, row), attention_head_names=names, mask_upper_tri=True
            )
        )
    )
    return parts


def batch_activations(model: Any, data: CircuitData, batch: Any) -> list[Tensor]:
    """[pos, node] activations of each prompt of a right-padded TaskBatch, from one forward.

    Exact for a causal model: a prompt's positions up to its ``last_pos`` never see the padding.
    """
    acts = node_activations(model, data, batch.tokens)
    return [acts[i, : int(batch.last_pos[i]) + 1] for i in range(len(batch.tokens))]


def class_means(
    data: CircuitData, acts: Sequence[Tensor], labels: Sequence[int]
) -> dict[str, tuple[float, float]]:
    """Each node's mean activation at the scored (last) position over class-A and class-B prompts."""
    means = {}
    for j, node in enumerate(data.nodes):
        a = [float(act[-1, j]) for act, label in zip(acts, labels, strict=True) if label == 0]
        b = [float(act[-1, j]) for act, label in zip(acts, labels, strict=True) if label == 1]
        means[node.name] = (
            sum(a) / len(a) if a else float("nan"),
            sum(b) / len(b) if b else float("nan"),
        )
    return means


def _signed(x: float) -> str:
    return f"{x + 0.0:+.3f}".replace("-0.000", "+0.000")


def class_table(
    data: CircuitData, means: dict[str, tuple[float, float]], answers: tuple[str, str]
) -> str:
    """A table of :func:`class_means`, largest class difference first."""
    rows = sorted(data.nodes, key=lambda n: -abs(means[n.name][0] - means[n.name][1]))
    body = "".join(
        f"<tr><td><code>{escape(n.name)}</code></td><td>{n.type}</td>"
        f'<td class="num">{_signed(means[n.name][0])}</td><td class="num">{_signed(means[n.name][1])}</td>'
        f'<td class="num">{_signed(means[n.name][0] - means[n.name][1])}</td></tr>'
        for n in rows
    )
    a, b = (escape(repr(x)) for x in answers)
    return (
        '<table class="numbers"><thead><tr><th>node</th><th>type</th>'
        f"<th>mean, class A ({a})</th><th>mean, class B ({b})</th><th>A &minus; B</th></tr></thead>"
        f"<tbody>{body}</tbody></table>"
    )


def snippet_html(model: Any, data: CircuitData, snippets: dict[str, list[Snippet]]) -> str:
    """Each node's top-activating held-out contexts; the peak token is boxed, others shaded."""
    out = []
    for node in data.nodes:
        items = snippets.get(node.name, [])
        scale = max((abs(v) for s in items for v in s.values), default=1.0) or 1.0
        out.append(
            f'<div class="node-snippets" data-node="{escape(node.name)}"><h4><code>{escape(node.name)}</code></h4>'
        )
        if not items:
            out.append('<p class="note">Zero on every held-out window searched.</p>')
        out.append("<ol>")
        for snippet in items:
            tokens = str_tokens(model, snippet.tokens)
            spans = []
            for i, (text, value) in enumerate(zip(tokens, snippet.values, strict=True)):
                alpha = min(1.0, abs(value) / scale)
                rgb = "37,99,235" if value >= 0 else "220,38,38"
                cls = ' class="peak"' if i == snippet.highlight else ""
                spans.append(
                    f'<span{cls} style="background: rgba({rgb},{alpha * 0.55:.2f})" title="{value:+.3f}">{escape(text)}</span>'
                )
            out.append(
                f'<li><span class="snippet-value">{snippet.value:+.3f}</span> '
                f'<span class="snippet-where">window {snippet.window}, pos {snippet.position}</span>'
                f'<pre class="snippet">{"".join(spans)}</pre></li>'
            )
        out.append("</ol></div>")
    return "\n".join(out)
