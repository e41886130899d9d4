"""The TransformerLens contract on the shipped model and on a csp_yolo2-style OpenAI import:
TL's standard tools give the numbers computed by hand (issue 20, items 1-6)."""

from __future__ import annotations

import contextlib
import io
import warnings

import pytest
import torch
from helpers import tiny_model
from test_openai_import import random_openai_state, scaled_fixture, tokens_for, write_openai_dir
from transformer_lens import head_detector
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.tools.analysis import direct_logit_attribution
from transformer_lens.utilities.exploratory_utils import test_prompt as tl_test_prompt

from sparse_lens import SparseLensError, SparseTransformer
from sparse_lens.io.interop import sparse_lens_checkpoint
from sparse_lens.io.openai import import_openai
from sparse_lens.model.cache import NonAdditiveWarning

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPTS = ["x = 'hello\nprint(x)\ny = \"abc", "name = \"a\"\nprint(name)\nt = 'b"]  # 16 tokens each


@pytest.fixture(scope="module")
def shipped():
    return SparseTransformer.from_pretrained("stdlib-sparse")


@pytest.fixture(scope="module")
def run(shipped):
    """Two prompts whose next token is a closing quote; answers '"' / "'" and the reverse."""
    tokens = shipped.to_tokens(PROMPTS)
    assert tokens.shape[0] == 2 and (tokens != shipped.eot_token_id)[:, 1:].all(), "no padding"
    dq, sq = shipped.to_single_token('"'), shipped.to_single_token("'")
    answers, wrong = torch.tensor([dq, sq]), torch.tensor([sq, dq])
    with torch.no_grad():
        logits, cache = shipped.run_with_cache(tokens)
    return tokens, answers, wrong, logits, cache


def logit_diff(logits, answers, wrong):
    rows = torch.arange(len(answers))
    return logits[rows, -1, answers] - logits[rows, -1, wrong]


def outside_the_residual(model, tokens, answers, wrong):
    """The parts of a logit difference no residual component makes: b_U and the bigram table."""
    offset = model.b_U[answers] - model.b_U[wrong]
    if model.cfg.bigram_table != "off":
        table = model.bigram.W_bigram
        offset = offset + table[tokens[:, -1], answers] - table[tokens[:, -1], wrong]
    return offset


def assert_dla_is_exact(model, tokens, answers, wrong, logits, cache):
    target = logit_diff(logits, answers, wrong) - outside_the_residual(model, tokens, answers, wrong)
    parts = cache.decompose_resid(layer=-1, pos_slice=-1)
    attrs = cache.logit_attrs(parts, tokens=answers, incorrect_tokens=wrong, pos_slice=-1)
    torch.testing.assert_close(attrs.sum(0).squeeze(-1), target, rtol=0, atol=1e-4)
    # the standard route with the norm applied first gives the same numbers (scaled once)
    normed = cache.decompose_resid(layer=-1, pos_slice=-1, apply_ln=True)
    attrs_ln = cache.logit_attrs(normed, tokens=answers, incorrect_tokens=wrong, pos_slice=-1)
    torch.testing.assert_close(attrs_ln, attrs, rtol=0, atol=1e-6)
    # ... and so does dotting that stack with the residual directions by hand
    directions = model.tokens_to_residual_directions(answers) - model.tokens_to_residual_directions(wrong)
    by_hand = (normed * directions.view(len(answers), *[1] * (normed.ndim - 3), -1)).sum(-1)
    torch.testing.assert_close(by_hand, attrs, rtol=0, atol=1e-6)
    # TL's one-call tool
    dla = direct_logit_attribution(model, answer_tokens=answers, incorrect_tokens=wrong, cache=cache)
    torch.testing.assert_close(dla.attribution.sum(0), target, rtol=0, atol=1e-4)
    return attrs


# ------------------------------------------------------------------ 1. direct logit attribution
def test_dla_sums_to_the_logit_difference_on_the_shipped_model(shipped, run):
    tokens, answers, wrong, logits, cache = run
    assert not torch.allclose(shipped.ln_final.w, torch.ones_like(shipped.ln_final.w))
    attrs = assert_dla_is_exact(shipped, tokens, answers, wrong, logits, cache)
    # the unfolded unembedding (what TL used before) is far off: the check can fail
    plain = shipped.W_U[:, answers] - shipped.W_U[:, wrong]
    scale = cache["ln_final.hook_scale"][:, -1]
    parts = cache.decompose_resid(layer=-1, pos_slice=-1)
    unfolded = ((parts.squeeze(2) / scale) * plain.T).sum(-1).sum(0)
    assert (unfolded - attrs.sum(0).squeeze(-1)).abs().max() > 0.05
    # hook_normalized is before the norm's weight: dotted with the folded directions, the logit
    folded = shipped.tokens_to_residual_directions(answers)
    normalized = cache["ln_final.hook_normalized"][:, -1]
    rows = torch.arange(2)
    expected = logits[rows, -1, answers] - shipped.b_U[answers] - shipped.bigram.W_bigram[tokens[:, -1], answers]
    torch.testing.assert_close((normalized * folded).sum(-1), expected, rtol=0, atol=1e-4)


