"""Structure-matched random node sets and the random-token nonsense task."""

from collections import Counter

import torch
from helpers import tiny_config
from planted import planted_batch

from sparse_lens.circuits.controls import random_token_batch, structure_matched_sets
from sparse_lens.nodes import node_sites

CFG = tiny_config(n_heads=4, d_head=8)  # 2 layers, d_model 32, 4 heads of 8, d_mlp 64


def _degree(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {
        site.hook: torch.randint(0, 50, (site.width,), generator=generator).float()
        for site in node_sites(CFG)
    }


CIRCUIT = [
    ("blocks.0.attn.hook_read", 3),
    ("blocks.0.attn.hook_read", 7),
    ("blocks.0.attn.hook_q", 1 * 8 + 2),  # head 1: q x2, k x1, v x1
    ("blocks.0.attn.hook_q", 1 * 8 + 5),
    ("blocks.0.attn.hook_k", 1 * 8 + 0),
    ("blocks.0.attn.hook_v", 1 * 8 + 4),
    ("blocks.0.attn.hook_k", 3 * 8 + 6),  # head 3: k x1
    ("blocks.0.hook_attn_out", 9),
    ("blocks.1.mlp.hook_post", 10),
    ("blocks.1.mlp.hook_post", 40),
    ("blocks.1.mlp.hook_post", 41),
    ("blocks.1.hook_mlp_out", 0),
]


def _head_structure(nodes):
    """Per layer, the multiset of per-head {type: count} patterns."""
    per_head: dict[tuple[int, int], Counter] = {}
    for hook, index in nodes:
        kind = hook.rsplit("_", 1)[-1]
        if hook.endswith(("hook_q", "hook_k", "hook_v")):
            layer = int(hook.split(".")[1])
            per_head.setdefault((layer, index // CFG.d_head), Counter())[kind] += 1
    by_layer: dict[int, list] = {}
    for (layer, _), pattern in per_head.items():
        by_layer.setdefault(layer, []).append(tuple(sorted(pattern.items())))
    return {layer: sorted(patterns) for layer, patterns in by_layer.items()}


def test_sets_copy_the_hook_counts_and_the_head_structure():
    degree = _degree()
    sets = structure_matched_sets(CFG, CIRCUIT, degree, n_sets=25, seed=1)
    assert len(sets) == 25
    want_hooks = Counter(h for h, _ in CIRCUIT)
    want_heads = _head_structure(CIRCUIT)
    for nodes in sets:
        assert len(set(nodes)) == len(nodes) == len(CIRCUIT)
        assert Counter(h for h, _ in nodes) == want_hooks
        assert _head_structure(nodes) == want_heads
    assert len({tuple(s) for s in sets}) > 20  # random, not one fixed set


def test_nodes_come_from_the_best_connected_pool():
    degree = _degree()
    # Only 8 neurons of layer 1 are connected at all; 3 are drawn with pool factor 2 -> the 6 best
    hook = "blocks.1.mlp.hook_post"
    degree[hook] = torch.zeros(CFG.d_mlp)
    best = [5, 9, 17, 23, 30, 44, 50, 61]
    degree[hook][best] = torch.arange(8, 0, -1).float()  # 5 is the best connected, 61 the least
    sets = structure_matched_sets(CFG, CIRCUIT, degree, n_sets=50, seed=0, pool_factor=2)
    drawn = {i for nodes in sets for h, i in nodes if h == hook}
    assert drawn <= set(best[:6]) and len(drawn) == 6


def test_sets_are_seeded():
    degree = _degree()
    a = structure_matched_sets(CFG, CIRCUIT, degree, n_sets=5, seed=7)
    b = structure_matched_sets(CFG, CIRCUIT, degree, n_sets=5, seed=7)
    c = structure_matched_sets(CFG, CIRCUIT, degree, n_sets=5, seed=8)
    assert a == b and a != c


def test_random_token_batch_replaces_real_tokens_only():
    batch = planted_batch(16)
    avoid = torch.tensor([0, 1, 2])
    noise = random_token_batch(batch, d_vocab=64, seed=0, avoid=avoid)
    real = batch.mask
    assert torch.equal(noise.tokens[~real], batch.tokens[~real])  # padding untouched
    assert (noise.tokens[real] != batch.tokens[real]).float().mean() > 0.8
    assert not torch.isin(noise.tokens[real], avoid).any()
    assert torch.equal(noise.label, batch.label) and torch.equal(noise.answer_ids, batch.answer_ids)
    assert torch.equal(noise.last_pos, batch.last_pos)
    assert torch.equal(random_token_batch(batch, 64, seed=0, avoid=avoid).tokens, noise.tokens)
