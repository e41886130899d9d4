"""SparseTransformer as a TransformerLens model: hooks, cache, patching, weights, losses."""

from __future__ import annotations

import pytest
import torch
from helpers import MODEL_VARIANTS, random_tokens, tiny_model, tiny_model_with_tokenizer
from transformer_lens import ActivationCache, patching
from transformer_lens.head_detector import detect_head
from transformer_lens.model_protocol import (
    TrainableTransformerLensModel,
    TransformerLensModelWithWeights,
)

from sparse_lens import SparseLensError


def _shapes(model, batch, n_pos):
    cfg = model.cfg
    d, h, dh = cfg.d_model, cfg.n_heads, cfg.d_head
    shapes = {"hook_embed": (batch, n_pos, d)}
    for layer in range(cfg.n_layers):
        b = f"blocks.{layer}."
        shapes.update(
            {
                b + "hook_resid_pre": (batch, n_pos, d),
                b + "hook_attn_out": (batch, n_pos, d),
                b + "hook_resid_mid": (batch, n_pos, d),
                b + "hook_mlp_out": (batch, n_pos, d),
                b + "hook_resid_post": (batch, n_pos, d),
                b + "ln1.hook_scale": (batch, n_pos, 1),
                b + "ln1.hook_normalized": (batch, n_pos, d),
                b + "ln2.hook_scale": (batch, n_pos, 1),
                b + "ln2.hook_normalized": (batch, n_pos, d),
                b + "attn.hook_q": (batch, n_pos, h, dh),
                b + "attn.hook_k": (batch, n_pos, h, dh),
                b + "attn.hook_v": (batch, n_pos, h, dh),
                b + "attn.hook_z": (batch, n_pos, h, dh),
                b + "attn.hook_attn_scores": (batch, h, n_pos, n_pos),
                b + "attn.hook_pattern": (batch, h, n_pos, n_pos),
                b + "attn.hook_read": (batch, n_pos, cfg.d_in),
                b + "mlp.hook_read": (batch, n_pos, cfg.d_in),
                b + "mlp.hook_pre": (batch, n_pos, cfg.d_mlp),
                b + "mlp.hook_post": (batch, n_pos, cfg.d_mlp),
            }
        )
    shapes["ln_final.hook_scale"] = (batch, n_pos, 1)
    shapes["ln_final.hook_normalized"] = (batch, n_pos, d)
    return shapes


@pytest.mark.parametrize("variant", MODEL_VARIANTS)
def test_cache_has_every_canonical_hook_with_tl_shapes(variant):
    model = tiny_model(**MODEL_VARIANTS[variant])
    tokens = random_tokens(model, batch=3, n_pos=10)
    logits, cache = model.run_with_cache(tokens)
    assert isinstance(cache, ActivationCache)
    for name, shape in _shapes(model, 3, 10).items():
        assert tuple(cache[name].shape) == shape, name
    assert torch.allclose(logits, model(tokens), atol=1e-5)
    assert cache["pattern", 0].shape == (3, model.cfg.n_heads, 10, 10)


@pytest.mark.parametrize("variant", MODEL_VARIANTS)
def test_fused_and_explicit_attention_agree(variant):
    model = tiny_model(**MODEL_VARIANTS[variant])
    tokens = random_tokens(model, n_pos=16)
    fused = model(tokens)
    explicit = model.run_with_hooks(
        tokens, fwd_hooks=[(lambda name: name.endswith("hook_pattern"), lambda x, hook: x)]
    )
    assert torch.allclose(fused, explicit, atol=1e-5)


def test_sink_absorbs_attention():
    model = tiny_model(attn_sink=True)
    with torch.no_grad():
        model.blocks[0].attn.sink_logit.fill_(10.0)
    _, cache = model.run_with_cache(random_tokens(model))
    row_sums = cache["pattern", 0].sum(-1)
    assert (row_sums < 0.5).all(), "a large sink logit must take most of the attention"
    assert (row_sums > 0).all()


