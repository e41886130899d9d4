"""Circuits end to end: mean cache, masks, pruning, the Circuit file, validation, CLI.

The central check trains a tiny AbsTopK model on a synthetic language with one planted rule
(tests/planted.py: an opener A1/B1 early, a query token Q last, answer the matching closer)
and shows that pruning recovers a circuit that meets the target, that keeping only it is
sufficient, and that ablating it breaks the task far more than ablating random node sets of the
same size and type mix. Everything runs on one thread (tiny tensors: threads only contend).
"""

from __future__ import annotations

import json
import math
import statistics
from collections import defaultdict
from dataclasses import replace

import planted
import pytest
import torch
from helpers import random_tokens, tiny_model, tiny_model_with_tokenizer

from sparse_lens.circuits import (
    Circuit,
    CompareRow,
    PruneConfig,
    answer_logits,
    binary_loss,
    calibrate,
    circuit_edges,
    compute_mean_cache,
    geometric_mean_ratio,
    heaviside_gate,
    hooked_loss,
    keep_hooks,
    load_mean_cache,
    make_ablation,
    mean_cache_for,
    prune,
    random_node_sets,
    shuffle_pair_labels,
    validate,
    weights_hash,
)
from sparse_lens.circuits.registry import ablation_names
from sparse_lens.cli import main as cli_main
from sparse_lens.errors import SparseLensError
from sparse_lens.nodes import node_sites
from sparse_lens.tasks.batch import TaskBatch, task_loss

TARGET = 0.15
PLANTED_CONFIG = PruneConfig(target_loss=TARGET, steps=60, batch_pairs=32, seed=0)  # default search
FAST_CONFIG = PruneConfig(
    target_loss=TARGET, steps=15, batch_pairs=16, search=((10.0, 10.0),), seed=3
)


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def model():
    return planted.train_planted()


@pytest.fixture(scope="module")
def cache(model):
    return compute_mean_cache(model, planted.pretraining_tokens(256, seed=5), n_bank=256)


@pytest.fixture(scope="module")
def data():
    return {
        "train": planted.planted_batch(256, seed=10),
        "val": planted.planted_batch(64, seed=11),
        "test": planted.planted_batch(64, seed=12),
    }


@pytest.fixture(scope="module")
def result(model, cache, data):
    return prune(
        model, data["train"], data["val"], config=PLANTED_CONFIG, cache=cache, progress=False
    )


@pytest.fixture(scope="module")
def circuit(result):
    assert result.circuit is not None
    return result.circuit


# ------------------------------------------------------------------------------------- pieces


def test_gate_is_binary_with_sigmoid_surrogate_gradient():
    tau = torch.tensor([-0.7, -0.1, 0.0, 0.2, 0.9], requires_grad=True)
    for temperature in (1.0, 0.5):
        tau.grad = None
        gate = heaviside_gate(tau, temperature)
        assert gate.tolist() == [0.0, 0.0, 0.0, 1.0, 1.0]
        gate.sum().backward()
        s = torch.sigmoid(tau.detach() / temperature)
        torch.testing.assert_close(tau.grad, s * (1 - s) / temperature)


def test_answer_logits_equal_the_task_loss_on_full_logits():
    model = tiny_model(
        seed=1, density=0.5, positional_embedding_type="standard", bigram_table="learnable"
    )
    tokens = random_tokens(model, batch=6, n_pos=10, seed=2)
    batch = TaskBatch(
        tokens=tokens,
        last_pos=torch.tensor([9, 4, 7, 9, 2, 5]),
        answer_ids=torch.randint(
            0, model.cfg.d_vocab, (6, 2), generator=torch.Generator().manual_seed(3)
        ),
        label=torch.tensor([0, 1, 0, 1, 1, 0]),
        pair_index=torch.arange(3).repeat_interleave(2),
        prompts=[""] * 6,
    )
    ours = binary_loss(answer_logits(model, batch), batch.label)
    theirs, _ = task_loss(model(tokens), batch, reduction="none")
    torch.testing.assert_close(ours, theirs)


