"""The graph table (sparse_lens.model.graph): sites, edge weights, degrees and the model's head."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import MODEL_VARIANTS, random_tokens, tiny_model

from sparse_lens import SparseTransformer
from sparse_lens.circuits import Circuit
from sparse_lens.circuits.circuit import circuit_edges
from sparse_lens.circuits.controls import structure_matched_sets
from sparse_lens.circuits.evaluate import answer_logits
from sparse_lens.model.graph import (
    SITE_BY_NAME,
    WEIGHTS,
    channel_degrees,
    node_sites,
)
from sparse_lens.pretrained import PRETRAINED_DIR
from sparse_lens.tasks.batch import TaskBatch

# HookPoints inside a block that are not node sites. A new HookPoint must be put here or in
# graph.SITES: this is what makes the table cover every node site of the model.
NOT_NODE_SITES = {
    "hook_resid_pre",
    "ln1.hook_scale",
    "ln1.hook_normalized",
    "ln2.hook_scale",
    "ln2.hook_normalized",
    "ln_p1.hook_scale",
    "ln_p1.hook_normalized",
    "ln_p2.hook_scale",
    "ln_p2.hook_normalized",
    "attn.hook_attn_scores",
    "attn.hook_pattern",
    "attn.hook_z",
    "attn.hook_result",
    "mlp.hook_pre",
}


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("variant", MODEL_VARIANTS)
def test_the_table_covers_every_node_site_hookpoint(variant):
    model = tiny_model(**MODEL_VARIANTS[variant])
    sites = {s.hook: s for s in node_sites(model.cfg)}
    resid_topk = {
        "hook_resid_mid": model.cfg.abstopk_at("resid_post_attn") is not None,
        "hook_resid_post": model.cfg.abstopk_at("resid_post_mlp") is not None,
    }
    for hook in model.hook_dict:
        if not hook.startswith("blocks."):
            continue
        name = hook.split(".", 2)[2]
        assert name in SITE_BY_NAME or name in NOT_NODE_SITES, f"{hook}: node site or not?"
        if name in SITE_BY_NAME:
            assert (hook in sites) == resid_topk.get(name, True), hook
    # every listed site is a HookPoint whose trailing shape is the site's channel shape
    _, cache = model.run_with_cache(random_tokens(model, batch=2, n_pos=6))
    for hook, site in sites.items():
        assert tuple(cache[hook].shape[2:]) == site.channel_shape, hook
        assert site.width == cache[hook][0, 0].numel()


def test_edge_matrices_map_each_source_activation_to_its_destination():
    """The table's reshapes agree with the forward pass: src activations (flat channel index)
    times the edge matrix, plus the bias, give the destination's pre-activation."""
    model = tiny_model(seed=3, density=0.4, afrac=None)  # no AbsTopK between matmul and hook
    _, cache = model.run_with_cache(random_tokens(model, batch=2, n_pos=7))
    # (source activation, destination pre-activation, bias) per weight; W_O reads z, the v
    # channels mixed over positions by the attention pattern
    flows = {
        "attn.W_Q": ("attn.hook_read", "attn.hook_q", "attn.b_Q"),
        "attn.W_K": ("attn.hook_read", "attn.hook_k", "attn.b_K"),
        "attn.W_V": ("attn.hook_read", "attn.hook_v", "attn.b_V"),
        "attn.W_O": ("attn.hook_z", "hook_attn_out", "attn.b_O"),
        "mlp.W_in": ("mlp.hook_read", "mlp.hook_pre", "mlp.b_in"),
        "mlp.W_out": ("mlp.hook_post", "hook_mlp_out", "mlp.b_out"),
    }
    assert set(flows) == {w.param for w in WEIGHTS}
    for layer, block in enumerate(model.blocks):
        for weight in WEIGHTS:
            src, dst, bias = flows[weight.param]
            x = cache[f"blocks.{layer}.{src}"].flatten(2)
            want = cache[f"blocks.{layer}.{dst}"].flatten(2)
            b = block.get_parameter(bias).flatten()
            got = x @ weight.matrix(block) + b
            torch.testing.assert_close(got, want, msg=f"{layer} {weight.param}")


def test_from_matrix_inverts_to_matrix():
    model = tiny_model(seed=2, attn_sink=True, positional_embedding_type="concat", d_pos_emb=8)
    for block in model.blocks:
        for weight in WEIGHTS:
            stored = block.get_parameter(weight.param)
            assert stored.shape == tuple(getattr(model.cfg, f) for f in weight.shape)
            assert torch.equal(weight.from_matrix(weight.matrix(block), model.cfg), stored)