def test_abstopk_keeps_exactly_k_per_token():
    model = tiny_model(density=0.5)
    _, cache = model.run_with_cache(random_tokens(model, n_pos=9))
    frac = model.cfg.afrac
    for name, width in [
        ("blocks.0.attn.hook_read", model.cfg.d_in),
        ("blocks.1.mlp.hook_post", model.cfg.d_mlp),
        ("blocks.0.hook_attn_out", model.cfg.d_model),
    ]:
        nonzero = (cache[name] != 0).sum(-1)
        assert (nonzero <= int(frac * width)).all(), name
    q = cache["blocks.0.attn.hook_q"].flatten(-2)  # joint over heads, not per head
    assert ((q != 0).sum(-1) <= int(frac * q.shape[-1])).all()


def test_protocols_are_satisfied():
    model = tiny_model()
    assert isinstance(model, TransformerLensModelWithWeights)
    assert isinstance(model, TrainableTransformerLensModel)
    assert all(block.hook_out_is_single_residual_stream for block in model.blocks)


def test_activation_patching_shapes_and_identity():
    model = tiny_model(density=0.25)
    clean = random_tokens(model, batch=2, n_pos=8, seed=1)
    corrupt = random_tokens(model, batch=2, n_pos=8, seed=2)
    _, clean_cache = model.run_with_cache(clean)
    clean_logits = model(clean)

    def metric(logits):
        return (logits[:, -1] - clean_logits[:, -1]).pow(2).mean()

    cfg = model.cfg
    resid = patching.get_act_patch_resid_pre(model, corrupt, clean_cache, metric)
    heads = patching.get_act_patch_attn_head_out_all_pos(model, corrupt, clean_cache, metric)
    mlps = patching.get_act_patch_mlp_out(model, corrupt, clean_cache, metric)
    assert resid.shape == (cfg.n_layers, 8)
    assert heads.shape == (cfg.n_layers, cfg.n_heads)
    assert mlps.shape == (cfg.n_layers, 8)

    # TL's number for one patch equals the same patch done by hand with run_with_hooks
    def patch_last_pos(resid_pre, hook):
        resid_pre[:, -1] = clean_cache[hook.name][:, -1]
        return resid_pre

    by_hand = metric(
        model.run_with_hooks(corrupt, fwd_hooks=[("blocks.1.hook_resid_pre", patch_last_pos)])
    )
    assert torch.allclose(resid[1, -1], by_hand, atol=1e-6)
    # patching clean activations into the clean run changes nothing
    identity = patching.get_act_patch_mlp_out(model, clean, clean_cache, metric)
    assert identity.abs().max() < 1e-10
    assert metric(model(corrupt)) > 1e-4


def test_detect_head_runs_and_finds_a_previous_token_head():
    model = tiny_model_with_tokenizer()
    text = "def add(a, b):\n    return a + b\n"
    tokens = model.to_tokens(text)
    with torch.no_grad():  # make head 0 of layer 0 a perfect previous-token head
        attn = model.blocks[0].attn
        attn.W_Q.zero_()
        attn.W_K.zero_()
        attn.b_Q.zero_()
        attn.b_K.zero_()

    def previous_token(scores, hook):
        n = scores.shape[-1]
        target = torch.full((n, n), float("-inf"))
        target[torch.arange(1, n), torch.arange(0, n - 1)] = 0.0
        target[0, 0] = 0.0
        scores[:, 0] = target
        return scores

    with model.hooks(fwd_hooks=[("blocks.0.attn.hook_attn_scores", previous_token)]):
        _, cache = model.run_with_cache(tokens, remove_batch_dim=True)
        scores = detect_head(model, text, "previous_token_head", cache=cache)
    assert scores.shape == (model.cfg.n_layers, model.cfg.n_heads)
    n = tokens.shape[1]  # every row but the first (which can only attend to itself) matches
    assert scores[0, 0] == pytest.approx((n - 1) / n, abs=1e-4)
    assert scores[0, 1] < 0.9


