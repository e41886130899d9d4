"""The Circuit: a task's minimal node set, as plain data that round-trips JSON exactly.

A circuit is nodes (``(hook, index)`` pairs, :mod:`sparse_lens.nodes`) plus how they were found
and how well they do. Its edges are never an independent record: they are the nonzero weights
joining two kept nodes inside one sublayer (the weights of
:data:`sparse_lens.model.graph.WEIGHTS`), computed from the model when the circuit is built
(:func:`circuit_edges`).

The JSON carries them (with their weights) for tools that have no model, and loading a circuit
against a model (:meth:`Circuit.check_model`) recomputes them and refuses a file whose weights
hash, hooks, indices or edges disagree with the model. Connections to the embedding (into a
read channel) and to the unembedding (out of a write channel) are listed in
``io_connections`` and are not edges: the paper counts edges inside sublayers only.

A circuit is applied to a model as TransformerLens hooks (:meth:`Circuit.hooks`): keep only its
nodes (everything else ablated: sufficiency) or ablate only its nodes (necessity).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn

from sparse_lens.circuits.ablation import Ablation, weights_hash
from sparse_lens.circuits.masks import Hooks, keep_hooks
from sparse_lens.errors import SparseLensError
from sparse_lens.io.atomic import write_text
from sparse_lens.model.graph import edge_matrices, io_weights
from sparse_lens.nodes import check_node, node_name, node_sites, site_by_hook
from sparse_lens.schema import Reader

FORMAT_VERSION = 1
Mode = Literal["keep", "ablate"]


@dataclass(frozen=True)
class CircuitNode:
    """One kept node: its hook, flat channel index, printable name and node type."""

    hook: str
    index: int
    name: str
    type: str


@dataclass(frozen=True)
class CircuitEdge:
    """A nonzero weight from node ``src`` to node ``dst`` (names) inside one sublayer."""

    src: str
    dst: str
    weight: float


@dataclass(frozen=True)
class IOConnection:
    """Embedding -> read channel or write channel -> unembedding (not counted as an edge).

    ``n_weights`` is how many vocabulary entries (or positions) the channel connects to, and
    ``norm`` the L2 norm of that column / row of the embedding / unembedding.
    """

    src: str
    dst: str
    n_weights: int
    norm: float


@dataclass
class Circuit:
    """A circuit and its provenance. See the module docstring; JSON keys equal field names."""

    model_id: str
    weights_hash: str
    task: str
    split: str
    target_loss: float
    achieved_loss: float
    target_met: bool
    calibrated_loss: float
    logit_scale: float
    logit_shift: float
    ablation: str
    seed: int
    n_nodes: int
    n_edges: int
    nodes: list[CircuitNode]
    edges: list[CircuitEdge]
    io_connections: list[IOConnection]
    settings: dict[str, Any] = field(default_factory=dict)
    search: list[dict[str, Any]] = field(default_factory=list)
    format_version: int = FORMAT_VERSION

    # ------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        model: nn.Module,
        nodes: Iterable[tuple[str, int]],
        *,
        task: str,
        split: str,
        target_loss: float,
        achieved_loss: float,
        calibrated_loss: float,
        logit_scale: float,
        logit_shift: float,
        ablation: str,
        seed: int,
        model_id: str = "",
        settings: dict[str, Any] | None = None,
        search: list[dict[str, Any]] | None = None,
    ) -> Circuit:
        """A circuit of ``nodes`` on ``model``, with edges and io connections read from its weights."""
        kept = sorted_nodes(model, nodes)
        edges = circuit_edges(model, [(n.hook, n.index) for n in kept])
        return cls(
            model_id=model_id or str(getattr(model.cfg, "model_name", "")),
            weights_hash=weights_hash(model),
            task=task,
            split=split,
            target_loss=float(target_loss),
            achieved_loss=float(achieved_loss),
            target_met=bool(achieved_loss <= target_loss),
            calibrated_loss=float(calibrated_loss),
            logit_scale=float(logit_scale),
            logit_shift=float(logit_shift),
            ablation=ablation,
            seed=int(seed),
            n_nodes=len(kept),
            n_edges=len(edges),
            nodes=kept,
            edges=edges,
            io_connections=io_connections(model, kept),
            settings=_jsonable(settings or {}),
            search=_jsonable(search or []),
        )

    # ------------------------------------------------------------------ applying
    def keep_mask(self, model: nn.Module) -> dict[str, Tensor]:
        """hook -> [width] booleans, True on this circuit's nodes, for every node site."""
        keep = {s.hook: torch.zeros(s.width, dtype=torch.bool) for s in node_sites(model.cfg)}
        for node in self.nodes:
            keep[node.hook][node.index] = True
        return keep

    def hooks(self, model: nn.Module, ablation: Ablation, mode: Mode = "keep") -> Hooks:
        """Forward hooks for ``model.hooks(fwd_hooks=...)`` / ``run_with_hooks``.

        ``mode="keep"`` keeps only the circuit (every other node ablated); ``"ablate"`` ablates
        only the circuit's nodes. Call :meth:`check_model` first for a circuit from a file.
        """
        keep = self.keep_mask(model)
        if mode == "ablate":
            keep = {hook: ~mask for hook, mask in keep.items()}
        elif mode != "keep":
            raise SparseLensError(f"mode must be 'keep' or 'ablate', got {mode!r}", field="mode")
        return keep_hooks(model, keep, ablation)

    def node_names(self) -> list[str]:
        return [n.name for n in self.nodes]

    # ------------------------------------------------------------------ checking
    def check_model(self, model: nn.Module, source: str | Path | None = None) -> None:
        """Refuse a circuit that does not belong to ``model`` (SparseLensError naming the field):
        another model's weights hash, a hook that is not a node site, an index out of range, a
        wrong node type or name, or edges that disagree with the weights."""
        if self.weights_hash != weights_hash(model):
            raise SparseLensError(
                "the circuit was found on different weights (weights hash mismatch); use the "
                "model it was pruned on or prune again",
                path=source,
                field="weights_hash",
            )
        sites = site_by_hook(model.cfg)
        for i, node in enumerate(self.nodes):
            site = sites.get(node.hook)
            if site is None:
                raise SparseLensError(
                    f"{node.hook!r} is not a node site of this model",
                    path=source,
                    field=f"nodes[{i}].hook",
                )
            if not 0 <= node.index < site.width:
                raise SparseLensError(
                    f"index {node.index} is out of range for {node.hook} (width {site.width})",
                    path=source,
                    field=f"nodes[{i}].index",
                )
            if site.type != node.type:
                raise SparseLensError(
                    f"{node.hook} holds {site.type} nodes, not {node.type!r}",
                    path=source,
                    field=f"nodes[{i}].type",
                )
        if circuit_edges(model, [(n.hook, n.index) for n in self.nodes]) != self.edges:
            raise SparseLensError(
                "the edges disagree with the model's weights; the file was edited",
                path=source,
                field="edges",
            )

    # ------------------------------------------------------------------ JSON
    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("nodes", "edges", "io_connections"):
                value = [dict(vars(item)) for item in value]
            out[f.name] = value
        return out

    def to_json_str(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    def save(self, path: str | Path) -> Path:
        return write_text(path, self.to_json_str())

    @classmethod
    def from_dict(cls, data: Any, source: str | Path | None = None) -> Circuit:
        """Parse and check the structure of a circuit dict (SparseLensError naming the field)."""
        top = Reader(data, source)

        def rows(key: str, build: Any) -> list:
            """``build(reader)`` for each object of the list at ``key``; extra keys refused."""
            out = []
            for i, item in enumerate(top.array(key)):
                reader = top.item(key, i, item)
                out.append(build(reader))
                reader.done()
            return out

        nodes = rows(
            "nodes",
            lambda n: CircuitNode(
                n.text("hook"), n.integer("index"), n.text("name"), n.text("type")
            ),
        )
        for i, node in enumerate(nodes):
            if node.name != node_name(node.hook, node.index):
                raise SparseLensError(
                    f"name {node.name!r} does not match hook and index ({node_name(node.hook, node.index)!r})",
                    path=source,
                    field=f"nodes[{i}].name",
                )
        edges = rows(
            "edges", lambda e: CircuitEdge(e.text("src"), e.text("dst"), e.number("weight"))
        )
        io = rows(
            "io_connections",
            lambda c: IOConnection(
                c.text("src"), c.text("dst"), c.integer("n_weights"), c.number("norm")
            ),
        )
        circuit = cls(
            model_id=top.text("model_id"),
            weights_hash=top.text("weights_hash"),
            task=top.text("task"),
            split=top.text("split"),
            target_loss=top.number("target_loss"),
            achieved_loss=top.number("achieved_loss"),
            target_met=top.flag("target_met"),
            calibrated_loss=top.number("calibrated_loss"),
            logit_scale=top.number("logit_scale"),
            logit_shift=top.number("logit_shift"),
            ablation=top.text("ablation"),
            seed=top.integer("seed"),
            n_nodes=top.integer("n_nodes"),
            n_edges=top.integer("n_edges"),
            nodes=nodes,
            edges=edges,
            io_connections=io,
            settings=top.mapping("settings", {}),
            search=top.array("search", []),
            format_version=top.integer("format_version", FORMAT_VERSION),
        )
        top.done()
        if circuit.format_version != FORMAT_VERSION:
            raise SparseLensError(
                f"format {circuit.format_version} is not supported (this version reads {FORMAT_VERSION})",
                path=source,
                field="format_version",
            )
        if circuit.n_nodes != len(nodes):
            raise SparseLensError(
                f"says {circuit.n_nodes} but lists {len(nodes)} nodes", path=source, field="n_nodes"
            )
        if circuit.n_edges != len(edges):
            raise SparseLensError(
                f"says {circuit.n_edges} but lists {len(edges)} edges", path=source, field="n_edges"
            )
        names = set(circuit.node_names())
        if len(names) != len(nodes):
            raise SparseLensError("a node is listed twice", path=source, field="nodes")
        for i, edge in enumerate(edges):
            for end in ("src", "dst"):
                if getattr(edge, end) not in names:
                    raise SparseLensError(
                        f"{getattr(edge, end)!r} is not a node of the circuit",
                        path=source,
                        field=f"edges[{i}].{end}",
                    )
        return circuit

    @classmethod
    def load(cls, path: str | Path, model: nn.Module | None = None) -> Circuit:
        """Read a circuit file; with ``model``, also check it belongs to that model."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise SparseLensError("no such circuit file", path=path) from None
        except (OSError, UnicodeDecodeError) as error:
            raise SparseLensError(f"cannot read the circuit file ({error})", path=path) from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise SparseLensError(f"not valid JSON ({error})", path=path) from None
        circuit = cls.from_dict(data, source=path)
        if model is not None:
            circuit.check_model(model, source=path)
        return circuit


# --------------------------------------------------------------------------------------------
# Nodes and edges from the weights


def sorted_nodes(model: nn.Module, nodes: Iterable[tuple[str, int]]) -> list[CircuitNode]:
    """Nodes in forward (site) order, then by index; checked against the model; no duplicates."""
    order = {site.hook: i for i, site in enumerate(node_sites(model.cfg))}
    unique = sorted({(h, int(i)) for h, i in nodes}, key=lambda n: (order.get(n[0], -1), n[1]))
    out = []
    for hook, index in unique:
        site = check_node(model.cfg, hook, index)
        out.append(CircuitNode(hook, index, node_name(hook, index), site.type))
    return out


def circuit_edges(model: nn.Module, nodes: Iterable[tuple[str, int]]) -> list[CircuitEdge]:
    """Every nonzero weight joining two of ``nodes`` inside one sublayer (module docstring)."""
    kept: dict[str, list[int]] = {}
    for hook, index in nodes:
        kept.setdefault(hook, []).append(int(index))
    edges: list[CircuitEdge] = []
    for src_hook, dst_hook, matrix in edge_matrices(model):
        src, dst = sorted(set(kept.get(src_hook, []))), sorted(set(kept.get(dst_hook, [])))
        if not src or not dst:
            continue
        sub = matrix.detach()[src][:, dst].cpu()
        for i, j in sub.nonzero().tolist():
            edges.append(
                CircuitEdge(
                    node_name(src_hook, src[i]), node_name(dst_hook, dst[j]), float(sub[i, j])
                )
            )
    return edges


def io_connections(model: nn.Module, nodes: list[CircuitNode]) -> list[IOConnection]:
    """Embedding -> read channels and write channels -> unembedding of the kept nodes
    (:func:`sparse_lens.model.graph.io_weights`)."""
    sites = site_by_hook(model.cfg)
    out = []
    for node in nodes:
        site = sites[node.hook]
        for name, vector in io_weights(model, site, node.index):
            src, dst = (name, node.name) if site.io == "embed" else (node.name, name)
            out.append(IOConnection(src, dst, int(vector.count_nonzero()), _norm(vector)))
    return out


def _norm(t: Tensor) -> float:
    return float(t.detach().float().norm())


def _jsonable(value: Any) -> Any:
    """The value as JSON would give it back (tuples -> lists), so round trips compare equal."""
    return json.loads(json.dumps(value, allow_nan=False))