def test_means_are_taken_after_abstopk_at_every_node_site(model):
    tokens = planted.pretraining_tokens(24, seed=9)
    cache = compute_mean_cache(model, tokens, batch_size=7)
    _, acts = model.run_with_cache(tokens)
    sites = node_sites(model.cfg)
    assert set(cache.means) == {s.hook for s in sites}
    for site in sites:
        expected = acts[site.hook].reshape(-1, site.width).mean(0)
        torch.testing.assert_close(cache.means[site.hook], expected, atol=1e-5, rtol=1e-4)
    # q channels after AbsTopK: 3/4 of every token's q entries are exactly zero, and the dense
    # (AbsTopK off) mean of the same model is a different vector
    assert (acts["blocks.0.attn.hook_q"] == 0).float().mean() >= 0.74
    dense = planted.SparseTransformer(replace(model.cfg, afrac=None))
    dense.load_state_dict(model.state_dict())
    _, dense_acts = dense.run_with_cache(tokens)
    dense_mean = (
        dense_acts["blocks.0.attn.hook_q"]
        .reshape(-1, site_width(model, "blocks.0.attn.hook_q"))
        .mean(0)
    )
    assert not torch.allclose(cache.means["blocks.0.attn.hook_q"], dense_mean, atol=1e-3)


def site_width(model, hook):
    return next(s.width for s in node_sites(model.cfg) if s.hook == hook)


def test_mean_cache_is_saved_reused_and_recomputed_when_weights_change(tmp_path, monkeypatch):
    model = planted.SparseTransformer(
        planted.planted_config(d_model=32, n_heads=2, d_mlp=32), seed=4
    )
    tokens = planted.pretraining_tokens(16, seed=1)
    first = mean_cache_for(model, tmp_path, tokens=tokens, n_bank=8, progress=False)
    saved = load_mean_cache(tmp_path / "mean_cache.safetensors")
    assert saved.weights_hash == weights_hash(model) == first.weights_hash
    assert saved.n_tokens == tokens.numel()
    for hook in first.means:
        assert torch.equal(saved.means[hook], first.means[hook])
        assert torch.equal(saved.bank[hook], first.bank[hook])

    import sparse_lens.circuits.ablation as ablation

    def refuse(*args, **kwargs):
        raise AssertionError("recomputed although the weights hash matched")

    monkeypatch.setattr(ablation, "compute_mean_cache", refuse)
    reused = mean_cache_for(model, tmp_path, progress=False)  # no tokens: must come from the file
    assert reused.weights_hash == first.weights_hash
    monkeypatch.undo()

    with torch.no_grad():
        model.blocks[0].mlp.W_in.mul_(2.0)
    with pytest.raises(SparseLensError) as info:
        first.check_model(model)  # a cache of other weights is refused, not silently used
    assert info.value.field == "weights_hash"
    updated = mean_cache_for(model, tmp_path, tokens=tokens, n_bank=8, progress=False)
    assert updated.weights_hash == weights_hash(model) != first.weights_hash
    assert load_mean_cache(tmp_path / "mean_cache.safetensors").weights_hash == weights_hash(model)
    (tmp_path / "mean_cache.safetensors").write_bytes(b"not safetensors")
    with pytest.raises(SparseLensError, match="mean cache"):
        load_mean_cache(tmp_path / "mean_cache.safetensors")


def test_mean_cache_of_a_shipped_model_goes_to_the_user_cache(tmp_path, monkeypatch):
    """A model folder inside the package is read from, never written to (a notebook or a
    script calling mean_cache_for on a shipped model must not grow the installed package)."""
    import sparse_lens.pretrained

    package = tmp_path / "pretrained"
    shipped = package / "some-model"
    shipped.mkdir(parents=True)
    monkeypatch.setattr(sparse_lens.pretrained, "PRETRAINED_DIR", package)
    monkeypatch.setenv("SPARSE_LENS_CACHE", str(tmp_path / "user-cache"))
    model = planted.SparseTransformer(
        planted.planted_config(d_model=32, n_heads=2, d_mlp=32), seed=4
    )
    tokens = planted.pretraining_tokens(16, seed=1)
    mean_cache_for(model, shipped, tokens=tokens, n_bank=8, progress=False)
    assert list(shipped.iterdir()) == []
    saved = list((tmp_path / "user-cache" / "mean_cache").glob("*.safetensors"))
    assert len(saved) == 1
    assert load_mean_cache(saved[0]).weights_hash == weights_hash(model)


