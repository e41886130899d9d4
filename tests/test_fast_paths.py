"""Training's fast paths equal the plain implementations they replace (values and gradients)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from helpers import random_tokens, tiny_model

from sparse_lens.model import fused_loss
from sparse_lens.model.components import abstopk


# ---------------------------------------------------------------------------- AbsTopK
def _plain_abstopk(x, k):  # the gather / scatter formulation the autograd Function replaced
    _, keep = torch.topk(x.abs(), k, dim=-1, sorted=False)
    return torch.zeros_like(x).scatter(-1, keep, x.gather(-1, keep))


def _with_ties(shape, seed):
    """Values on a coarse grid with many exact zeros and +-ties, so thresholds fall on ties."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(-3, 4, shape, generator=generator).float() * 0.5
    return x * (torch.rand(shape, generator=generator) < 0.6)


@pytest.mark.parametrize(
    "x", [torch.randn(4, 7, 64, generator=torch.Generator().manual_seed(0)), _with_ties((5, 9, 48), 1)]
)
@pytest.mark.parametrize("k", [1, 12, 47])
def test_abstopk_equals_gather_scatter_in_values_and_gradients(x, k):
    upstream = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    ours, plain = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, reference = abstopk(ours, k), _plain_abstopk(plain, k)
    assert torch.equal(out, reference)
    assert torch.equal(torch.signbit(out), torch.signbit(reference))  # no -0.0 either
    assert int((out != 0).sum(-1).max()) <= k
    (out * upstream).sum().backward()
    (reference * upstream).sum().backward()
    assert torch.equal(ours.grad, plain.grad)
    assert int((ours.grad != 0).sum(-1).max()) <= k


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16])
def test_integer_magnitude_keys_pick_the_same_topk_indices(dtype):
    from sparse_lens.model.components import _magnitude_keys

    for x in (torch.randn(64, 96, generator=torch.Generator().manual_seed(3)), _with_ties((64, 96), 4)):
        x = x.to(dtype)
        x[0, :3] = torch.tensor([float("inf"), -float("inf"), -0.0])
        for k in (1, 24, 95):
            plain = torch.topk(x.abs(), k, dim=-1, sorted=False).indices
            assert torch.equal(torch.topk(_magnitude_keys(x), k, dim=-1, sorted=False).indices, plain)