@pytest.mark.parametrize("variant", ["paper", "standard-pos+fixed-bigram+tied"])
def test_decompose_resid_sums_to_final_residual(variant):
    model = tiny_model(**MODEL_VARIANTS[variant])
    _, cache = model.run_with_cache(random_tokens(model))
    parts = cache.decompose_resid(layer=-1, apply_ln=False)
    final = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    assert torch.allclose(parts.sum(0), final, atol=1e-5)
    accumulated = cache.accumulated_resid(layer=-1)
    assert torch.allclose(accumulated[-1], final, atol=1e-6)


def test_logit_lens_reproduces_logits():
    model = tiny_model(density=0.25)
    tokens = random_tokens(model)
    logits, cache = model.run_with_cache(tokens)
    normalized = cache.accumulated_resid(layer=-1, apply_ln=True)[-1]  # through ln_final
    lens = normalized @ model.W_U + model.b_U + model.bigram(tokens)
    assert torch.allclose(lens, logits, atol=1e-5)


def test_logit_attrs_and_stack_head_results():
    model = tiny_model(afrac_locations=("attn_in", "mlp_neuron"))  # no AbsTopK on the writes
    tokens = random_tokens(model)
    _, cache = model.run_with_cache(tokens)
    heads = cache.stack_head_results(layer=-1)
    assert heads.shape[0] == model.cfg.n_layers * model.cfg.n_heads
    attn_total = heads.view(model.cfg.n_layers, model.cfg.n_heads, *heads.shape[1:]).sum(1)
    for layer in range(model.cfg.n_layers):
        b_O = model.blocks[layer].attn.b_O
        assert torch.allclose(attn_total[layer] + b_O, cache["attn_out", layer], atol=1e-5)
    parts = cache.decompose_resid(layer=-1)
    attrs = cache.logit_attrs(parts, tokens=torch.tensor([3, 4]))
    assert attrs.shape == parts.shape[:-1]


def test_start_and_stop_at_layer_compose():
    for variant in ("paper", "sink+concat", "standard-pos+fixed-bigram+tied"):
        model = tiny_model(**MODEL_VARIANTS[variant])
        tokens = random_tokens(model)
        mid = model(tokens, stop_at_layer=1)
        assert mid.shape == (*tokens.shape, model.cfg.d_model)
        resumed = model(mid, start_at_layer=1, tokens=tokens)
        assert torch.allclose(resumed, model(tokens), atol=1e-6)


def test_loss_matches_manual_cross_entropy():
    model = tiny_model()
    tokens = random_tokens(model, batch=2, n_pos=10)
    logits, loss = model(tokens, return_type="both")
    manual = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), tokens[:, 1:].reshape(-1)
    )
    assert torch.allclose(loss, manual, atol=1e-6)
    per_token = model(tokens, return_type="loss", loss_per_token=True)
    assert per_token.shape == (2, 9)
    assert torch.allclose(per_token.mean(), loss, atol=1e-6)


def test_weight_accessors_read_the_stored_sparse_tensors():
    model = tiny_model(density=1 / 16)
    cfg = model.cfg
    assert model.W_Q.shape == (cfg.n_layers, cfg.n_heads, cfg.d_in, cfg.d_head)
    assert model.W_O.shape == (cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_model)
    assert model.W_in.shape == (cfg.n_layers, cfg.d_in, cfg.d_mlp)
    assert model.W_out.shape == (cfg.n_layers, cfg.d_mlp, cfg.d_model)
    assert model.W_E.shape == (cfg.d_vocab, cfg.d_model)
    assert model.W_U.shape == (cfg.d_model, cfg.d_vocab)
    assert model.blocks[0].attn.W_Q.data_ptr() == model.blocks[0].attn.W_Q.data_ptr()
    density = (model.W_in != 0).float().mean().item()
    assert density == pytest.approx(1 / 16, abs=0.01)
    # zeroing a weight in place is visible to the forward pass: no hidden masks anywhere
    tokens = random_tokens(model)
    before = model(tokens)
    with torch.no_grad():
        model.blocks[1].mlp.W_out.zero_()
    assert not torch.allclose(before, model(tokens))
    assert model.OV.AB.shape == (cfg.n_layers, cfg.n_heads, cfg.d_in, cfg.d_model)


