"""One reading of a circuit for every view: nodes, edges and the summary numbers.

The viewers accept a circuit in any of the forms a user holds one: a ``Circuit`` object from
:mod:`sparse_lens.circuits` (anything with ``to_dict()``), the dict of its JSON file, or the path
of that file. They all go through :func:`circuit_data`, which reads only the JSON contract
(``nodes`` with ``hook`` / ``index`` / ``name`` / ``type``, ``edges`` with ``src`` / ``dst`` /
``weight``), so the viewers never depend on the Circuit class's internals and a circuit saved
by an older version still renders. A malformed file is the user's to fix: SparseLensError.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparse_lens.errors import SparseLensError
from sparse_lens.model.graph import parse_site_hook
from sparse_lens.nodes import NODE_TYPES, node_name, parse_node_name
from sparse_lens.schema import Reader, matches


@dataclass(frozen=True)
class VizNode:
    name: str
    hook: str
    index: int
    type: str
    layer: int

    @property
    def site(self) -> str:
        """The hook's name inside its block, e.g. ``mlp.hook_post``."""
        return self.hook.split(".", 2)[2]


@dataclass(frozen=True)
class VizEdge:
    src: str
    dst: str
    weight: float


@dataclass
class CircuitData:
    """A circuit as the viewers see it; ``meta`` holds every other top-level JSON field."""

    nodes: list[VizNode]
    edges: list[VizEdge]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def task(self) -> str | None:
        task = self.meta.get("task")
        return None if task is None else str(task)

    def node(self, name: str) -> VizNode:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(name)

    def heads(self, d_head: int) -> list[tuple[int, int]]:
        """(layer, head) of every head with a q, k or v node, sorted."""
        return sorted(
            {(n.layer, n.index // d_head) for n in self.nodes if n.type in ("q", "k", "v")}
        )


def circuit_dict(circuit: Any) -> dict[str, Any]:
    """The JSON dict of a circuit given as a Circuit object, a dict or a JSON file path."""
    if isinstance(circuit, Mapping):
        return dict(circuit)
    if isinstance(circuit, (str, Path)):
        path = Path(circuit)
        if not path.is_file():
            raise SparseLensError("circuit file not found", path=path)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise SparseLensError(f"not a JSON circuit file ({error})", path=path) from None
        if not isinstance(data, dict):
            raise SparseLensError("a circuit file holds one JSON object", path=path)
        return data
    for method in ("to_dict", "to_json_dict"):
        if callable(getattr(circuit, method, None)):
            return dict(getattr(circuit, method)())
    if dataclasses.is_dataclass(circuit) and not isinstance(circuit, type):
        return dataclasses.asdict(circuit)
    raise TypeError(
        f"expected a Circuit, a circuit dict or a JSON path, got {type(circuit).__name__}"
    )


def circuit_data(circuit: Any) -> CircuitData:
    """Normalise a circuit (see the module docstring); checks that every edge joins two nodes."""
    if isinstance(circuit, CircuitData):
        return circuit
    source = str(circuit) if isinstance(circuit, (str, Path)) else None
    raw = circuit_dict(circuit)
    top = Reader(raw, source)
    nodes = [_node(top, i, item) for i, item in enumerate(top.array("nodes"))]
    names = {n.name for n in nodes}
    if len(names) != len(nodes):
        raise SparseLensError("the circuit lists a node twice", path=source, field="nodes")
    edges = [
        _edge(top, i, item) for i, item in enumerate(top.value("edges", list | None, None) or [])
    ]
    for i, edge in enumerate(edges):
        for end in (edge.src, edge.dst):
            if end not in names:
                raise SparseLensError(
                    f"edge endpoint {end} is not a node of the circuit",
                    path=source,
                    field=f"edges[{i}]",
                )
    meta = {k: v for k, v in raw.items() if k not in ("nodes", "edges")}
    return CircuitData(nodes=nodes, edges=edges, meta=meta)


def _node(top: Reader, i: int, item: Any) -> VizNode:
    """A node given as its name, a (hook, index) pair, or an object with hook and index (or
    name), and optionally type; other keys of an object (a Circuit's own) are not ours."""
    where = f"nodes[{i}]"
    given_type = None
    if isinstance(item, str):
        hook, index = parse_node_name(item)
    elif isinstance(item, Mapping):
        node = top.item("nodes", i, dict(item))
        if node.has("hook") and node.has("index"):
            hook, index = node.text("hook"), node.integer("index")
        elif node.has("name"):
            hook, index = parse_node_name(node.text("name"))
        else:
            raise node.fail("hook", "a node object needs hook and index, or name")
        given_type = node.value("type", str | None, None)
    elif isinstance(item, (list, tuple)) and len(item) == 2 and isinstance(item[1], int):
        hook, index = str(item[0]), item[1]
    else:
        raise SparseLensError(
            f"cannot read node {item!r}; expected {{hook, index, name, type}}",
            path=top.source,
            field=where,
        )
    found = parse_site_hook(hook)
    if found is None:
        raise SparseLensError(
            f"'{hook}' is not a node site (e.g. blocks.0.mlp.hook_post)",
            path=top.source,
            field=where,
        )
    site, layer = found
    node_type = given_type if given_type is not None else site.type
    if node_type not in NODE_TYPES:
        raise SparseLensError(
            f"unknown node type {node_type!r}; one of {', '.join(NODE_TYPES)}",
            path=top.source,
            field=where,
        )
    return VizNode(node_name(hook, index), hook, index, node_type, layer)


def _edge(top: Reader, i: int, item: Any) -> VizEdge:
    """An edge given as an object with src, dst and weight, or a (src, dst, weight) triple."""
    if isinstance(item, Mapping):
        edge = top.item("edges", i, dict(item))
        return VizEdge(edge.text("src"), edge.text("dst"), edge.number("weight"))
    if isinstance(item, (list, tuple)) and len(item) == 3:
        src, dst, weight = item
        if isinstance(src, str) and isinstance(dst, str) and matches(weight, float):
            return VizEdge(src, dst, float(weight))
    raise SparseLensError(
        f"cannot read edge {item!r}; expected {{src, dst, weight}}",
        path=top.source,
        field=f"edges[{i}]",
    )
