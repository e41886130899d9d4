"""The viewers: circuit diagram, offline report, notebook views and training curves.

Circuits are written out by hand from a tiny random model's weights (not with
sparse_lens.circuits), so the viewers are tested against the circuit JSON contract alone.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET

import pytest
import torch
from helpers import tiny_model_with_tokenizer

from sparse_lens.errors import SparseLensError
from sparse_lens.nodes import node_name
from sparse_lens.viz import (
    circuit_data,
    circuit_svg,
    external_references,
    render_report,
    show_circuit,
    show_head_patterns,
    show_node_activations,
    write_report,
)
from sparse_lens.viz.activations import node_activations, top_activating
from sparse_lens.viz.graph import NEGATIVE, POSITIVE
from sparse_lens.viz.offline import circuitsvis_bundle

SVG = "{http://www.w3.org/2000/svg}"
TYPES = {
    "mlp.hook_read": "mlp_read",
    "mlp.hook_post": "neuron",
    "hook_mlp_out": "mlp_write",
    "attn.hook_read": "attn_read",
    "attn.hook_q": "q",
    "attn.hook_k": "k",
    "attn.hook_v": "v",
    "hook_attn_out": "attn_write",
}


# ------------------------------------------------------------------ fixtures (also used by test_browser)
def quote_like_circuit(model) -> dict:
    """A 13-node circuit shaped like the paper's quote circuit: a layer-0 MLP writes two residual
    channels that a layer-1 head reads as query, key and value. Edge weights are the model's."""
    dh = model.cfg.d_head
    mlp, attn = model.blocks[0].mlp, model.blocks[1].attn
    reads0, neurons, writes0 = (3, 7), (12, 40), (5, 9)
    q, k, v, v0, out = dh + 2, dh + 4, dh + 6, 1, 11
    nodes = (
        [("blocks.0.mlp.hook_read", i) for i in reads0]
        + [("blocks.0.mlp.hook_post", i) for i in neurons]
        + [("blocks.0.hook_mlp_out", i) for i in writes0]
        + [("blocks.1.attn.hook_read", i) for i in writes0]
        + [("blocks.1.attn.hook_q", q), ("blocks.1.attn.hook_k", k), ("blocks.1.attn.hook_v", v)]
        + [("blocks.1.attn.hook_v", v0), ("blocks.1.hook_attn_out", out)]
    )
    edges = []
    with torch.no_grad():
        for r in reads0:
            for n in neurons:
                edges.append(
                    (
                        "blocks.0.mlp.hook_read",
                        r,
                        "blocks.0.mlp.hook_post",
                        n,
                        float(mlp.W_in[r, n]),
                    )
                )
        for n in neurons:
            for w in writes0:
                edges.append(
                    (
                        "blocks.0.mlp.hook_post",
                        n,
                        "blocks.0.hook_mlp_out",
                        w,
                        float(mlp.W_out[n, w]),
                    )
                )
        for r in writes0:
            for hook, W, i in (
                ("attn.hook_q", attn.W_Q, q),
                ("attn.hook_k", attn.W_K, k),
                ("attn.hook_v", attn.W_V, v),
                ("attn.hook_v", attn.W_V, v0),
            ):
                edges.append(
                    (
                        "blocks.1.attn.hook_read",
                        r,
                        f"blocks.1.{hook}",
                        i,
                        float(W[i // dh, r, i % dh]),
                    )
                )
        for i in (v, v0):
            edges.append(
                (
                    "blocks.1.attn.hook_v",
                    i,
                    "blocks.1.hook_attn_out",
                    out,
                    float(attn.W_O[i // dh, i % dh, out]),
                )
            )
    edge_dicts = [
        {"src": node_name(a, i), "dst": node_name(b, j), "weight": float(w)}
        for a, i, b, j, w in edges
        if w != 0.0
    ]
    return {
        "task": "single_double_quote",
        "target_loss": 0.15,
        "achieved_loss": 0.1487,
        "ablation": "mean",
        "n_nodes": len(nodes),
        "n_edges": len(edge_dicts),
        "nodes": [
            {"hook": h, "index": i, "name": node_name(h, i), "type": TYPES[h.split(".", 2)[2]]}
            for h, i in nodes
        ],
        "edges": edge_dicts,
    }


def validation_report() -> dict:
    return {
        "full_loss": 0.0512,
        "circuit_only_loss": 0.1487,
        "circuit_ablated_loss": 2.3125,
        "random_circuit_only_loss": [0.9, 1.1, 0.95],
        "random_ablated_loss": [0.06, 0.07],
        "shuffled_label_circuit_edges": [140, 152],
    }


def heldout_tokens(model, n_windows: int = 6, n_pos: int = 24, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.cfg.d_vocab, (n_windows, n_pos), generator=generator)


@pytest.fixture(scope="module")
def model():
    return tiny_model_with_tokenizer()


@pytest.fixture(scope="module")
def circuit(model):
    return quote_like_circuit(model)


@pytest.fixture(scope="module")
def report_html(model, circuit):
    return render_report(
        model,
        circuit,
        validation=validation_report(),
        examples=2,
        heldout=heldout_tokens(model),
        top_k=3,
    )


def _classes(element) -> list[str]:
    return (element.get("class") or "").split()


# ------------------------------------------------------------------ diagram
def test_svg_has_one_element_per_node_and_edge_with_their_names(model, circuit):
    root = ET.fromstring(circuit_svg(circuit, model=model))
    nodes = [g for g in root.iter(f"{SVG}g") if "node" in _classes(g)]
    edges = [g for g in root.iter(f"{SVG}g") if "edge" in _classes(g)]
    assert sorted(g.get("data-name") for g in nodes) == sorted(n["name"] for n in circuit["nodes"])
    assert sorted((g.get("data-src"), g.get("data-dst")) for g in edges) == sorted(
        (e["src"], e["dst"]) for e in circuit["edges"]
    )
    # hover text: every node and edge has a <title> naming it (and the weight for edges)
    for g in nodes:
        assert g.find(f"{SVG}title").text.startswith(g.get("data-name"))
    for g in edges:
        title = g.find(f"{SVG}title").text
        assert g.get("data-src") in title and g.get("data-dst") in title and "weight" in title


def test_edge_colour_reflects_sign_and_width_reflects_magnitude(model, circuit):
    root = ET.fromstring(circuit_svg(circuit, model=model))
    edges = [g for g in root.iter(f"{SVG}g") if "edge" in _classes(g)]
    signs = set()
    widths = []
    for g in edges:
        weight = float(g.get("data-weight"))
        line = next(p for p in g.iter(f"{SVG}path") if "line" in _classes(p))
        assert line.get("stroke") == (POSITIVE if weight >= 0 else NEGATIVE)
        assert ("edge-pos" if weight >= 0 else "edge-neg") in _classes(g)
        signs.add(weight >= 0)
        widths.append((abs(weight), float(line.get("stroke-width"))))
    assert signs == {True, False}, "the fixture should have edges of both signs"
    widths.sort()
    assert all(w1 <= w2 for (_, w1), (_, w2) in zip(widths, widths[1:], strict=False))


def test_diagram_layout_groups_heads_and_aligns_residual_channels(model, circuit):
    root = ET.fromstring(circuit_svg(circuit, model=model))
    heads = [
        t.text for g in root.iter(f"{SVG}g") if "head" in _classes(g) for t in g.iter(f"{SVG}text")
    ]
    assert sorted(heads) == ["L1 head 0", "L1 head 1"]

    def position(name):
        g = next(g for g in root.iter(f"{SVG}g") if g.get("data-name") == name)
        x, y = re.match(r"translate\(([-\d.]+),([-\d.]+)\)", g.get("transform")).groups()
        return float(x), float(y)

    # the layer-0 MLP's write of channel 5 sits on the same residual wire as layer 1's read of it
    write, read = position("blocks.0.hook_mlp_out[5]"), position("blocks.1.attn.hook_read[5]")
    assert write[0] == read[0] and write[1] < read[1]
    # layers run top to bottom
    assert (
        position("blocks.0.mlp.hook_read[3]")[1]
        < position("blocks.0.mlp.hook_post[12]")[1]
        < write[1]
    )


def test_circuit_inputs_and_malformed_circuits(model, circuit, tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(circuit))

    class FakeCircuit:  # the Circuit class's contract: to_dict() gives the JSON dict
        def to_dict(self):
            return circuit

    for given in (circuit, path, str(path), FakeCircuit()):
        data = circuit_data(given)
        assert [n.name for n in data.nodes] == [n["name"] for n in circuit["nodes"]]
        assert len(data.edges) == len(circuit["edges"]) and data.task == "single_double_quote"

    with pytest.raises(SparseLensError, match="edge endpoint"):
        circuit_data(
            {
                **circuit,
                "edges": [
                    {
                        "src": "blocks.0.mlp.hook_post[1]",
                        "dst": "blocks.0.hook_mlp_out[5]",
                        "weight": 1,
                    }
                ],
            }
        )
    with pytest.raises(SparseLensError, match="not a node site"):
        circuit_data({"nodes": [{"hook": "blocks.0.hook_resid_pre", "index": 0}], "edges": []})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SparseLensError, match="bad.json"):
        circuit_data(bad)
    with pytest.raises(SparseLensError, match="out of range"):
        show_node_activations(
            model, {"nodes": [{"hook": "blocks.0.mlp.hook_post", "index": 10_000}]}, "x = 1"
        )


def test_real_circuit_class_renders_and_agrees_with_the_hand_built_edges(model, circuit):
    circuits = pytest.importorskip("sparse_lens.circuits")
    built = circuits.Circuit.build(
        model,
        [(n["hook"], n["index"]) for n in circuit["nodes"]],
        task="single_double_quote",
        split="validation",
        target_loss=0.15,
        achieved_loss=0.1,
        calibrated_loss=0.1,
        logit_scale=1.0,
        logit_shift=0.0,
        ablation="mean",
        seed=0,
    )
    ours = {(e["src"], e["dst"]): e["weight"] for e in circuit["edges"]}
    theirs = {(e.src, e.dst): e.weight for e in circuit_data(built).edges}
    assert theirs.keys() == ours.keys()
    assert all(theirs[key] == pytest.approx(ours[key], rel=1e-5) for key in ours)
    view = show_circuit(built, model)
    assert view._repr_svg_().count('class="edge ') == len(built.edges)


# ------------------------------------------------------------------ report
def test_report_is_self_contained(report_html):
    assert external_references(report_html) == []
    assert not re.search(r"<script[^>]*\bsrc\s*=", report_html, re.I)
    assert not re.search(r"<link\b", report_html, re.I)
    assert "unpkg" not in report_html.replace(circuitsvis_bundle(), "")
    assert (
        'http-equiv="Content-Security-Policy"' in report_html
        and "default-src 'none'" in report_html
    )
    # the 1.3 MB circuitsvis bundle is inlined once, whatever the number of visualisations
    assert report_html.count(circuitsvis_bundle()) == 1
    assert report_html.count('class="cv-vis"') >= 5
    assert len(report_html) < len(circuitsvis_bundle()) + 500_000


def test_report_contains_sections_and_validation_numbers(report_html, circuit):
    for value in ("0.0512", "0.1487", "2.3125", "0.9833", "0.0650", "146.0000", "0.1500"):
        assert value in report_html
    for key in validation_report():
        assert f'data-key="{key}"' in report_html
    for section in ("numbers", "diagram", "activations", "attention", "top"):
        assert f'<section id="{section}">' in report_html
    assert report_html.count('class="node ') == len(circuit["nodes"])
    assert "Class A" in report_html and "Class B" in report_html
    assert 'class="cv-vis" data-component="AttentionHeads"' in report_html
    assert 'class="cv-vis" data-component="ColoredTokensMulti"' in report_html
    assert report_html.count('class="node-snippets"') == len(circuit["nodes"])


def test_validation_table_shows_every_ablation_mode():
    """The validation report's full shape: own mode on top, all modes under by_ablation."""
    from sparse_lens.viz.tables import validation_html

    zero = {**validation_report(), "circuit_only_loss": 0.7777, "shuffled_label_target_met": False}
    report = {
        **validation_report(),
        "task": "single_double_quote",
        "ablation": "mean",
        "n_prompts": 128,
        "split": "test",
        "n_random": 3,
        "random_match": "type",
        "shuffled_label_target_met": True,
        "new_metric": 1.25,
        "by_ablation": {"mean": validation_report(), "zero": zero},
    }
    table = validation_html(report, circuit_data({"nodes": [], "edges": []}))
    assert "mean ablation (the circuit&#x27;s)" in table and "zero ablation" in table
    assert '<td class="num" data-key="circuit_only_loss" data-mode="zero">0.7777</td>' in table
    assert '<td class="num" data-key="circuit_only_loss">0.1487</td>' in table
    assert '<td class="num" data-key="shuffled_label_target_met">yes</td>' in table
    assert 'data-key="new_metric">1.2500' in table  # unknown keys are still shown
    assert "128 prompts (test split)" in table and "matched by type" in table


def test_report_external_reference_checker_catches_loads():
    page = "<html><head><style>p { color: red }</style></head><body><pre>see http://example.org</pre></body></html>"
    assert external_references(page) == []  # text is never fetched
    for bad in (
        '<script src="https://cdn.example/x.js"></script>',
        '<script src="local.js"></script>',
        '<link rel="stylesheet" href="https://x/y.css">',
        '<img src="http://x/y.png">',
        '<div style="background: url(https://x/y.png)"></div>',
        "<style>@import 'https://x/y.css';</style>",
        '<script>fetch("https://x/y")</script>',
        '<script type="module">import { render } from "https://unpkg.com/circuitsvis/dist/cdn/esm.js";</script>',
        '<svg><image href="https://x/y.png"/></svg>',
    ):
        assert external_references(page.replace("<body>", "<body>" + bad)), bad


def test_write_report_is_deterministic_and_uses_task_examples(model, circuit, tmp_path):
    heldout = heldout_tokens(model, n_windows=3)
    a = write_report(
        model,
        circuit,
        "single_double_quote",
        validation_report(),
        out_path=tmp_path / "a.html",
        examples=1,
        heldout=heldout,
    )
    b = write_report(
        model,
        circuit,
        out_path=tmp_path / "sub" / "b.html",
        examples=1,
        heldout=heldout,
        validation=validation_report(),
    )
    assert a.read_text() == b.read_text()
    # validation given as a JSON file; prompts given as text (no classes then)
    (tmp_path / "v.json").write_text(json.dumps(validation_report()))
    page = render_report(
        model, circuit, validation=tmp_path / "v.json", examples=["print('hello", 'x = "a']
    ).replace(circuitsvis_bundle(), "")
    assert (
        "2.3125" in page
        and "Class A" not in page
        and page.count('class="cv-vis" data-component="ColoredTokensMulti"') == 2
    )
    with pytest.raises(SparseLensError, match="validation report file not found"):
        render_report(model, circuit, validation=tmp_path / "missing.json", examples=["x"])


def test_report_cli(model, circuit, tmp_path, capsys):
    circuits = pytest.importorskip("sparse_lens.circuits")
    from sparse_lens.cli import main

    model.save_pretrained(tmp_path / "model")
    built = circuits.Circuit.build(
        model,
        [(n["hook"], n["index"]) for n in circuit["nodes"]],
        task="single_double_quote",
        split="validation",
        target_loss=0.15,
        achieved_loss=0.1,
        calibrated_loss=0.1,
        logit_scale=1.0,
        logit_shift=0.0,
        ablation="mean",
        seed=0,
    )
    built.save(tmp_path / "c.json")
    (tmp_path / "v.json").write_text(json.dumps(validation_report()))
    out = tmp_path / "r.html"
    code = main(
        [
            "report",
            str(tmp_path / "model"),
            "--task",
            "single_double_quote",
            "--circuit",
            str(tmp_path / "c.json"),
            "--validation",
            str(tmp_path / "v.json"),
            "--out",
            str(out),
            "--examples",
            "1",
            "--heldout-windows",
            "0",
        ]
    )
    assert code == 0 and "wrote" in capsys.readouterr().out
    html = out.read_text()
    assert external_references(html) == [] and "2.3125" in html
    assert (
        main(
            [
                "report",
                str(tmp_path / "model"),
                "--task",
                "single_double_quote",
                "--circuit",
                str(tmp_path / "nope.json"),
                "--out",
                str(out),
            ]
        )
        == 2
    )

    # No --circuit / --validation: the model's own circuits/<task>.json and the report beside it
    own = tmp_path / "model" / "circuits"
    own.mkdir()
    built.save(own / "single_double_quote.json")
    (own / "single_double_quote.validation.json").write_text(
        json.dumps({**validation_report(), "n_edges": built.n_edges, "task": built.task})
    )
    args = ["report", str(tmp_path / "model"), "--task", "single_double_quote", "--out", str(out)]
    assert main([*args, "--examples", "1", "--heldout-windows", "0"]) == 0
    assert "2.3125" in out.read_text()
    # a validation report of another circuit is refused, naming the field
    (own / "single_double_quote.validation.json").write_text(
        json.dumps({**validation_report(), "n_edges": built.n_edges + 1})
    )
    capsys.readouterr()
    assert main([*args, "--examples", "1", "--heldout-windows", "0"]) == 2
    assert "n_edges" in capsys.readouterr().err


# ------------------------------------------------------------------ activations
def test_node_activations_read_the_node_sites(model, circuit):
    tokens = heldout_tokens(model, n_windows=2, n_pos=10)
    acts = node_activations(model, circuit, tokens)
    _, cache = model.run_with_cache(tokens)
    for j, node in enumerate(circuit["nodes"]):
        expected = cache[node["hook"]].flatten(2)[..., node["index"]]
        torch.testing.assert_close(acts[..., j], expected)


def test_top_activating_snippets_mark_the_peak(model, circuit):
    heldout = heldout_tokens(model, n_windows=5, n_pos=16)
    snippets = top_activating(model, circuit, heldout, k=2, before=4, after=2)
    acts = node_activations(model, circuit, heldout)
    assert any(snippets.values()) and not all(snippets.values()), "want active and silent nodes"
    for j, node in enumerate(circuit["nodes"]):
        items = snippets[node["name"]]
        peaks = acts[..., j].abs().amax(dim=1)  # [window]
        assert len(items) == min(2, int((peaks > 0).sum()))  # windows where it is zero are left out
        if items:
            assert abs(items[0].value) == pytest.approx(float(peaks.max()))
        for s in items:
            assert s.tokens[s.highlight] == int(heldout[s.window, s.position])
            assert s.values[s.highlight] == pytest.approx(s.value)
            assert len(s.tokens) == len(s.values) <= 4 + 1 + 2


# ------------------------------------------------------------------ notebook views
def test_inline_views(model, circuit):
    view = show_circuit(circuit, model)
    assert "<svg" in view._repr_html_() and view._repr_svg_().startswith(
        '<svg xmlns="http://www.w3.org/2000/svg"'
    )
    assert external_references(view._repr_html_()) == []
    # without a model: no descriptions and no d_head, but every node and edge is still drawn
    bare = ET.fromstring(show_circuit(circuit)._repr_svg_())
    assert sum("node" in _classes(g) for g in bare.iter(f"{SVG}g")) == len(circuit["nodes"])
    assert sum("edge" in _classes(g) for g in bare.iter(f"{SVG}g")) == len(circuit["edges"])
    empty = ET.fromstring(circuit_svg({"nodes": [], "edges": []}))
    assert not [g for g in empty.iter(f"{SVG}g") if "node" in _classes(g)]

    acts = show_node_activations(model, circuit, ["print('hi", 'x = "a'])
    heads = show_head_patterns(model, "def f(x):\n    return x", heads=[(1, 0), (1, 1)])
    for shown, component, count in ((acts, "ColoredTokensMulti", 2), (heads, "AttentionHeads", 1)):
        html = shown._repr_html_()
        assert html.count(f'class="cv-vis" data-component="{component}"') == count
        assert html.count(circuitsvis_bundle()) == 1
        assert external_references(html) == []
        assert external_references(shown.page()) == [] and "Content-Security-Policy" in shown.page()
    assert show_head_patterns(model, torch.tensor([[1, 2, 3]]))._repr_html_().count("L1H1") == 1
    with pytest.raises(SparseLensError, match="no head 5"):
        show_head_patterns(model, "x", heads=[(0, 5)])


# ------------------------------------------------------------------ training curves
def _metrics() -> list[dict]:
    records = []
    for step in range(1, 41):
        records.append(
            {
                "step": step,
                "tokens": step * 1024,
                "loss": 5 / step**0.3,
                "l0": max(0.05, 1 - step / 30),
            }
        )
        if step % 10 == 0:
            records.append({"step": step, "tokens": step * 1024, "heldout_loss": 5.2 / step**0.3})
    return records


def test_training_curves(tmp_path):
    pytest.importorskip("matplotlib")
    from sparse_lens.viz import plot_training_curves

    fig = plot_training_curves(_metrics())
    loss_ax, l0_ax = fig.axes
    assert [line.get_label() for line in loss_ax.get_lines()] == ["train loss", "held-out loss"]
    assert (
        len(loss_ax.get_lines()[0].get_xdata()) == 40
        and len(loss_ax.get_lines()[1].get_xdata()) == 4
    )
    assert loss_ax.get_xlabel() == "tokens" and "L0" in l0_ax.get_ylabel()
    fig.savefig(tmp_path / "curves.png")

    path = tmp_path / "metrics.jsonl"
    path.write_text(
        "".join(json.dumps(r) + "\n" for r in _metrics()) + '{"step": 41, "lo'
    )  # torn last line
    assert len(plot_training_curves(path).axes[0].get_lines()[0].get_xdata()) == 40
    assert len(plot_training_curves(tmp_path).axes) == 2  # a run directory
    with pytest.raises(SparseLensError, match="no 'loss'"):
        plot_training_curves([{"step": 1, "lr": 0.1}])
