"""The circuit diagram: a dependency-free SVG a person can read.

Layout. Layers run top to bottom; inside a layer, one row per node kind in forward order
(attention read, q/k/v, attention write, MLP read, neurons, MLP write, residual nodes). Residual
reads and writes are drawn on vertical dashed "wires", one per residual channel, so a channel
written by a layer-0 MLP visibly feeds the layer-1 read of the same channel: that link is the
residual stream, not an edge, and the paper's edges are only the nonzero weights inside one
sublayer. q/k/v channels are boxed by head; q/k/v and neuron rows sit under the wires they
connect to (the mean x of their neighbours, then packed left to right), so edges stay short.

Edges are blue for positive weights and red for negative ones, wider for larger |weight|.
Every node and edge carries an SVG ``<title>`` (the browser's hover tooltip) and ``data-*``
attributes with its name and value; :data:`HOVER_SCRIPT` adds highlighting of a hovered node's
edges in HTML pages. No fonts, images or scripts are referenced, so the SVG renders anywhere,
including as a notebook's ``image/svg+xml`` output.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from html import escape
from typing import Any

from sparse_lens.viz.circuit_data import CircuitData, VizNode, circuit_data

POSITIVE = "#2563eb"
NEGATIVE = "#dc2626"
NODE_FILL = {
    "attn_read": "#e5e7eb",
    "mlp_read": "#e5e7eb",
    "q": "#bfdbfe",
    "k": "#bbf7d0",
    "v": "#fbcfe8",
    "attn_write": "#fde68a",
    "mlp_write": "#fde68a",
    "neuron": "#ddd6fe",
    "resid": "#f3f4f6",
}
ROWS = (
    "attn_read",
    "qkv",
    "attn_write",
    "resid_mid",
    "mlp_read",
    "neuron",
    "mlp_write",
    "resid_post",
)
ROW_LABELS = {
    "attn_read": "attn read",
    "qkv": "q / k / v",
    "attn_write": "attn write",
    "resid_mid": "resid (mid)",
    "mlp_read": "MLP read",
    "neuron": "neurons",
    "mlp_write": "MLP write",
    "resid_post": "resid (post)",
}
RESIDUAL_TYPES = ("attn_read", "attn_write", "mlp_read", "mlp_write", "resid")

LEFT, TOP, RIGHT = 118.0, 112.0, 28.0
COLUMN, ROW, LAYER_GAP = 62.0, 64.0, 30.0
RES_W, QKV_W, NODE_H, NEURON_RX = 46.0, 34.0, 22.0, 18.0
GAP, HEAD_PAD = 14.0, 6.0

HOVER_CSS = """
svg.circuit .edge .hit { pointer-events: stroke; }
svg.circuit .node { cursor: default; }
svg.circuit.focus .edge:not(.hl) { opacity: 0.1; }
svg.circuit.focus .node:not(.hl) { opacity: 0.35; }
svg.circuit .edge.hl .line { stroke-opacity: 1; }
"""

HOVER_SCRIPT = """
(function () {
  document.querySelectorAll("svg.circuit:not([data-hover])").forEach(function (svg) {
    svg.setAttribute("data-hover", "on");
    var edges = svg.querySelectorAll(".edge");
    svg.querySelectorAll(".node").forEach(function (node) {
      var name = node.getAttribute("data-name");
      node.addEventListener("mouseenter", function () {
        svg.classList.add("focus");
        node.classList.add("hl");
        edges.forEach(function (edge) {
          var src = edge.getAttribute("data-src"), dst = edge.getAttribute("data-dst");
          if (src === name || dst === name) {
            edge.classList.add("hl");
            var other = svg.querySelector('.node[data-name="' + (src === name ? dst : src) + '"]');
            if (other) other.classList.add("hl");
          }
        });
      });
      node.addEventListener("mouseleave", function () {
        svg.classList.remove("focus");
        svg.querySelectorAll(".hl").forEach(function (el) { el.classList.remove("hl"); });
      });
    });
  });
})();
"""


@dataclass
class _Placed:
    node: VizNode
    x: float
    y: float
    label: str
    width: float


def _row_of(node: VizNode) -> str:
    if node.type in ("q", "k", "v"):
        return "qkv"
    if node.type == "resid":
        return "resid_mid" if node.hook.endswith("hook_resid_mid") else "resid_post"
    return node.type


def _pack(desired: list[float], widths: list[float], lo: float) -> list[float]:
    """Centres near ``desired``, in that order, without overlaps, none left of ``lo``."""
    order = sorted(range(len(desired)), key=lambda i: desired[i])
    xs = [0.0] * len(desired)
    right = float("-inf")
    for i in order:
        xs[i] = max(desired[i], right + GAP + widths[i] / 2)
        right = xs[i] + widths[i] / 2
    if xs:
        shift = sum(x - d for x, d in zip(xs, desired, strict=True)) / len(xs)
        xs = [x - shift for x in xs]
        overhang = lo - min(x - w / 2 for x, w in zip(xs, widths, strict=True))
        if overhang > 0:
            xs = [x + overhang for x in xs]
    return xs


class _Layout:
    """Positions of nodes, wires, head boxes and row labels."""

    def __init__(self, data: CircuitData, d_model: int | None, d_head: int | None):
        self.data, self.d_model, self.d_head = data, d_model, d_head
        rows = defaultdict(list)
        for node in data.nodes:
            rows[(node.layer, _row_of(node))].append(node)
        layers = sorted({layer for layer, _ in rows})
        self.row_y: dict[tuple[int, str], float] = {}
        self.layer_span: dict[int, tuple[float, float]] = {}
        y = TOP
        for layer in layers:
            start = y
            for row in ROWS:
                if (layer, row) in rows:
                    self.row_y[(layer, row)] = y + ROW / 2
                    y += ROW
            self.layer_span[layer] = (start, y)
            y += LAYER_GAP
        self.height = y + 10

        # residual wires: one column per residual channel (position channels after them)
        channels = sorted({self.channel(n) for n in data.nodes if n.type in RESIDUAL_TYPES})
        self.column_x = {c: LEFT + COLUMN * (i + 0.5) for i, c in enumerate(channels)}
        self.placed: dict[str, _Placed] = {}
        for node in data.nodes:
            if node.type in RESIDUAL_TYPES:
                kind, c = self.channel(node)
                label = f"p{c}" if kind == 1 else str(c)
                self.placed[node.name] = _Placed(
                    node,
                    self.column_x[(kind, c)],
                    self.row_y[(node.layer, _row_of(node))],
                    label,
                    RES_W,
                )

        neighbours = defaultdict(list)
        for edge in data.edges:
            neighbours[edge.src].append(edge.dst)
            neighbours[edge.dst].append(edge.src)
        centre = LEFT + COLUMN * max(len(channels), 1) / 2
        self.head_boxes: list[tuple[float, float, float, str]] = []
        for (layer, row), nodes in sorted(rows.items()):
            if row == "qkv":
                self._place_heads(layer, nodes, neighbours, centre)
            elif row == "neuron":
                desired = [self._bary(n, neighbours, centre) for n in nodes]
                xs = _pack(desired, [2 * NEURON_RX] * len(nodes), LEFT)
                for node, x in zip(nodes, xs, strict=True):
                    self.placed[node.name] = _Placed(
                        node, x, self.row_y[(layer, row)], str(node.index), 2 * NEURON_RX
                    )
        right = max(
            [p.x + p.width / 2 for p in self.placed.values()]
            + [c + COLUMN / 2 for c in self.column_x.values()]
            + [LEFT + 520]
        )
        self.width = right + RIGHT

    def channel(self, node: VizNode) -> tuple[int, int]:
        """(0, c) for residual channel c, (1, c) for position channel c of a concat read."""
        if (
            self.d_model is not None
            and node.type in ("attn_read", "mlp_read")
            and node.index >= self.d_model
        ):
            return (1, node.index - self.d_model)
        return (0, node.index)

    def _bary(self, node: VizNode, neighbours: Mapping[str, list[str]], default: float) -> float:
        xs = [self.placed[m].x for m in neighbours[node.name] if m in self.placed]
        return sum(xs) / len(xs) if xs else default

    def _place_heads(
        self, layer: int, nodes: list[VizNode], neighbours: Mapping[str, list[str]], centre: float
    ) -> None:
        groups = defaultdict(list)
        for node in nodes:
            groups[node.index // self.d_head if self.d_head else -1].append(node)
        heads = sorted(groups)
        order = {"q": 0, "k": 1, "v": 2}
        members = [sorted(groups[h], key=lambda n: (order[n.type], n.index)) for h in heads]
        widths = [len(m) * QKV_W + (len(m) - 1) * 4 + 2 * HEAD_PAD for m in members]
        desired = []
        for group in members:
            xs = [self._bary(n, neighbours, centre) for n in group]
            desired.append(sum(xs) / len(xs))
        y = self.row_y[(layer, "qkv")]
        for head, group, width, x in zip(
            heads, members, widths, _pack(desired, widths, LEFT), strict=True
        ):
            left = x - width / 2 + HEAD_PAD
            for i, node in enumerate(group):
                dim = node.index % self.d_head if self.d_head else node.index
                self.placed[node.name] = _Placed(
                    node, left + QKV_W * (i + 0.5) + 4 * i, y, f"{node.type}{dim}", QKV_W
                )
            label = f"L{layer} head {head}" if head >= 0 else f"L{layer} heads (flat index)"
            self.head_boxes.append((x - width / 2, y, width, label))


def circuit_svg(
    circuit: Any,
    model: Any = None,
    node_notes: Mapping[str, str] | None = None,
    title: str | None = None,
    standalone: bool = True,
) -> str:
    """The circuit diagram as SVG text (see the module docstring for what it shows).

    ``model`` (optional) gives d_head, to group q/k/v channels by head, and node descriptions;
    without it d_head is taken from the circuit file if it records one. ``node_notes`` adds
    lines to a node's tooltip (e.g. its mean activation per class). ``standalone`` adds the
    xmlns attribute a bare .svg file needs (HTML pages do not).
    """
    data = circuit_data(circuit)
    cfg = getattr(model, "cfg", None)
    d_head = getattr(cfg, "d_head", None) or _meta_int(data.meta, "d_head")
    d_model = getattr(cfg, "d_model", None) or _meta_int(data.meta, "d_model")
    layout = _Layout(data, d_model, d_head)
    notes = dict(node_notes or {})
    out: list[str] = []
    xmlns = ' xmlns="http://www.w3.org/2000/svg"' if standalone else ""
    out.append(
        f'<svg{xmlns} class="circuit" width="{layout.width:.0f}" height="{layout.height:.0f}" '
        f'viewBox="0 0 {layout.width:.0f} {layout.height:.0f}" font-family="ui-monospace, Menlo, Consolas, monospace" '
        f'data-n-nodes="{len(data.nodes)}" data-n-edges="{len(data.edges)}">'
    )
    out.append(f"<style>{HOVER_CSS}</style>")
    out.append(
        f'<rect x="0" y="0" width="{layout.width:.0f}" height="{layout.height:.0f}" fill="#ffffff"/>'
    )
    heading = title or f"{data.task or 'circuit'}: {len(data.nodes)} nodes, {len(data.edges)} edges"
    out.append(
        f'<text x="12" y="24" font-size="15" font-weight="bold" fill="#111827">{escape(heading)}</text>'
    )
    out.extend(_legend())
    out.extend(_bands(layout))
    out.extend(_wires(layout))
    out.extend(_edges(data, layout))
    out.extend(_head_boxes(layout))  # over the edges: labels stay readable
    out.extend(_nodes(data, layout, model, notes))
    out.append("</svg>")
    return "\n".join(out)


def _meta_int(meta: Mapping[str, Any], key: str) -> int | None:
    for source in (
        meta,
        meta.get("config") or {},
        meta.get("model") if isinstance(meta.get("model"), Mapping) else {},
    ):
        if isinstance(source, Mapping) and isinstance(source.get(key), int):
            return int(source[key])
    return None


def _legend() -> list[str]:
    y = 50
    out = [
        f'<line x1="12" y1="{y}" x2="40" y2="{y}" stroke="{POSITIVE}" stroke-width="3"/>',
        f'<text x="46" y="{y + 4}" font-size="11" fill="#374151">positive weight</text>',
        f'<line x1="166" y1="{y}" x2="194" y2="{y}" stroke="{NEGATIVE}" stroke-width="3"/>',
        f'<text x="200" y="{y + 4}" font-size="11" fill="#374151">negative weight (width ~ |weight|)</text>',
    ]
    x = 12.0
    for kind, fill in (
        ("read", NODE_FILL["attn_read"]),
        ("q", NODE_FILL["q"]),
        ("k", NODE_FILL["k"]),
        ("v", NODE_FILL["v"]),
        ("neuron", NODE_FILL["neuron"]),
        ("write", NODE_FILL["attn_write"]),
    ):
        out.append(
            f'<rect x="{x}" y="{y + 12}" width="12" height="12" rx="2" fill="{fill}" stroke="#6b7280"/>'
        )
        out.append(f'<text x="{x + 16}" y="{y + 22}" font-size="11" fill="#374151">{kind}</text>')
        x += 28 + 7 * len(kind)
    out.append(
        f'<text x="{x + 6}" y="{y + 22}" font-size="11" fill="#6b7280">dashed: residual channel (label = channel)</text>'
    )
    return out


def _bands(layout: _Layout) -> list[str]:
    out = []
    for layer, (start, end) in layout.layer_span.items():
        out.append(
            f'<rect class="layer" x="4" y="{start - 6:.1f}" width="{layout.width - 8:.0f}" height="{end - start + 8:.1f}" '
            f'rx="6" fill="{"#fafafa" if layer % 2 == 0 else "#f4f6fb"}" stroke="#e5e7eb"/>'
        )
        out.append(
            f'<text x="12" y="{start + 10:.1f}" font-size="12" font-weight="bold" fill="#111827">layer {layer}</text>'
        )
    for (_, row), y in layout.row_y.items():
        out.append(
            f'<text x="12" y="{y + 4:.1f}" font-size="11" fill="#4b5563">{ROW_LABELS[row]}</text>'
        )
    return out


def _wires(layout: _Layout) -> list[str]:
    ys = defaultdict(list)
    for placed in layout.placed.values():
        if placed.node.type in RESIDUAL_TYPES:
            ys[layout.channel(placed.node)].append(placed.y)
    out = []
    for channel, x in layout.column_x.items():
        kind, c = channel
        name = f"position channel {c}" if kind else f"residual channel {c}"
        out.append(
            f'<g class="wire" data-channel="{"p" if kind else ""}{c}"><title>{name}</title>'
            f'<line x1="{x:.1f}" y1="{TOP - 10:.1f}" x2="{x:.1f}" y2="{max(ys[channel]):.1f}" stroke="#9ca3af" '
            f'stroke-width="1.2" stroke-dasharray="4 3"/>'
            f'<text x="{x:.1f}" y="{TOP - 14:.1f}" font-size="10" text-anchor="middle" fill="#6b7280">{"p" if kind else "r"}{c}</text></g>'
        )
    return out


def _head_boxes(layout: _Layout) -> list[str]:
    out = []
    for left, y, width, label in layout.head_boxes:
        top = y - NODE_H / 2 - HEAD_PAD
        out.append(
            f'<g class="head"><rect x="{left:.1f}" y="{top:.1f}" width="{width:.1f}" height="{NODE_H + 2 * HEAD_PAD:.1f}" rx="5" '
            f'fill="none" stroke="#94a3b8" stroke-dasharray="3 2"/>'
            f'<text x="{left + 2:.1f}" y="{top + NODE_H + 2 * HEAD_PAD + 10:.1f}" font-size="9" fill="#475569" '
            f'stroke="#ffffff" stroke-width="3" paint-order="stroke">{escape(label)}</text></g>'
        )
    return out


def _edges(data: CircuitData, layout: _Layout) -> list[str]:
    biggest = max((abs(e.weight) for e in data.edges), default=1.0) or 1.0
    out = []
    for edge in sorted(data.edges, key=lambda e: abs(e.weight)):
        a, b = layout.placed[edge.src], layout.placed[edge.dst]
        x1, y1, x2, y2 = a.x, a.y + NODE_H / 2, b.x, b.y - NODE_H / 2
        if y2 < y1:  # an edge drawn upwards: from the source's top to the target's bottom
            y1, y2 = a.y - NODE_H / 2, b.y + NODE_H / 2
        mid = (y1 + y2) / 2
        path = f"M{x1:.1f},{y1:.1f} C{x1:.1f},{mid:.1f} {x2:.1f},{mid:.1f} {x2:.1f},{y2:.1f}"
        sign = "pos" if edge.weight >= 0 else "neg"
        colour = POSITIVE if edge.weight >= 0 else NEGATIVE
        width = 1.0 + 5.0 * abs(edge.weight) / biggest
        tip = f"{edge.src} \u2192 {edge.dst}\nweight {edge.weight:+.4g}"
        out.append(
            f'<g class="edge edge-{sign}" data-src="{escape(edge.src)}" data-dst="{escape(edge.dst)}" data-weight="{edge.weight:.6g}">'
            f"<title>{escape(tip)}</title>"
            f'<path class="hit" d="{path}" fill="none" stroke="transparent" stroke-width="{max(width, 9):.1f}"/>'
            f'<path class="line" d="{path}" fill="none" stroke="{colour}" stroke-width="{width:.2f}" stroke-opacity="0.8" stroke-linecap="round"/></g>'
        )
    return out


def _nodes(data: CircuitData, layout: _Layout, model: Any, notes: Mapping[str, str]) -> list[str]:
    out = []
    for node in data.nodes:
        p = layout.placed[node.name]
        lines = [node.name, _describe(model, node)]
        if node.name in notes:
            lines.append(notes[node.name])
        fill = NODE_FILL[node.type]
        if node.type == "neuron":
            shape = f'<ellipse cx="0" cy="0" rx="{NEURON_RX}" ry="{NODE_H / 2 + 1}" fill="{fill}" stroke="#4b5563"/>'
        else:
            shape = f'<rect x="{-p.width / 2}" y="{-NODE_H / 2}" width="{p.width}" height="{NODE_H}" rx="4" fill="{fill}" stroke="#4b5563"/>'
        out.append(
            f'<g class="node node-{node.type}" data-name="{escape(node.name)}" data-type="{node.type}" data-layer="{node.layer}" '
            f'transform="translate({p.x:.1f},{p.y:.1f})"><title>{escape(chr(10).join(lines))}</title>{shape}'
            f'<text x="0" y="4" font-size="10.5" text-anchor="middle" fill="#111827">{escape(p.label)}</text></g>'
        )
    return out


def _describe(model: Any, node: VizNode) -> str:
    if model is not None:
        from sparse_lens.nodes import describe_node

        return describe_node(model.cfg, node.hook, node.index)
    return f"layer {node.layer} {node.type.replace('_', ' ')} {node.index}"