def test_ablation_modes_replace_closed_nodes(model, cache):
    tokens = planted.pretraining_tokens(4, seed=3)
    everything = {s.hook: torch.zeros(s.width, dtype=torch.bool) for s in node_sites(model.cfg)}
    seen: dict[str, torch.Tensor] = {}

    def record(act, hook):
        seen[hook.name] = act.detach().clone()

    readers = [(s.hook, record) for s in node_sites(model.cfg)]

    # all nodes open: the hooks change nothing; all closed: every site holds the ablation value
    baseline = model(tokens)
    open_all = {h: ~m for h, m in everything.items()}
    with model.hooks(fwd_hooks=keep_hooks(model, open_all, make_ablation("mean", cache))):
        torch.testing.assert_close(model(tokens), baseline)
    for mode in ("mean", "zero"):
        hooks = keep_hooks(model, everything, make_ablation(mode, cache)) + readers
        with model.hooks(fwd_hooks=hooks):
            model(tokens)
        for site in node_sites(model.cfg):
            flat = seen[site.hook].reshape(*seen[site.hook].shape[:2], -1)
            expected = cache.means[site.hook] if mode == "mean" else torch.zeros(site.width)
            torch.testing.assert_close(flat, expected.expand_as(flat))

    # resample: every (batch, pos) takes one bank row, the SAME row at every site, reproducibly
    def resampled(seed):
        with model.hooks(
            fwd_hooks=keep_hooks(model, everything, make_ablation("resample", cache, seed))
            + readers
        ):
            model(tokens)
        return {h: t.reshape(*t.shape[:2], -1).clone() for h, t in seen.items()}

    first, again, other = resampled(0), resampled(0), resampled(1)
    hooks = list(first)
    same_row = torch.ones(*first[hooks[0]].shape[:2], cache.n_bank, dtype=torch.bool)
    for hook in hooks:  # [batch, pos, bank row]: this row matches at every site so far
        same_row &= (first[hook][..., None, :] == cache.bank[hook]).all(-1)
        assert torch.equal(first[hook], again[hook])
    assert same_row.any(-1).all()
    assert not all(torch.equal(first[h], other[h]) for h in hooks)
    assert ablation_names()[:3] == ["mean", "zero", "resample"]
    with pytest.raises(SparseLensError, match="ablation"):
        make_ablation("median", cache)
    with pytest.raises(SparseLensError, match="mean cache"):
        make_ablation("mean", None)


def test_calibration_fits_scale_and_shift_on_the_logit_difference():
    generator = torch.Generator().manual_seed(0)
    label = torch.randint(0, 2, (200,), generator=generator)
    signal = (1 - 2 * label).float() * 0.3 + 0.05 * torch.randn(
        200, generator=generator
    )  # right, timid
    logits = torch.stack([signal + 2.0, torch.zeros(200)], dim=1)  # and biased towards A
    raw = float(binary_loss(logits, label).mean())
    scale, shift, calibrated = calibrate(logits, label, steps=16)
    assert calibrated < raw / 4
    assert scale > 1 and shift < 0
    d = scale * (logits[:, 0] - logits[:, 1]) + shift
    assert math.isclose(
        float(binary_loss(torch.stack([d, torch.zeros_like(d)], 1), label).mean()),
        calibrated,
        rel_tol=1e-4,
    )


# ------------------------------------------------------------------------------- the planted task


def test_pruning_recovers_a_sufficient_and_necessary_planted_circuit(
    model, cache, data, result, circuit, capsys
):
    n_total = sum(s.width for s in node_sites(model.cfg))
    assert result.full_loss < 0.02  # the model learned the rule
    assert result.target_met and circuit.target_met
    assert circuit.achieved_loss <= TARGET
    assert 0 < circuit.n_nodes < n_total / 10
    assert circuit.calibrated_loss <= circuit.achieved_loss
    types = {n.type for n in circuit.nodes}
    assert {"q", "k", "v"} <= types  # the rule needs attention from Q to the opener

    # sufficiency, recomputed through Circuit.hooks on full-sequence logits (TL run_with_hooks)
    hooks = circuit.hooks(model, make_ablation("mean", cache), mode="keep")
    with torch.no_grad():
        logits = model.run_with_hooks(data["val"].tokens, fwd_hooks=hooks)
    only, _ = task_loss(logits, data["val"])
    assert math.isclose(float(only), circuit.achieved_loss, rel_tol=1e-4)
    assert float(only) <= TARGET

    report = validate(
        model,
        circuit,
        data["test"],
        cache,
        ablations=(),
        n_random=20,
        shuffled=False,
        progress=False,
    )
    random_only, random_ablated = report["random_circuit_only_loss"], report["random_ablated_loss"]
    assert len(random_only) == len(random_ablated) == 20
    assert report["circuit_only_loss"] <= 1.5 * TARGET  # and it generalises to fresh pairs
    assert min(random_only) > 3 * report["circuit_only_loss"]
    # necessity: ablating the circuit breaks the task; a random set of the same size and mix
    # barely matters (the odd one that hits a lone query/key channel does, hence the median)
    assert report["circuit_ablated_loss"] > 0.5
    assert report["circuit_ablated_loss"] > 10 * statistics.median(random_ablated)
    assert report["circuit_ablated_loss"] > 1.5 * statistics.fmean(random_ablated)
    print(
        f"\nplanted: full {report['full_loss']:.4f}, circuit-only {report['circuit_only_loss']:.4f}, "
        f"ablated {report['circuit_ablated_loss']:.4f}, random-only median {statistics.median(random_only):.4f}, "
        f"random-ablated median {statistics.median(random_ablated):.4f} / mean {statistics.fmean(random_ablated):.4f} "
        f"/ max {max(random_ablated):.4f}; "
        f"{circuit.n_nodes} nodes, {circuit.n_edges} edges"
    )


