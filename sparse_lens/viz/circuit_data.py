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
    raw = circuit_dict(circuit)
    if "nodes" not in raw:
        raise SparseLensError("a circuit needs a 'nodes' list", field="nodes")
    nodes = [_node(item) for item in raw["nodes"]]
    names = {n.name for n in nodes}
    if len(names) != len(nodes):
        raise SparseLensError("the circuit lists a node twice", field="nodes")
    edges = [_edge(item) for item in raw.get("edges") or []]
    for edge in edges:
        for end in (edge.src, edge.dst):
            if end not in names:
                raise SparseLensError(
                    f"edge endpoint {end} is not a node of the circuit", field="edges"
                )
    meta = {k: v for k, v in raw.items() if k not in ("nodes", "edges")}
    return CircuitData(nodes=nodes, edges=edges, meta=meta)


def _node(item: Any) -> VizNode:
    if isinstance(item, str):
        hook, index = parse_node_name(item)
        given_type = None
    elif isinstance(item, Mapping) and "hook" in item and "index" in item:
        hook, index, given_type = str(item["hook"]), int(item["index"]), item.get("type")
    elif isinstance(item, Mapping) and "name" in item:
        hook, index = parse_node_name(str(item["name"]))
        given_type = item.get("type")
    elif isinstance(item, (list, tuple)) and len(item) == 2:
        hook, index, given_type = str(item[0]), int(item[1]), None
    else:
        raise SparseLensError(
            f"cannot read node {item!r}; expected {{hook, index, name, type}}", field="nodes"
        )
    found = parse_site_hook(hook)
    if found is None:
        raise SparseLensError(
            f"'{hook}' is not a node site (e.g. blocks.0.mlp.hook_post)", field="nodes"
        )
    site, layer = found
    node_type = str(given_type) if given_type is not None else site.type
    if node_type not in NODE_TYPES:
        raise SparseLensError(
            f"unknown node type {node_type!r}; one of {', '.join(NODE_TYPES)}", field="nodes"
        )
    return VizNode(node_name(hook, index), hook, index, node_type, layer)


def _edge(item: Any) -> VizEdge:
    try:
        if isinstance(item, Mapping):
            return VizEdge(str(item["src"]), str(item["dst"]), float(item["weight"]))
        src, dst, weight = item
        return VizEdge(str(src), str(dst), float(weight))
    except (KeyError, TypeError, ValueError):
        raise SparseLensError(
            f"cannot read edge {item!r}; expected {{src, dst, weight}}", field="edges"
        ) from None