# ---------------------------------------------------------------------------- attention
def test_one_abstopk_call_over_qkv_equals_three():
    attn = tiny_model().blocks[0].attn
    x = torch.randn(2, 12, attn.cfg.d_in, generator=torch.Generator().manual_seed(5))
    q, k, v = attn._project_qkv(x)
    h, dh = attn.cfg.n_heads, attn.cfg.d_head
    W = torch.cat([attn.W_Q, attn.W_K, attn.W_V]).permute(1, 0, 2).reshape(x.shape[-1], 3 * h * dh)
    parts = (x @ W + torch.cat([attn.b_Q, attn.b_K, attn.b_V]).reshape(-1)).split(h * dh, dim=-1)
    for ours, part in zip((q, k, v), parts, strict=True):
        torch.testing.assert_close(ours.flatten(-2), _plain_abstopk(part, h * dh // 4))


def test_sink_attention_takes_the_fused_kernel_and_matches_the_explicit_path():
    model = tiny_model(attn_sink=True).train()
    tokens = random_tokens(model, n_pos=16)
    flash = "aten::_scaled_dot_product_flash_attention_for_cpu"
    with torch.profiler.profile() as profile:
        fused = model(tokens)
    assert any(event.key == flash for event in profile.key_averages()), "math fallback taken"

    fused.square().mean().backward()
    fused_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad()
    model.set_explicit_attention(True)
    explicit = model(tokens)
    explicit.square().mean().backward()
    torch.testing.assert_close(fused, explicit, atol=1e-5, rtol=1e-5)
    for name, grad in fused_grads.items():
        torch.testing.assert_close(grad, dict(model.named_parameters())[name].grad, atol=1e-5, rtol=1e-4)


# ---------------------------------------------------------------------------- fused loss
LOSS_VARIANTS = {
    "learnable-bigram": {},
    "fixed-bigram+tied": dict(bigram_table="fixed", tied_unembed=True),
    "no-bigram+logit-bias": dict(bigram_table="off", final_logits_bias=True),
}


def _loss_and_grads(model, tokens, plain: bool):
    model.zero_grad(set_to_none=True)
    if plain:
        loss = model.loss_fn(model(tokens), tokens)
    else:
        loss = model(tokens, return_type="loss")
    (3.0 * loss).backward()  # a non-unit incoming gradient
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("variant", LOSS_VARIANTS)
def test_fused_loss_equals_the_plain_loss_and_gradients(variant, monkeypatch):
    model = tiny_model(**LOSS_VARIANTS[variant]).train()
    if model.cfg.final_logits_bias:
        with torch.no_grad():
            model.unembed.b_U.normal_(0, 0.5)
    tokens = random_tokens(model, batch=3, n_pos=20)
    monkeypatch.setattr(fused_loss, "CHUNK_ELEMENTS", 7 * model.cfg.d_vocab)  # uneven chunks
    calls = []
    original = fused_loss._FusedNextTokenLoss.apply
    monkeypatch.setattr(
        fused_loss._FusedNextTokenLoss, "apply", lambda *a: calls.append(1) or original(*a)
    )
    fused, fused_grads = _loss_and_grads(model, tokens, plain=False)
    assert calls, "the fused path was not taken"
    plain, plain_grads = _loss_and_grads(model, tokens, plain=True)
    torch.testing.assert_close(fused, plain, atol=1e-6, rtol=1e-6)
    assert fused_grads.keys() == plain_grads.keys()
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, atol=1e-6, rtol=1e-5, msg=name)


def test_fused_loss_steps_aside_when_the_logits_are_observed_or_no_grad(monkeypatch):
    model = tiny_model().train()
    tokens = random_tokens(model)
    monkeypatch.setattr(
        fused_loss._FusedNextTokenLoss, "apply", lambda *a: pytest.fail("fused path taken")
    )
    seen = []
    hooked = model.run_with_hooks(
        tokens, return_type="loss", fwd_hooks=[("bigram.hook_logits", lambda x, hook: seen.append(x))]
    )
    assert seen
    handle = model.unembed.register_forward_hook(lambda module, args, out: seen.append(out))
    model(tokens, return_type="loss")
    handle.remove()
    assert len(seen) == 2
    with torch.no_grad():
        exact = model(tokens, return_type="loss")
        assert torch.equal(exact, model.loss_fn(model(tokens), tokens))
    torch.testing.assert_close(hooked.detach(), exact)
    per_token = model(tokens, return_type="loss", loss_per_token=True)
    assert per_token.shape == (tokens.shape[0], tokens.shape[1] - 1)


def test_fused_loss_gradient_matches_log_softmax_formula_on_random_inputs():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 9, 8, generator=generator, requires_grad=True)
    W_U = torch.randn(8, 11, generator=generator, requires_grad=True)
    b_U = torch.randn(11, generator=generator)
    bigram = torch.randn(11, 11, generator=generator, requires_grad=True)
    tokens = torch.randint(0, 11, (2, 9), generator=generator)
    loss = fused_loss.fused_next_token_loss(x, W_U, b_U, bigram, tokens)
    grads = torch.autograd.grad(loss, (x, W_U, bigram))
    logits = x @ W_U + b_U + F.embedding(tokens, bigram)
    plain = F.cross_entropy(logits[:, :-1].reshape(-1, 11), tokens[:, 1:].reshape(-1))
    torch.testing.assert_close(loss, plain)
    for ours, theirs in zip(grads, torch.autograd.grad(plain, (x, W_U, bigram)), strict=True):
        torch.testing.assert_close(ours, theirs)