def test_random_node_sets_match_size_and_type_mix(model, circuit):
    mix = sorted(n.type for n in circuit.nodes)
    sites = {s.hook: s for s in node_sites(model.cfg)}
    sets = random_node_sets(model, circuit, 5, seed=1)
    for nodes in sets:
        assert len(set(nodes)) == circuit.n_nodes
        assert sorted(sites[h].type for h, _ in nodes) == mix
    assert sets != random_node_sets(model, circuit, 5, seed=2)


def independent_edge_count(model, nodes) -> tuple[int, dict[tuple[str, str], float]]:
    """Count nonzero weights between kept nodes by walking the TL weight tensors directly."""
    kept = defaultdict(list)
    for hook, index in nodes:
        kept[hook].append(index)
    d_head = model.cfg.d_head
    found: dict[tuple[str, str], float] = {}

    def add(src_hook, i, dst_hook, j, w):
        w = w.detach()
        if w != 0:
            found[(f"{src_hook}[{i}]", f"{dst_hook}[{j}]")] = w.item()

    for layer in range(model.cfg.n_layers):
        b = f"blocks.{layer}."
        attn, mlp = model.blocks[layer].attn, model.blocks[layer].mlp
        for kind, W in (("q", attn.W_Q), ("k", attn.W_K), ("v", attn.W_V)):
            for j in kept[b + f"attn.hook_{kind}"]:
                head, c = divmod(j, d_head)
                for i in kept[b + "attn.hook_read"]:
                    add(b + "attn.hook_read", i, b + f"attn.hook_{kind}", j, W[head, i, c])
        for j in kept[b + "attn.hook_v"]:
            head, c = divmod(j, d_head)
            for m in kept[b + "hook_attn_out"]:
                add(b + "attn.hook_v", j, b + "hook_attn_out", m, attn.W_O[head, c, m])
        for n in kept[b + "mlp.hook_post"]:
            for i in kept[b + "mlp.hook_read"]:
                add(b + "mlp.hook_read", i, b + "mlp.hook_post", n, mlp.W_in[i, n])
            for m in kept[b + "hook_mlp_out"]:
                add(b + "mlp.hook_post", n, b + "hook_mlp_out", m, mlp.W_out[n, m])
    return len(found), found


def test_edges_equal_an_independent_count_from_the_weights(model, circuit):
    nodes = [(n.hook, n.index) for n in circuit.nodes]
    count, weights = independent_edge_count(model, nodes)
    assert circuit.n_edges == len(circuit.edges) == count > 0
    assert {(e.src, e.dst): e.weight for e in circuit.edges} == weights

    # a 2-layer model with concatenated positions (reads wider than d_model) and a random half
    other = tiny_model(seed=5, density=0.2, positional_embedding_type="concat", d_pos_emb=8)
    generator = torch.Generator().manual_seed(0)
    half = [
        (s.hook, i)
        for s in node_sites(other.cfg)
        for i in range(s.width)
        if torch.rand(1, generator=generator) < 0.5
    ]
    count, weights = independent_edge_count(other, half)
    edges = circuit_edges(other, half)
    assert len(edges) == count > 100
    assert {(e.src, e.dst): e.weight for e in edges} == weights


