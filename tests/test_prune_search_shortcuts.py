"""The pruning search's shortcuts change its cost, never its answers.

Bounded evaluation (stop once the loss must exceed the target) and resuming a forward at the
block a trial changes (:class:`~sparse_lens.circuits.pruning.BlockInputs`) must give the same
losses, bit for bit, and the same refined circuit as the plain evaluation.
"""

from __future__ import annotations

import math

import planted
import pytest
import torch
from helpers import tiny_model

from sparse_lens.circuits import compute_mean_cache, make_ablation, pruning
from sparse_lens.circuits.masks import NodeMasks, keep_hooks
from sparse_lens.circuits.pruning import BlockInputs, keep_loss, refine
from sparse_lens.nodes import node_sites

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup():
    model = tiny_model(seed=11, density=1 / 4, n_layers=3)
    cache = compute_mean_cache(model, planted.pretraining_tokens(64, seed=1), n_bank=32)
    masks = NodeMasks(node_sites(model.cfg), generator=torch.Generator().manual_seed(0))
    val = planted.planted_batch(80, seed=2)  # 160 prompts: three evaluation chunks
    train = planted.planted_batch(40, seed=3)
    return model, make_ablation("mean", cache), masks, val, train


def _random_keep(masks, p: float, seed: int) -> torch.Tensor:
    return torch.rand(masks.n_nodes, generator=torch.Generator().manual_seed(seed)) < p


def test_bounded_loss_is_exact_at_or_under_the_bound_and_inf_above(setup):
    model, ablation, masks, val, _ = setup
    keep = _random_keep(masks, 0.7, seed=0)
    with torch.no_grad():
        plain = keep_loss(model, masks, keep, val, ablation)
        assert keep_loss(model, masks, keep, val, ablation, bound=plain) == plain
        assert keep_loss(model, masks, keep, val, ablation, bound=plain + 1) == plain
        assert keep_loss(model, masks, keep, val, ablation, bound=plain * 0.5) == math.inf


def test_resumed_forwards_give_the_same_loss_bit_for_bit(setup):
    model, ablation, masks, val, _ = setup
    base = _random_keep(masks, 0.8, seed=1)
    layers = torch.tensor(pruning._block_of_nodes(masks))
    inputs = BlockInputs(model, val)
    base_hooks = keep_hooks(model, masks.keep_dict(base), ablation)
    with torch.no_grad():
        for layer in range(model.cfg.n_layers):
            trial = base.clone()
            flip = (layers >= layer) & _random_keep(masks, 0.2, seed=10 + layer)
            trial[flip] = ~trial[flip]
            plain = keep_loss(model, masks, trial, val, ablation)
            resumed = keep_loss(
                model, masks, trial, val, ablation, resume=(inputs, layer, base_hooks)
            )
            assert resumed == plain, layer
        # a change in block 0 stales blocks 1 and 2: the inputs follow the new node set
        changed = base.clone()
        changed[(layers == 0).nonzero()[0]] ^= True
        inputs.stale_after(0)
        new_hooks = keep_hooks(model, masks.keep_dict(changed), ablation)
        trial = changed.clone()
        trial[(layers == 2).nonzero()[:3]] ^= True
        plain = keep_loss(model, masks, trial, val, ablation)
        assert keep_loss(model, masks, trial, val, ablation, resume=(inputs, 2, new_hooks)) == plain


def test_refine_with_and_without_shortcuts_finds_the_same_circuit(setup, monkeypatch):
    model, ablation, masks, val, train = setup
    keep = _random_keep(masks, 0.5, seed=4)
    tau = torch.randn(masks.n_nodes, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        target = 1.02 * max(keep_loss(model, masks, keep, b, ablation) for b in (val, train))
    fast = refine(model, masks, keep, tau, val, train, ablation, target, max_trials=40)

    def plain_loss(model, masks, keep, batch, ablation, bound=None, resume=None):
        return keep_loss_unbounded(model, masks, keep, batch, ablation)

    keep_loss_unbounded = pruning.keep_loss
    monkeypatch.setattr(pruning, "keep_loss", plain_loss)
    monkeypatch.setattr(BlockInputs, "applies", staticmethod(lambda *args: False))
    slow = refine(model, masks, keep, tau, val, train, ablation, target, max_trials=40)
    assert fast.n_trials == slow.n_trials == 40
    assert torch.equal(fast.keep, slow.keep) and fast.loss == slow.loss
    assert int(slow.keep.sum()) < int(keep.sum())  # it did drop nodes: the test has teeth
