"""nnsight on a SparseTransformer: reads and edits of HookPoint outputs equal TL run_with_hooks."""

from __future__ import annotations

import pytest
import torch
from helpers import random_tokens, tiny_model
from nnsight.intervention.interleaver import OutOfOrderError

from sparse_lens.io.interop import to_nnsight


@pytest.fixture(scope="module")
def model():
    return tiny_model(density=0.25)


@pytest.fixture(scope="module")
def tokens(model):
    return random_tokens(model)


def test_reads_equal_tl_cache(model, tokens):
    nn_model = to_nnsight(model)
    names = ["blocks.0.attn.hook_q", "blocks.0.mlp.hook_post", "blocks.1.hook_resid_post"]
    with torch.no_grad(), nn_model.trace(tokens):  # modules are read in the order they run
        q = nn_model.blocks[0].attn.hook_q.output.save()
        post = nn_model.blocks[0].mlp.hook_post.output.save()
        resid = nn_model.blocks[1].hook_resid_post.output.save()
        logits = nn_model.output.save()
    # names_filter keeps the fused attention path, as in the nnsight run: bitwise equal
    reference, cache = model.run_with_cache(tokens, names_filter=names)
    assert torch.equal(q, cache[names[0]])
    assert torch.equal(post, cache[names[1]])
    assert torch.equal(resid, cache[names[2]])
    assert torch.equal(logits, reference)


def test_reading_out_of_order_raises(model, tokens):
    nn_model = to_nnsight(model)
    with pytest.raises(OutOfOrderError), torch.no_grad(), nn_model.trace(tokens):
        nn_model.blocks[1].mlp.hook_post.output.save()
        nn_model.blocks[0].mlp.hook_post.output.save()


def test_zeroing_a_neuron_equals_run_with_hooks(model, tokens):
    _, cache = model.run_with_cache(tokens, names_filter="blocks.0.mlp.hook_post")
    neuron = int(cache["blocks.0.mlp.hook_post"].abs().sum((0, 1)).argmax())  # an active one

    def ablate(t, hook):
        t[:, :, neuron] = 0.0
        return t

    nn_model = to_nnsight(model)
    with torch.no_grad(), nn_model.trace(tokens):
        nn_model.blocks[0].mlp.hook_post.output[:, :, neuron] = 0.0
        edited = nn_model.output.save()
    with torch.no_grad():
        reference = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.mlp.hook_post", ablate)])
        assert not torch.allclose(reference, model(tokens)), "the ablation must matter"
    assert torch.equal(edited, reference)


def test_setting_a_q_channel_equals_run_with_hooks(model, tokens):
    def set_channel(t, hook):
        t[:, :, 1, 2] = 4.0
        return t

    nn_model = to_nnsight(model)
    with torch.no_grad(), nn_model.trace(tokens):
        nn_model.blocks[0].attn.hook_q.output[:, :, 1, 2] = 4.0
        edited = nn_model.output.save()
    with torch.no_grad():
        reference = model.run_with_hooks(tokens, fwd_hooks=[("blocks.0.attn.hook_q", set_channel)])
        assert not torch.allclose(reference, model(tokens))
    assert torch.equal(edited, reference)


def test_replacing_an_output_equals_run_with_hooks(model, tokens):
    nn_model = to_nnsight(model)
    with torch.no_grad(), nn_model.trace(tokens):
        mid = nn_model.blocks[1].hook_resid_mid
        mid.output = mid.output * 0.5
        edited = nn_model.output.save()
    with torch.no_grad():
        reference = model.run_with_hooks(
            tokens, fwd_hooks=[("blocks.1.hook_resid_mid", lambda t, hook: t * 0.5)]
        )
    assert torch.equal(edited, reference)


def test_attention_patterns_fire_when_a_trace_wants_them():
    model = tiny_model(density=0.25)
    tokens = random_tokens(model)
    nn_model = to_nnsight(model)
    assert not any(block.attn.always_explicit for block in model.blocks)  # no flag, no switch
    with torch.no_grad(), nn_model.trace(tokens):
        pattern = nn_model.blocks[0].attn.hook_pattern.output.save()
        nn_model.blocks[1].attn.hook_pattern.output[:, 0] = 0.0  # head 0 of layer 1 attends nowhere
        edited = nn_model.output.save()
    assert not any(block.attn.always_explicit for block in model.blocks)  # model unchanged
    _, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(pattern, cache["blocks.0.attn.hook_pattern"], rtol=0, atol=0)

    def silence_head(t, hook):
        t[:, 0] = 0.0
        return t

    with torch.no_grad():
        reference = model.run_with_hooks(
            tokens, fwd_hooks=[("blocks.1.attn.hook_pattern", silence_head)]
        )
        assert not torch.allclose(reference, model(tokens))
    # layer 0 ran explicitly here (its pattern was read) and fused in the reference: rounding
    torch.testing.assert_close(edited, reference, rtol=0, atol=1e-6)

    # a trace that does not touch the patterns runs the fused kernel, bit for bit
    with torch.no_grad(), nn_model.trace(tokens):
        fused = nn_model.output.save()
    with torch.no_grad():
        assert torch.equal(fused, model(tokens))


def test_several_invokes_patch_clean_into_corrupted(model):
    clean = random_tokens(model, batch=1, n_pos=10, seed=3)
    corrupt = random_tokens(model, batch=1, n_pos=10, seed=4)
    nn_model = to_nnsight(model)
    with torch.no_grad(), nn_model.trace() as tracer:
        barrier = tracer.barrier(2)  # the corrupted invoke waits for the clean value
        with tracer.invoke(clean):
            clean_mid = nn_model.blocks[1].hook_resid_pre.output[:, 5]
            barrier()
            clean_out = nn_model.output.save()
        with tracer.invoke(corrupt):
            barrier()
            nn_model.blocks[1].hook_resid_pre.output[:, 5] = clean_mid
            patched = nn_model.output.save()

    _, cache = model.run_with_cache(clean)

    def patch(resid, hook):
        resid[:, 5] = cache["blocks.1.hook_resid_pre"][:, 5]
        return resid

    with torch.no_grad():
        reference = model.run_with_hooks(corrupt, fwd_hooks=[("blocks.1.hook_resid_pre", patch)])
        assert not torch.allclose(reference, model(corrupt)), "the patch must matter"
        torch.testing.assert_close(clean_out, model(clean), rtol=0, atol=1e-6)
    torch.testing.assert_close(patched, reference, rtol=0, atol=1e-6)


def test_invokes_of_different_lengths_are_right_padded(model):
    long = random_tokens(model, batch=2, n_pos=9, seed=5)
    short = random_tokens(model, batch=1, n_pos=6, seed=6)
    nn_model = to_nnsight(model)
    with torch.no_grad(), nn_model.trace() as tracer:
        with tracer.invoke(long):
            long_out = nn_model.output.save()
        with tracer.invoke(short):
            short_out = nn_model.output.save()
    assert long_out.shape[0] == 2 and short_out.shape[0] == 1
    with torch.no_grad():  # causal: the padding never reaches the real positions
        torch.testing.assert_close(long_out, model(long), rtol=0, atol=1e-6)
        torch.testing.assert_close(short_out[:, :6], model(short), rtol=0, atol=1e-6)