def test_io_connections_are_listed_apart_from_edges(model, circuit):
    reads = [n for n in circuit.nodes if n.type in ("attn_read", "mlp_read")]
    writes = [n for n in circuit.nodes if n.type in ("attn_write", "mlp_write")]
    io = circuit.io_connections
    assert [c.dst for c in io if c.src == "embed.W_E"] == [n.name for n in reads]
    assert [c.src for c in io if c.dst == "unembed.W_U"] == [n.name for n in writes]
    for c in io:
        if c.src == "embed.W_E":
            index = int(c.dst.rsplit("[", 1)[1][:-1])
            assert c.n_weights == int(model.W_E[:, index].count_nonzero())
    assert not any("embed" in e.src or "unembed" in e.dst for e in circuit.edges)


def test_json_round_trip_is_exact(model, circuit, tmp_path):
    data = json.loads(circuit.to_json_str())
    for key in (
        "task",
        "target_loss",
        "achieved_loss",
        "ablation",
        "nodes",
        "edges",
        "n_nodes",
        "n_edges",
    ):
        assert key in data
    assert set(data["nodes"][0]) == {"hook", "index", "name", "type"}
    assert set(data["edges"][0]) == {"src", "dst", "weight"}
    assert Circuit.from_dict(data) == circuit
    path = circuit.save(tmp_path / "c.json")
    loaded = Circuit.load(path, model)
    reloaded = type(model).from_pretrained(model.save_pretrained(tmp_path / "model"))
    assert weights_hash(reloaded) == circuit.weights_hash  # -0.0 in masked weights hashes as 0
    assert Circuit.load(path, reloaded) == circuit
    assert loaded == circuit
    text = path.read_text()
    loaded.save(tmp_path / "again.json")
    assert (tmp_path / "again.json").read_text() == text
    assert circuit.nodes[0].name == f"{circuit.nodes[0].hook}[{circuit.nodes[0].index}]"


def test_same_seed_gives_the_same_circuit(model, cache, data):
    # 20 refinement trials still exercise every stage; a converged refinement of the short
    # run's large circuit is what made this the suite's slowest test (three prunes)
    config = replace(FAST_CONFIG, refine_max_trials=20)
    runs = [
        prune(model, data["train"], data["val"], config=config, cache=cache, progress=False)
        for _ in range(2)
    ]
    assert runs[0].circuit is not None
    assert runs[0].circuit == runs[1].circuit
    assert runs[0].circuit.to_json_str() == runs[1].circuit.to_json_str()
    assert torch.equal(runs[0].tau, runs[1].tau)
    with torch.no_grad():  # as in an analysis notebook: pruning switches gradients back on
        inside = prune(
            model, data["train"], data["val"], config=config, cache=cache, progress=False
        )
    assert inside.circuit == runs[0].circuit


def test_unreachable_target_is_reported_honestly(model, cache, data):
    config = replace(FAST_CONFIG, target_loss=1e-9, steps=5)
    out = prune(model, data["train"], data["val"], config=config, cache=cache, progress=False)
    assert out.circuit is None and not out.target_met
    assert out.best_loss <= out.full_loss + 1e-6 and out.best_loss > 1e-9


def test_validation_report_with_shuffled_labels_under_mean_and_zero(model, cache, data, circuit):
    nonsense = shuffle_pair_labels(data["train"], seed=0)
    assert torch.equal(nonsense.tokens, data["train"].tokens)
    swapped = nonsense.label != data["train"].label
    assert 0.3 < swapped.float().mean() < 0.7
    pairs = nonsense.pair_index
    assert all(swapped[pairs == p].all() or not swapped[pairs == p].any() for p in range(5))

    report = validate(
        model,
        circuit,
        data["test"],
        cache,
        train=data["train"],
        n_random=3,
        shuffled_config=replace(FAST_CONFIG, steps=20),
        progress=False,
    )
    for key in (
        "full_loss",
        "circuit_only_loss",
        "circuit_ablated_loss",
        "random_circuit_only_loss",
        "random_ablated_loss",
        "shuffled_label_circuit_edges",
    ):
        assert key in report
    assert set(report["by_ablation"]) == {"mean", "zero"}
    for mode in ("mean", "zero"):
        entry = report["by_ablation"][mode]
        assert len(entry["random_ablated_loss"]) == 3
        assert isinstance(entry["shuffled_label_loss"], float)
        assert isinstance(entry["shuffled_label_target_met"], bool)
        edges = entry["shuffled_label_circuit_edges"]
        assert (edges is None) == (not entry["shuffled_label_target_met"])
    assert report["circuit_only_loss"] == report["by_ablation"]["mean"]["circuit_only_loss"]
    json.dumps(report)  # JSON-ready
    from sparse_lens.circuits import format_report

    table = format_report(report)
    assert "circuit only" in table and "zero ablation" in table


