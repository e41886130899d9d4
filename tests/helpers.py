"""Builders for tiny, seeded models used across the test suite (SAELens-style helpers)."""

from __future__ import annotations

import torch

from sparse_lens import SparseConfig, SparseTransformer

MODEL_VARIANTS = {
    "paper": {},
    "sink+concat": dict(attn_sink=True, positional_embedding_type="concat", d_pos_emb=8),
    "standard-pos+fixed-bigram+tied": dict(
        positional_embedding_type="standard", bigram_table="fixed", tied_unembed=True
    ),
    "relu-resid+resid-topk": dict(
        residual_activation="relu",
        afrac_locations=("attn_in", "mlp_neuron", "resid_post_attn", "resid_post_mlp"),
        act_fn="relu",
    ),
    "dense-no-bias-no-bigram": dict(afrac=None, use_bias=False, bigram_table="off"),
}
"""Architecture variants every model-level property is checked on (tiny_model overrides)."""


def tiny_config(**overrides) -> SparseConfig:
    fields = dict(n_layers=2, d_model=32, n_heads=2, d_head=16, d_mlp=64, n_ctx=24, d_vocab=96)
    fields.update(overrides)
    return SparseConfig(**fields)


def tiny_model(seed: int = 0, density: float | None = None, **overrides) -> SparseTransformer:
    """A random tiny model; with ``density`` every weight matrix keeps its largest entries, and
    biases, norms, the sink and the bigram table get random nonzero values so every path matters."""
    model = SparseTransformer(tiny_config(**overrides), seed=seed)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf.startswith("b_") or leaf in ("sink_logit", "W_bigram"):
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
            elif leaf == "w":
                param.copy_(1 + 0.1 * torch.randn(param.shape, generator=generator))
            elif density is not None and param.ndim >= 2:
                k = max(1, int(density * param.numel()))
                threshold = param.abs().flatten().kthvalue(param.numel() - k + 1).values
                param.mul_(param.abs() >= threshold)
    return model.eval()


def random_tokens(
    model: SparseTransformer, batch: int = 2, n_pos: int = 12, seed: int = 0
) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.cfg.d_vocab, (batch, n_pos), generator=generator)


def tiny_tokenizer(vocab_size: int = 300):
    """A byte-level BPE of exactly ``vocab_size`` tokens, trained on a few stdlib modules."""
    import functools
    import inspect
    import json

    from sparse_lens.data.tokenizer import train_tokenizer

    @functools.lru_cache(maxsize=4)
    def build(size: int):
        texts = [
            inspect.getsource(module) for module in (json.decoder, json.encoder, functools, inspect)
        ]
        return train_tokenizer(texts, vocab_size=size)

    return build(vocab_size)


def tiny_model_with_tokenizer(seed: int = 0, **overrides):
    tokenizer = tiny_tokenizer()
    model = tiny_model(seed=seed, d_vocab=tokenizer.get_vocab_size(), n_ctx=64, **overrides)
    model.set_tokenizer(tokenizer)
    return model