def test_tied_unembedding_is_a_view_of_the_embedding():
    model = tiny_model(tied_unembed=True)
    assert torch.equal(model.W_U, model.W_E.T)
    assert "unembed.W_U" not in dict(model.named_parameters())


def test_accumulated_bias_and_residual_directions():
    model = tiny_model()
    expected = sum(model.blocks[i].attn.b_O + model.blocks[i].mlp.b_out for i in range(2))
    assert torch.allclose(model.accumulated_bias(2), expected)
    assert torch.allclose(
        model.accumulated_bias(1, mlp_input=True), expected - model.blocks[1].mlp.b_out
    )
    directions = model.tokens_to_residual_directions(torch.tensor([1, 2, 3]))
    assert directions.shape == (3, model.cfg.d_model)
    # the final norm's weight is folded in (TL fold_ln): w * W_U[:, t], zeros of W_U kept
    folded = model.ln_final.w * model.W_U[:, 5]
    assert not torch.equal(model.ln_final.w, torch.ones_like(model.ln_final.w))
    assert torch.equal(model.tokens_to_residual_directions(5), folded)
    assert torch.equal(directions[2], model.ln_final.w * model.W_U[:, 3])


def test_out_of_range_tokens_are_a_clear_error():
    model = tiny_model()
    with pytest.raises(SparseLensError, match="token id 96 is out of range"):
        model(torch.tensor([[1, 2, 96]]))
    with pytest.raises(SparseLensError, match="n_ctx"):
        model(torch.zeros(1, model.cfg.n_ctx + 1, dtype=torch.long))


def test_tl_training_loop_runs_unchanged():
    from transformer_lens.tools.training import TrainConfig, train

    model = tiny_model()
    tokens = torch.randint(
        0, model.cfg.d_vocab, (8, 12), generator=torch.Generator().manual_seed(0)
    )
    dataset = torch.utils.data.TensorDataset(tokens)

    class TokensDataset(torch.utils.data.Dataset):
        def __len__(self):
            return len(dataset)

        def __getitem__(self, i):
            return {"tokens": dataset[i][0]}

    before = model(tokens, return_type="loss").item()
    train(
        model,
        TrainConfig(num_epochs=3, batch_size=4, lr=1e-2, print_every=None, device="cpu"),
        TokensDataset(),
    )
    assert model(tokens, return_type="loss").item() < before


def test_string_inputs_and_tokenizer_helpers():
    model = tiny_model_with_tokenizer()
    text = "import os\nprint('hi')"
    tokens = model.to_tokens(text)
    assert tokens[0, 0].item() == model.eot_token_id  # BOS is the document boundary
    assert model.to_string(tokens[0, 1:]) == text
    assert "".join(model.to_str_tokens(text)[1:]) == text
    assert torch.equal(model(text), model(tokens))
    batch = model.to_tokens(["x = 1", "def f(a, b, c):"])
    assert batch.shape[0] == 2
    loss_batched = model(["x = 1", "def f(a, b, c):"], return_type="loss", loss_per_token=False)
    assert torch.isfinite(loss_batched)
    eot = model.to_single_token("<|endoftext|>")
    assert eot == model.cfg.d_vocab - 1
    with pytest.raises(SparseLensError, match="not one"):
        model.to_single_token("def function_name_that_is_long")
    out = model.generate("def ", max_new_tokens=5, do_sample=False)
    assert out.startswith("<|endoftext|>def ")