def test_pruning_runs_unchanged_on_a_dense_model(data):
    dense = planted.SparseTransformer(
        planted.planted_config(afrac=None, d_model=32, n_heads=2, d_mlp=32), seed=1
    )
    sparse = planted.SparseTransformer(
        planted.planted_config(d_model=32, n_heads=2, d_mlp=32), seed=1
    )
    assert node_sites(dense.cfg) == node_sites(sparse.cfg)
    full = hooked_loss(dense, data["val"])
    config = replace(FAST_CONFIG, ablation="zero", target_loss=full + 0.05, steps=5)
    out = prune(dense, data["train"], data["val"], config=config, progress=False)
    assert out.circuit is not None and out.circuit.achieved_loss <= full + 0.05
    rows = [
        CompareRow("a", 10, 160, 5, 50, 0.1, 0.1),
        CompareRow("b", 0, 40, 1, 9, 0.1, 0.1),
        CompareRow("c", None, 7, None, 3, 0.9, 0.1),
    ]
    assert math.isclose(geometric_mean_ratio(rows), math.sqrt(16 * 40))


# ------------------------------------------------------------------------------ bad circuit files


def _bad(circuit, edit):
    data = json.loads(circuit.to_json_str())
    edit(data)
    return data


def _move_node(data, hook=None, index=None):
    """Point node 0 elsewhere, renaming it consistently everywhere it is referenced."""
    node = data["nodes"][0]
    old = node["name"]
    node["hook"] = hook or node["hook"]
    node["index"] = node["index"] if index is None else index
    node["name"] = f"{node['hook']}[{node['index']}]"
    for edge in data["edges"]:
        for end in ("src", "dst"):
            if edge[end] == old:
                edge[end] = node["name"]


@pytest.mark.parametrize(
    "edit, field",
    [
        (lambda d: _move_node(d, hook="blocks.0.attn.hook_nope"), "nodes[0].hook"),
        (lambda d: _move_node(d, index=100000), "nodes[0].index"),
        (
            lambda d: d["nodes"][0].update(
                type="neuron" if d["nodes"][0]["type"] != "neuron" else "q"
            ),
            "nodes[0].type",
        ),
        (lambda d: d["edges"][0].update(weight=d["edges"][0]["weight"] + 1.0), "edges"),
        (lambda d: d.update(weights_hash="0" * 64), "weights_hash"),
    ],
)
def test_circuit_that_does_not_fit_the_model_is_refused(model, circuit, tmp_path, edit, field):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(_bad(circuit, edit)))
    Circuit.load(path)  # structurally fine on its own
    with pytest.raises(SparseLensError) as info:
        Circuit.load(path, model)
    assert info.value.field == field
    assert str(path) in str(info.value)


@pytest.mark.parametrize(
    "text, field",
    [
        ("{not json", None),
        ("[1, 2]", None),
        (lambda d: d.pop("task"), "task"),
        (lambda d: d.update(n_nodes=d["n_nodes"] + 1), "n_nodes"),
        (lambda d: d["nodes"][1].pop("index"), "nodes[1].index"),
        (lambda d: d["nodes"][0].update(name="blocks.9.mlp.hook_post[1]"), "nodes[0].name"),
        (lambda d: d.update(target_loss="low"), "target_loss"),
        (lambda d: d.update(colour="blue"), "colour"),
        (lambda d: d["edges"][0].update(src="blocks.0.mlp.hook_post[99999]"), "edges[0].src"),
    ],
)
def test_malformed_circuit_files_are_clear_errors(circuit, tmp_path, text, field):
    path = tmp_path / "bad.json"
    path.write_text(text if isinstance(text, str) else json.dumps(_bad(circuit, text)))
    with pytest.raises(SparseLensError) as info:
        Circuit.load(path)
    assert info.value.field == field
    assert str(path) in str(info.value)
    with pytest.raises(SparseLensError, match="no such circuit file"):
        Circuit.load(tmp_path / "missing.json")


# ------------------------------------------------------------------------------------------- CLI


def _one_line_error(capsys):
    err = capsys.readouterr().err.strip()
    assert err.startswith("sparse-lens: error:") and "\n" not in err
    return err


