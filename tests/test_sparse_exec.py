"""The sparse execution path equals the dense one, and its switches and cost model behave."""

from __future__ import annotations

import pytest
import torch
from helpers import MODEL_VARIANTS, random_tokens, tiny_model

from sparse_lens.circuits.ablation import ZeroAblation
from sparse_lens.circuits.masks import NodeMasks, keep_hooks
from sparse_lens.model import sparse_exec
from sparse_lens.model.sparse_exec import SparseMatmul, sparse_execution
from sparse_lens.nodes import node_sites

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def csr_products(monkeypatch):
    """Counts the CSR products run (so a test can tell which path a forward took)."""
    calls = []
    original = sparse_exec._CsrProduct.apply

    def spy(*args):
        calls.append(tuple(args[2].shape))
        return original(*args)

    monkeypatch.setattr(sparse_exec._CsrProduct, "apply", spy)
    return calls


def _logits(model, tokens, *, sparse: bool, hooks=()):
    with torch.no_grad(), sparse_execution(sparse, always=sparse), model.hooks(fwd_hooks=hooks):
        return model(tokens)


@pytest.mark.parametrize("variant", sorted(MODEL_VARIANTS))
def test_sparse_path_logits_equal_the_dense_path(variant, csr_products):
    model = tiny_model(seed=3, density=1 / 16, **MODEL_VARIANTS[variant])
    tokens = random_tokens(model, batch=3, n_pos=10)
    dense = _logits(model, tokens, sparse=False)
    assert not csr_products
    sparse = _logits(model, tokens, sparse=True)
    # every sublayer matrix and the unembedding went through CSR
    assert len(csr_products) == 4 * model.cfg.n_layers + 1
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=0)


def test_sparse_path_under_ablation_hooks_and_caching(csr_products):
    model = tiny_model(seed=4, density=1 / 16)
    tokens = random_tokens(model, batch=2, n_pos=12, seed=1)
    generator = torch.Generator().manual_seed(0)
    keep = {
        site.hook: torch.rand(site.width, generator=generator) < 0.5
        for site in node_sites(model.cfg)
    }
    hooks = keep_hooks(model, keep, ZeroAblation())
    dense = _logits(model, tokens, sparse=False, hooks=hooks)
    sparse = _logits(model, tokens, sparse=True, hooks=hooks)
    assert csr_products
    torch.testing.assert_close(sparse, dense, atol=1e-5, rtol=0)
    assert not torch.allclose(dense, _logits(model, tokens, sparse=False), atol=1e-3)

    with torch.no_grad(), sparse_execution(True, always=True):
        _, sparse_cache = model.run_with_cache(tokens)
    with torch.no_grad(), sparse_execution(False):
        _, dense_cache = model.run_with_cache(tokens)
    for name in ("blocks.1.mlp.hook_pre", "blocks.1.attn.hook_q", "blocks.0.hook_attn_out"):
        torch.testing.assert_close(sparse_cache[name], dense_cache[name], atol=1e-5, rtol=0)


def test_node_mask_gradients_agree_between_paths(csr_products):
    model = tiny_model(seed=5, density=1 / 16)
    for p in model.parameters():
        p.requires_grad_(False)  # frozen, as while pruning: the sparse path may run with grad on
    tokens = random_tokens(model, batch=2, n_pos=12, seed=2)
    grads = []
    for sparse in (False, True):
        masks = NodeMasks(node_sites(model.cfg), generator=torch.Generator().manual_seed(0))
        with (
            sparse_execution(sparse, always=sparse),
            model.hooks(fwd_hooks=masks.hooks(ZeroAblation())),
        ):
            masks.refresh()
            model(tokens, return_type="loss").backward()
        grads.append(masks.tau.grad)
    assert csr_products
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)


def test_small_products_stay_dense_without_timing(csr_products, monkeypatch):
    monkeypatch.setattr(sparse_exec, "_sparse_wins", lambda *args: pytest.fail("timed"))
    model = tiny_model(seed=8, density=1 / 16)
    with torch.no_grad():
        model(random_tokens(model))
    assert not csr_products


def test_training_forward_keeps_the_dense_path(csr_products):
    model = tiny_model(seed=6, density=1 / 16)
    tokens = random_tokens(model)
    with sparse_execution(True, always=True):
        loss = model(tokens, return_type="loss")  # weights require grad: training
        loss.backward()
        assert not csr_products
        assert model.blocks[0].mlp.W_in.grad is not None
        with torch.no_grad():
            model(tokens)
    assert csr_products


def test_switches_config_flag_context_and_density(csr_products, monkeypatch):
    model = tiny_model(seed=7, density=1 / 16)
    tokens = random_tokens(model)
    monkeypatch.setattr(sparse_exec, "_sparse_wins", lambda *args: True)
    monkeypatch.setattr(sparse_exec, "COST_MODEL", {})
    monkeypatch.setattr(sparse_exec, "MIN_MACS", 0)
    with torch.no_grad():
        model.set_sparse_execution(False)
        model(tokens)
        assert not csr_products
        with sparse_execution(True):  # the context manager overrides the model's flag
            model(tokens)
        assert csr_products
        csr_products.clear()
        model.set_sparse_execution(True)
        with sparse_execution(False):
            model(tokens)
        assert not csr_products
        model(tokens)
        assert csr_products

        dense = tiny_model(seed=7, density=0.5)  # above DENSITY_THRESHOLD: never CSR
        csr_products.clear()
        with sparse_execution(True, always=True):
            dense(tokens)
        assert not csr_products
    assert "sparse_exec" not in model.cfg.to_dict()  # a runtime switch, never saved


def test_cost_model_measures_once_per_bucket_and_is_obeyed(csr_products, monkeypatch):
    measured = []

    def fake_timing(x, weight, w_t):
        measured.append((x.shape[0], tuple(weight.shape)))
        return weight.shape[1] == 64  # pretend only the wide matrix wins

    monkeypatch.setattr(sparse_exec, "_sparse_wins", fake_timing)
    monkeypatch.setattr(sparse_exec, "COST_MODEL", {})
    monkeypatch.setattr(sparse_exec, "MIN_MACS", 0)
    generator = torch.Generator().manual_seed(0)
    narrow, wide = (torch.randn(32, n, generator=generator) for n in (32, 64))
    narrow.mul_(torch.rand(narrow.shape, generator=generator) < 0.1)
    wide.mul_(torch.rand(wide.shape, generator=generator) < 0.1)
    matmul = SparseMatmul()
    with torch.no_grad():
        for n_rows in (5, 7, 8):  # one bucket (<= 8 rows)
            x = torch.randn(n_rows, 32, generator=generator)
            torch.testing.assert_close(matmul(x, wide, None, (wide,)), x @ wide, atol=1e-5, rtol=0)
        assert measured == [(5, (32, 64))] and len(csr_products) == 3
        x = torch.randn(20, 32, generator=generator)  # a new bucket: measured again
        matmul(x, wide, None, (wide,))
        assert len(measured) == 2
        with torch.no_grad():
            wide.mul_(0.5)  # an in-place edit: the CSR copy must follow
        torch.testing.assert_close(matmul(x, wide, None, (wide,)), x @ wide, atol=1e-5, rtol=0)
        other = SparseMatmul()
        other(x, narrow, None, (narrow,))
        assert len(csr_products) == 5  # the narrow matrix lost its measurement: dense