def _shipped_circuits():
    for name in ("stdlib-sparse", "stdlib-dense"):
        for path in sorted((PRETRAINED_DIR / name / "circuits").glob("*.json")):
            if not path.name.endswith((".validation.json", ".missed.json")):
                yield name, path


@pytest.mark.parametrize("model_name", ["stdlib-sparse", "stdlib-dense"])
def test_edges_through_the_table_equal_every_shipped_circuit(model_name):
    model = SparseTransformer.from_pretrained(model_name)
    paths = [path for name, path in _shipped_circuits() if name == model_name]
    assert paths
    for path in paths:
        circuit = Circuit.load(path)
        stored = json.loads(path.read_text())
        edges = circuit_edges(model, [(n.hook, n.index) for n in circuit.nodes])
        assert len(edges) == stored["n_edges"] == len(stored["edges"]), path.name
        assert edges == circuit.edges, path.name


@pytest.mark.parametrize("variant", MODEL_VARIANTS)
def test_answer_logits_equal_the_forward_logits_at_the_scored_positions(variant):
    model = tiny_model(seed=4, density=0.5, **MODEL_VARIANTS[variant])
    tokens = random_tokens(model, batch=5, n_pos=9, seed=5)
    last_pos = torch.tensor([8, 3, 6, 0, 8])
    ids = torch.randint(0, model.cfg.d_vocab, (5, 2), generator=torch.Generator().manual_seed(6))
    batch = TaskBatch(
        tokens, last_pos, ids, torch.zeros(5, dtype=torch.long), torch.arange(5), [""] * 5
    )
    with torch.no_grad():
        ours = answer_logits(model, batch)
        full = model(tokens)
    expected = full[torch.arange(5), last_pos].gather(1, ids)
    torch.testing.assert_close(ours, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("variant", ["paper", "relu-resid+resid-topk", "sink+concat"])
def test_degrees_count_the_nonzero_weights_touching_each_channel(variant):
    model = tiny_model(seed=5, density=0.3, **MODEL_VARIANTS[variant])
    degree = channel_degrees(model)
    sites = node_sites(model.cfg)
    assert set(degree) == {s.hook for s in sites}
    assert all(degree[s.hook].shape == (s.width,) for s in sites)
    matrices = [model.W_Q, model.W_K, model.W_V, model.W_O, model.W_in, model.W_out]
    n_weights = sum(int(w.count_nonzero()) for w in matrices)
    assert sum(int(d.sum()) for d in degree.values()) == 2 * n_weights
    # per channel, from the TransformerLens accessors rather than the table
    nz = {
        name: (getattr(model, name)[1] != 0)
        for name in ("W_Q", "W_K", "W_V", "W_O", "W_in", "W_out")
    }
    b = "blocks.1."
    assert torch.equal(degree[b + "mlp.hook_post"], nz["W_in"].sum(0) + nz["W_out"].sum(1))
    assert torch.equal(degree[b + "hook_mlp_out"], nz["W_out"].sum(0))
    assert torch.equal(degree[b + "attn.hook_v"], (nz["W_V"].sum(1) + nz["W_O"].sum(2)).flatten())
    assert torch.equal(degree[b + "attn.hook_q"], nz["W_Q"].sum(1).flatten())
    reads = sum(nz[n].sum((0, 2)) for n in ("W_Q", "W_K", "W_V"))
    assert torch.equal(degree[b + "attn.hook_read"], reads)
    assert torch.equal(degree[b + "hook_attn_out"], nz["W_O"].sum((0, 1)))
    for site in sites:
        if site.type == "resid":
            assert int(degree[site.hook].sum()) == 0
    # the control takes it as is: same nodes per hook, drawn from the well-connected
    nodes = [(b + "mlp.hook_post", 3), (b + "attn.hook_q", 1), (b + "attn.hook_q", 2)]
    (drawn,) = structure_matched_sets(model.cfg, nodes, degree, n_sets=1, pool_factor=1)
    best = int(degree[b + "mlp.hook_post"].argmax())
    assert sorted(drawn)[0] in {(b + "attn.hook_q", i) for i in range(model.cfg.d_head * 2)}
    assert (b + "mlp.hook_post", best) in drawn