def test_cli_show_and_errors(model, circuit, tmp_path, capsys):
    model_dir = model.save_pretrained(tmp_path / "planted")
    good = circuit.save(tmp_path / "c.json")
    assert cli_main(["circuit", "show", str(good)]) == 0
    out = capsys.readouterr().out
    assert circuit.nodes[0].name in out and f"{circuit.n_edges} edges" in out
    assert f"{circuit.edges[0].src} -> {circuit.edges[0].dst}" in out
    assert cli_main(["circuit", "show", str(good), "--model", str(model_dir)]) == 0
    assert "layer 0" in capsys.readouterr().out

    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(_bad(circuit, lambda d: d.pop("nodes"))))
    assert cli_main(["circuit", "show", str(bad)]) == 2
    assert "nodes" in _one_line_error(capsys)

    other = planted.SparseTransformer(planted.planted_config(), seed=7)
    other_dir = other.save_pretrained(tmp_path / "other")
    assert cli_main(["validate", str(other_dir), str(good)]) == 2
    assert "weights_hash" in _one_line_error(capsys)

    with pytest.raises(SystemExit) as info:
        cli_main(
            ["prune", str(model_dir), "--task", "x", "--out", "o.json", "--ablation", "median"]
        )
    assert info.value.code == 2
    assert "resample" in capsys.readouterr().err  # choices come from the registry


