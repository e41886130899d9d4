"""A SparseTransformer inside a TransformerLens 4 TransformerBridge: same logits, same hooks."""

from __future__ import annotations

import pytest
import torch
from helpers import random_tokens, tiny_model
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformer_lens import ActivationCache, patching
from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory
from transformer_lens.model_bridge import TransformerBridge

from sparse_lens import SparseLensError
from sparse_lens.io.interop import (
    ARCHITECTURE,
    SparseLensArchitectureAdapter,
    to_transformer_bridge,
)

VARIANTS = {
    "paper": {},
    "standard-pos+tied+sink": dict(
        positional_embedding_type="standard", tied_unembed=True, attn_sink=True
    ),
    "concat-pos+attn-result+resid-topk": dict(
        positional_embedding_type="concat",
        d_pos_emb=8,
        use_attn_result=True,
        afrac_locations=("attn_q", "mlp_neuron", "resid_post_attn", "resid_post_mlp"),
    ),
    "no-bigram+no-bias+dense": dict(bigram_table="off", use_bias=False, afrac=None),
}


@pytest.fixture(scope="module", params=list(VARIANTS))
def pair(request):
    model = tiny_model(density=0.25, **VARIANTS[request.param])
    return model, to_transformer_bridge(model)


def tiny_tokenizer() -> Tokenizer:
    """A byte-level BPE with <|endoftext|> last, as sparse_lens.data.tokenizer builds them."""
    texts = [
        "def f(x):\n    return x + 1\n",
        "import os\nprint('hi')\n",
        "for i in range(3):\n    pass\n",
    ]
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    tokenizer.train_from_iterator(texts * 10, trainer)
    tokenizer.add_special_tokens([AddedToken("<|endoftext|>", special=True, normalized=False)])
    return tokenizer


def test_bridge_logits_and_loss_equal_model(pair):
    model, bridge = pair
    assert isinstance(bridge, TransformerBridge)
    tokens = random_tokens(model)
    with torch.no_grad():
        assert torch.equal(bridge(tokens), model(tokens))
        assert torch.equal(bridge(tokens, return_type="loss"), model(tokens, return_type="loss"))
        assert torch.equal(bridge(tokens, stop_at_layer=1), model(tokens, stop_at_layer=1))


def test_bridge_logits_include_bigram_table():
    model = tiny_model(density=0.25)
    bridge = to_transformer_bridge(model)
    tokens = random_tokens(model)
    logits, cache = bridge.run_with_cache(tokens)
    bigram = cache["bigram.hook_logits"]
    assert bigram.abs().sum() > 0
    torch.testing.assert_close(cache["hook_unembed"] + bigram, logits, rtol=0, atol=0)
    torch.testing.assert_close(bigram, model.bigram.W_bigram[tokens], rtol=0, atol=0)


def test_run_with_cache_holds_every_model_hook(pair):
    model, bridge = pair
    tokens = random_tokens(model)
    logits, cache = bridge.run_with_cache(tokens)
    model_logits, model_cache = model.run_with_cache(tokens)
    assert isinstance(cache, ActivationCache)
    torch.testing.assert_close(logits, model_logits, rtol=0, atol=0)
    for name in model_cache.keys():
        torch.testing.assert_close(cache[name], model_cache[name], rtol=0, atol=0, msg=name)
    # bridge-only component boundaries carry the same tensors as the model's own hooks
    torch.testing.assert_close(cache["blocks.0.hook_in"], model_cache["blocks.0.hook_resid_pre"])
    torch.testing.assert_close(
        cache["blocks.1.attn.hook_out"], model_cache["blocks.1.hook_attn_out"]
    )
    assert cache["pattern", 0].shape == (2, model.cfg.n_heads, tokens.shape[1], tokens.shape[1])


def test_attn_scores_are_pre_softmax():
    # TL's generic AttentionBridge reports post-softmax weights here; ours are the real scores.
    model = tiny_model(density=0.25)
    _, cache = to_transformer_bridge(model).run_with_cache(random_tokens(model))
    scores, pattern = cache["blocks.0.attn.hook_attn_scores"], cache["blocks.0.attn.hook_pattern"]
    assert torch.isinf(scores).any()  # the causal mask
    torch.testing.assert_close(scores.softmax(-1), pattern)


EDITS = {
    "blocks.0.attn.hook_q": lambda t, hook: t.index_fill(-1, torch.tensor([2]), 3.0),
    "blocks.1.attn.hook_attn_scores": lambda t, hook: t * 0.5,
    "blocks.0.attn.hook_pattern": lambda t, hook: t.flip(-1).tril(),
    "blocks.0.hook_resid_mid": lambda t, hook: t * 0.5,
    "blocks.1.ln2.hook_scale": lambda t, hook: t * 2.0,
    "hook_embed": lambda t, hook: t * 0.5,
}


@pytest.mark.parametrize("name", list(EDITS))
def test_run_with_hooks_edits_match_model(name):
    model = tiny_model(density=0.25)
    bridge = to_transformer_bridge(model)
    tokens = random_tokens(model)
    with torch.no_grad():
        edited = model.run_with_hooks(tokens, fwd_hooks=[(name, EDITS[name])])
        assert not torch.allclose(edited, model(tokens)), "the edit must change the output"
        torch.testing.assert_close(
            bridge.run_with_hooks(tokens, fwd_hooks=[(name, EDITS[name])]), edited, rtol=0, atol=0
        )