# ------------------------------------------------------------------ 2. non-additive writes
def test_head_results_miss_the_write_and_say_so(shipped, run):
    _, _, _, _, cache = run
    assert cache.write_mask is None
    with pytest.warns(NonAdditiveWarning, match="write_mask = True"):
        heads = cache.stack_head_results(layer=-1)
    per_layer = heads.view(shipped.cfg.n_layers, shipped.cfg.n_heads, *heads.shape[1:]).sum(1)
    miss = max(
        (per_layer[layer] + shipped.blocks[layer].attn.b_O - cache["attn_out", layer]).abs().max()
        for layer in range(shipped.cfg.n_layers)
    )
    assert miss > 1e-3, "AbsTopK on the write must make TL's head results non-additive here"


def test_write_mask_makes_head_and_neuron_results_exact(shipped, run):
    tokens, answers, wrong, logits, cache = run
    cache.write_mask = True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", NonAdditiveWarning)
            heads = cache.stack_head_results(layer=-1)
            neurons = [cache.get_neuron_results(layer) for layer in range(shipped.cfg.n_layers)]
            with_rest = cache.stack_head_results(layer=-1, incl_remainder=True)
            dla = direct_logit_attribution(
                shipped, answer_tokens=answers, incorrect_tokens=wrong, cache=cache, unit="head"
            )
        per_layer = heads.view(shipped.cfg.n_layers, shipped.cfg.n_heads, *heads.shape[1:]).sum(1)
        for layer in range(shipped.cfg.n_layers):
            kept = (cache["attn_out", layer] != 0).float()
            torch.testing.assert_close(
                per_layer[layer] + shipped.blocks[layer].attn.b_O * kept, cache["attn_out", layer], rtol=0, atol=1e-5
            )
            kept = (cache["mlp_out", layer] != 0).float()
            torch.testing.assert_close(
                neurons[layer].sum(-2) + shipped.blocks[layer].mlp.b_out * kept, cache["mlp_out", layer], rtol=0, atol=1e-5
            )
        final = cache[f"blocks.{shipped.cfg.n_layers - 1}.hook_resid_post"]
        torch.testing.assert_close(with_rest.sum(0), final, rtol=0, atol=1e-5)
        target = logit_diff(logits, answers, wrong) - outside_the_residual(shipped, tokens, answers, wrong)
        torch.testing.assert_close(dla.attribution.sum(0), target, rtol=0, atol=1e-4)
        with pytest.raises(NotImplementedError, match="stack_head_results"):
            cache.get_full_resid_decomposition()
    finally:
        cache.write_mask = None
    # the masked results were temporary: what TL cached before (unmasked) is back
    if "blocks.0.attn.hook_result" in cache.cache_dict:
        unmasked = torch.einsum("bphd,hdm->bphm", cache["z", 0], shipped.blocks[0].attn.W_O)
        torch.testing.assert_close(cache["blocks.0.attn.hook_result"], unmasked, rtol=0, atol=0)


def test_write_mask_false_is_tl_without_the_warning(shipped, run):
    *_, cache = run
    with warnings.catch_warnings():
        warnings.simplefilter("error", NonAdditiveWarning)
        _, masked = shipped.run_with_cache(run[0], write_mask=False)
        masked.stack_head_results(layer=-1)


# ------------------------------------------------------------------ 3. raw-model API
def test_generate_takes_tl_arguments(shipped):
    prompt = "def add(a, b):\n    return"
    text = shipped.generate(prompt, max_new_tokens=4, do_sample=False, verbose=False)
    assert text.startswith("<|endoftext|>" + prompt)
    tokens = shipped.to_tokens(prompt)
    expected = tokens
    with torch.no_grad():
        for _ in range(4):  # greedy by hand
            expected = torch.cat([expected, shipped(expected)[:, -1].argmax(-1, keepdim=True)], 1)
    out = shipped.generate(tokens, max_new_tokens=4, do_sample=False, use_past_kv_cache=True, stop_at_eos=False)
    assert torch.equal(out, expected)
    assert shipped.generate(tokens, max_new_tokens=2, return_type="str", do_sample=False, stop_at_eos=False) == [
        shipped.to_string(expected[0, : tokens.shape[1] + 2])
    ]
    sampled = [shipped.generate(prompt, max_new_tokens=5, top_p=0.9, top_k=20, seed=3) for _ in range(2)]
    assert sampled[0] == sampled[1]