def test_cli_prune_validate_compare_end_to_end(tmp_path, capsys, monkeypatch):
    """A real task (tasks package) on a tiny random model with its own tokenizer; the target is
    set above the model's loss, so this checks plumbing (files, cache, exit codes), not quality."""
    monkeypatch.setenv("SPARSE_LENS_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i in range(8):
        (corpus / f"m{i}.py").write_text(
            "".join(f"def f{j}(x):\n    return x * {j} + {i}\n" for j in range(60))
        )
    sparse = tiny_model_with_tokenizer(seed=0)
    dense = tiny_model_with_tokenizer(seed=1, afrac=None)
    sparse_dir = sparse.save_pretrained(tmp_path / "sparse")
    dense_dir = dense.save_pretrained(tmp_path / "dense")
    common = ["--corpus", str(corpus), "--mean-tokens", "512", "--no-progress"]
    out = tmp_path / "quote.json"
    code = cli_main(
        [
            "prune",
            str(sparse_dir),
            "--task",
            "single_double_quote",
            "--target-loss",
            "5",
            "--steps",
            "2",
            "--seed",
            "1",
            "--out",
            str(out),
            *common,
        ]
    )
    assert code == 0, capsys.readouterr().err
    assert "single_double_quote" in capsys.readouterr().out
    assert (sparse_dir / "mean_cache.safetensors").is_file()
    circuit = Circuit.load(out, sparse)
    assert circuit.task == "single_double_quote" and circuit.seed == 1 and circuit.target_met

    report = tmp_path / "report.json"
    code = cli_main(
        [
            "validate",
            str(sparse_dir),
            str(out),
            "--n-pairs",
            "8",
            "--n-random",
            "2",
            "--no-shuffled",
            "--json",
            str(report),
            *common,
        ]
    )
    assert code == 0
    assert "circuit ablated" in capsys.readouterr().out
    saved = json.loads(report.read_text())
    assert len(saved["random_ablated_loss"]) == 2 and set(saved["by_ablation"]) == {"mean", "zero"}

    code = cli_main(
        [
            "prune",
            str(sparse_dir),
            "--task",
            "single_double_quote",
            "--target-loss",
            "1e-9",
            "--steps",
            "1",
            "--out",
            str(tmp_path / "none.json"),
            *common,
        ]
    )
    assert code == 1 and not (tmp_path / "none.json").exists()
    assert "not met" in capsys.readouterr().err

    code = cli_main(
        [
            "compare",
            str(sparse_dir),
            str(dense_dir),
            "--tasks",
            "single_double_quote",
            "--target-loss",
            "5",
            "--steps",
            "1",
            "--ablation",
            "zero",
            *common,
        ]
    )
    assert code == 0
    assert "geometric mean" in capsys.readouterr().out
    assert cli_main(["compare", str(sparse_dir), str(dense_dir), "--tasks", "nope", *common]) == 2
    _one_line_error(capsys)


def one_pair_batch() -> TaskBatch:
    """A stand-in batch for tests whose loss is constructed (its contents are never read)."""
    return TaskBatch(
        tokens=torch.zeros(2, 3, dtype=torch.long),
        last_pos=torch.tensor([2, 2]),
        answer_ids=torch.tensor([[1, 2], [1, 2]]),
        label=torch.tensor([0, 1]),
        pair_index=torch.tensor([0, 0]),
        prompts=["a", "b"],
    )


def test_discretise_finds_a_subset_that_beats_the_whole_model(monkeypatch):
    """Mean-ablating distractors can beat the full model: when neither the open set nor every
    node meets the target, sizes between them are searched, then bisected to the smallest."""
    import sparse_lens.circuits.pruning as pruning
    from sparse_lens.circuits.masks import NodeMasks

    model = tiny_model(seed=0)
    masks = NodeMasks(node_sites(model.cfg), 0.1, 0.0, generator=torch.Generator())
    n = masks.n_nodes
    with torch.no_grad():  # a strict ranking with the first 3 nodes open
        masks.tau.copy_((2.5 - torch.arange(n, dtype=torch.float32)) / n)
    assert masks.n_open() == 3

    def loss_of(k: int) -> float:  # too few nodes fail, a middle range meets, everything fails
        return 0.9 if k < 20 else (0.1 if k < n - 1 else 0.2)

    monkeypatch.setattr(
        pruning, "keep_hooks", lambda m, keep, ablation: sum(int(v.sum()) for v in keep.values())
    )
    monkeypatch.setattr(  # one "logit" per prompt: the number of nodes kept
        pruning, "hooked_answer_logits", lambda m, val, hooks: torch.full((len(val),), hooks)
    )
    monkeypatch.setattr(
        pruning, "binary_loss", lambda logits, label: logits.double().apply_(loss_of)
    )
    val = one_pair_batch()
    found = pruning.discretise(model, masks, val, None, target_loss=0.15)
    assert found.target_met and found.n_nodes == 20 and found.loss == pytest.approx(0.1)
    assert int(found.keep.sum()) == 20 and bool(found.keep[:20].all())


def test_every_node_of_a_refined_circuit_is_needed(model, cache, data, result, circuit):
    """After the greedy refinement converges, dropping any one node misses the target on the
    validation or the training pairs (the circuit is 1-minimal)."""
    from sparse_lens.circuits.masks import NodeMasks
    from sparse_lens.circuits.pruning import keep_loss

    refined = next(run["refined"] for run in result.runs if "refined" in run)
    assert refined["converged"]
    assert (refined["n_nodes"], refined["n_edges"]) == (circuit.n_nodes, circuit.n_edges)
    masks = NodeMasks(node_sites(model.cfg))
    keep = torch.cat([circuit.keep_mask(model)[s.hook] for s in masks.sites])
    ablation = make_ablation("mean", cache)
    with torch.no_grad():
        assert keep_loss(model, masks, keep, data["val"], ablation) <= TARGET
        for flat in keep.nonzero().squeeze(-1).tolist():
            keep[flat] = False
            losses = [keep_loss(model, masks, keep, data[s], ablation) for s in ("val", "train")]
            keep[flat] = True
            assert max(losses) > TARGET, masks.nodes([flat])


def test_refine_drops_what_the_target_does_not_need(monkeypatch):
    """Against a constructed loss (the target is met exactly when nodes 2 and 5 are kept, and
    the training pairs also need node 7), refinement from the first 12 nodes keeps 2, 5 and 7;
    a trial budget stops it early and says it did not converge."""
    import sparse_lens.circuits.pruning as pruning
    from sparse_lens.circuits.masks import NodeMasks

    model = tiny_model(seed=0)
    masks = NodeMasks(node_sites(model.cfg), 0.1, 0.0, generator=torch.Generator())
    n = masks.n_nodes
    start = torch.zeros(n, dtype=torch.bool)
    start[:12] = True
    tau = torch.linspace(1.0, -1.0, n)
    val, train = one_pair_batch(), one_pair_batch()

    def loss(model, masks, keep, batch, ablation, bound=None, resume=None):
        needed = {2, 5} | ({7} if batch is train else set())
        return 0.1 if all(bool(keep[i]) for i in needed) else 0.9

    monkeypatch.setattr(pruning, "keep_loss", loss)
    out = pruning.refine(model, masks, start, tau, val, train, None, 0.15, max_trials=100)
    assert out.converged and out.loss == pytest.approx(0.1)
    assert out.keep.nonzero().squeeze(-1).tolist() == [2, 5, 7]
    assert bool(start[:12].all())  # the caller's keep vector is left alone
    assert out.n_trials == 12 + 3  # one pass drops 9, the next confirms the 3 left

    early = pruning.refine(model, masks, start, tau, val, train, None, 0.15, max_trials=4)
    assert not early.converged and early.n_trials == 4
    assert int(early.keep.sum()) >= 3