def test_zeroing_an_active_neuron_matches_model():
    model = tiny_model(density=0.25)
    bridge = to_transformer_bridge(model)
    tokens = random_tokens(model)
    _, cache = model.run_with_cache(tokens, names_filter="blocks.0.mlp.hook_post")
    neuron = int(cache["blocks.0.mlp.hook_post"].abs().sum((0, 1)).argmax())

    def ablate(t, hook):
        t[..., neuron] = 0.0
        return t

    with torch.no_grad():
        edited = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.mlp.hook_post", ablate)])
        assert not torch.allclose(edited, model(tokens))
        assert torch.equal(
            bridge.run_with_hooks(tokens, fwd_hooks=[("blocks.0.mlp.hook_post", ablate)]), edited
        )


def test_weights_are_the_models_own(pair):
    model, bridge = pair
    for name in (
        "W_Q",
        "W_K",
        "W_V",
        "W_O",
        "b_Q",
        "b_O",
        "W_in",
        "W_out",
        "b_in",
        "b_out",
        "W_E",
        "W_U",
        "b_U",
    ):
        assert torch.equal(getattr(bridge, name), getattr(model, name)), name
    if model.cfg.positional_embedding_type == "standard":
        assert torch.equal(bridge.W_pos, model.W_pos)
    assert (
        bridge.blocks[0].attn.W_Q.data_ptr() == bridge.original_model.blocks[0].attn.W_Q.data_ptr()
    )
    torch.testing.assert_close(
        bridge.accumulated_bias(1, mlp_input=True), model.accumulated_bias(1, mlp_input=True)
    )


def test_state_dict_has_the_models_keys():
    model = tiny_model(density=0.25, positional_embedding_type="standard")
    bridge = to_transformer_bridge(model)
    state = bridge.state_dict()
    assert list(state) == list(model.state_dict())
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())

    other = tiny_model(seed=1, density=0.25, positional_embedding_type="standard")
    bridge.load_state_dict(other.state_dict())
    tokens = random_tokens(model)
    with torch.no_grad():
        assert torch.equal(bridge(tokens), other(tokens))


def test_caller_model_untouched_unless_copy_false():
    model = tiny_model()
    keys = list(model.state_dict())
    bridge = to_transformer_bridge(model)
    assert list(model.state_dict()) == keys and type(model.blocks[0]).__name__ == "TransformerBlock"
    assert bridge.original_model is not model

    in_place = to_transformer_bridge(model, copy=False)
    assert in_place.original_model is model
    assert type(model.blocks[0]).__name__ == "SparseBlockBridge"


def test_strings_through_hf_tokenizer():
    tokenizer = tiny_tokenizer()
    model = tiny_model(density=0.25, d_vocab=tokenizer.get_vocab_size())
    model.set_tokenizer(tokenizer)
    bridge = to_transformer_bridge(model)
    text = "def g(y):\n    return y"
    assert torch.equal(bridge.to_tokens(text), model.to_tokens(text))
    assert bridge.to_str_tokens(text) == model.to_str_tokens(text)
    with torch.no_grad():
        assert torch.equal(bridge(text), model(text))
        batch = ["def f(x):", "import os\nprint('hi')"]  # right padding needs no mask
        assert torch.equal(bridge.to_tokens(batch), model.to_tokens(batch))
        assert torch.equal(bridge(batch), model(batch))
    _, cache = bridge.run_with_cache(text)
    assert cache["blocks.0.hook_resid_pre"].shape[1] == model.to_tokens(text).shape[1]


def test_activation_patching_on_bridge_matches_model():
    model = tiny_model(density=0.25)
    bridge = to_transformer_bridge(model)
    clean, corrupt = random_tokens(model, seed=1), random_tokens(model, seed=2)
    _, clean_cache = bridge.run_with_cache(clean)
    _, model_cache = model.run_with_cache(clean)

    def metric(logits):
        return logits[:, -1, 5].mean()

    on_bridge = patching.get_act_patch_resid_pre(
        bridge, corrupt[:, :4], _sliced(clean_cache), metric
    )
    on_model = patching.get_act_patch_resid_pre(model, corrupt[:, :4], _sliced(model_cache), metric)
    torch.testing.assert_close(on_bridge, on_model)


def _sliced(cache: ActivationCache) -> ActivationCache:
    """The first 4 positions only (fewer patching runs); causal, so still the true activations."""
    keep = {name: value[:, :4] for name, value in cache.items() if name.endswith("hook_resid_pre")}
    return ActivationCache(keep, cache.model)


def test_unsupported_features_fail_clearly():
    model = tiny_model()
    bridge = to_transformer_bridge(model)
    with pytest.raises(RuntimeError, match="compatibility mode"):
        bridge.enable_compatibility_mode()  # weight processing would densify the sparse weights
    with pytest.raises(NotImplementedError, match="densifies"):
        bridge.process_weights()
    with pytest.raises(NotImplementedError):
        bridge.set_use_attn_result(True)  # build the model with cfg.use_attn_result instead
    with pytest.raises(SparseLensError, match="start_at_layer"):
        bridge(torch.zeros(1, 4, model.cfg.d_model), start_at_layer=1)
    with pytest.raises(SparseLensError, match="right-padded"):
        bridge(random_tokens(model), attention_mask=torch.tensor([[0] * 11 + [1]] * 2))


def test_adapter_is_registered():
    to_transformer_bridge(tiny_model())
    assert ArchitectureAdapterFactory._adapters[ARCHITECTURE] is SparseLensArchitectureAdapter


def test_greedy_generation_matches_model():
    model = tiny_model(density=0.25)
    prompt = random_tokens(model, batch=1, n_pos=5)
    bridge = to_transformer_bridge(model)
    out = bridge.generate(
        prompt, max_new_tokens=4, do_sample=False, stop_at_eos=False, verbose=False
    )
    expected = prompt
    with torch.no_grad():
        for _ in range(4):
            expected = torch.cat([expected, model(expected)[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(out, expected)