def test_tokenizer_helpers_take_what_tl_passes(shipped):
    eot = shipped.eot_token_id
    assert shipped.to_string(eot) == "<|endoftext|>"
    assert shipped.to_string(torch.tensor(eot)) == "<|endoftext|>"  # 0-d, as test_prompt passes
    assert shipped.to_str_tokens(PROMPTS) == [shipped.to_str_tokens(p) for p in PROMPTS]
    batch = shipped.to_tokens(PROMPTS)
    assert shipped.to_str_tokens(batch) == shipped.to_str_tokens(PROMPTS)
    assert torch.equal(shipped.to_tokens(batch[0]), batch[:1])  # ids pass through


def test_transformer_lens_test_prompt_runs(shipped):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        tl_test_prompt("x = 'hello", "'", shipped, prepend_space_to_answer=False, top_k=3)
    printed = out.getvalue()
    assert "Ranks of the answer tokens" in printed and "Top 0th token" in printed
    tokens = shipped.to_tokens("x = 'hello")
    with torch.no_grad():
        top = shipped(tokens)[0, -1].argmax().item()
    assert f"|{shipped.to_string(top)}|" in printed.split("Top 0th token")[1].splitlines()[0]


def test_set_use_attn_result_adds_and_removes_hook_result():
    model = tiny_model(afrac_locations=("attn_in", "mlp_neuron"))  # no AbsTopK on the writes
    tokens = torch.randint(0, model.cfg.d_vocab, (2, 7), generator=torch.Generator().manual_seed(0))
    before = model(tokens)
    model.set_use_attn_result(True)
    logits, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(logits, before, rtol=0, atol=1e-6)
    for layer in range(model.cfg.n_layers):
        result = cache[f"blocks.{layer}.attn.hook_result"]
        assert result.shape == (2, 7, model.cfg.n_heads, model.cfg.d_model)
        torch.testing.assert_close(result.sum(-2) + model.blocks[layer].attn.b_O, cache["attn_out", layer], rtol=0, atol=1e-5)
    model.set_use_attn_result(False)
    assert "blocks.0.attn.hook_result" not in model.hook_dict
    assert "blocks.0.attn.hook_result" not in model.run_with_cache(tokens)[1].cache_dict


def test_boot_transformers_boots_a_sparse_lens_checkpoint(shipped, tmp_path):
    bridge = TransformerBridge.boot_transformers("stdlib-sparse")
    tokens = shipped.to_tokens(PROMPTS)
    with torch.no_grad():
        assert torch.equal(bridge(tokens), shipped(tokens))
    saved = tiny_model(density=0.25).save_pretrained(tmp_path / "tiny")
    assert sparse_lens_checkpoint(saved) == saved
    with pytest.raises(SparseLensError, match="only device= and dtype="):
        TransformerBridge.boot_transformers(str(saved), n_ctx=8)
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text('{"model_type": "gpt2", "afrac": 1, "bigram_table": 1}')
    assert sparse_lens_checkpoint(tmp_path / "hf") is None  # HF checkpoints go to TL as before


# ------------------------------------------------------------------ 4. OpenAI imports
@pytest.fixture(scope="module")
def yolo(tmp_path_factory):
    """A csp_yolo2-style import: concatenated positions, sink, bigram table, no tokenizer."""
    beeg = scaled_fixture("csp_yolo2")
    src = write_openai_dir(tmp_path_factory.mktemp("yolo"), beeg, random_openai_state(beeg, seed=2))
    model = import_openai(src)
    assert model.cfg.positional_embedding_type == "concat" and model.tokenizer is None
    return model, tokens_for(beeg, seed=3)


def test_concat_position_imports_decompose_and_attribute(yolo):
    model, tokens = yolo
    with torch.no_grad():
        logits, cache = model.run_with_cache(tokens)
    parts, labels = cache.decompose_resid(layer=-1, return_labels=True)
    assert "pos_embed" not in labels  # positions are concatenated to reads, not added
    final = cache[f"blocks.{model.cfg.n_layers - 1}.hook_resid_post"]
    torch.testing.assert_close(parts.sum(0), final, rtol=0, atol=1e-5)
    answers, wrong = torch.tensor([3, 5]), torch.tensor([7, 1])
    assert_dla_is_exact(model, tokens, answers, wrong, logits, cache)


def test_detect_head_works_on_token_ids_without_a_tokenizer(yolo):
    model, tokens = yolo
    scores = head_detector.detect_head(model, tokens[:1, :12], "previous_token_head")
    assert scores.shape == (model.cfg.n_layers, model.cfg.n_heads)
    _, cache = model.run_with_cache(tokens[:1, :12], remove_batch_dim=True)
    head = cache["pattern", 1][0]  # layer 1, head 0: [query, key]
    by_hand = head.diagonal(-1).sum() / head.sum()
    assert scores[1, 0] == pytest.approx(by_hand.item(), abs=1e-5)
    with pytest.raises(SparseLensError, match="no tokenizer"):
        head_detector.detect_head(model, "def f():", "previous_token_head")
