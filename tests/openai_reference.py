"""An independent forward pass of OpenAI's circuit_sparsity GPT, over THEIR state dict.

Written from REFERENCE sections 1 and 7 (and the facts of their released gpt.py), in their
layout and with their hook names, without touching sparse_lens.model: the importer's tests
compare SparseTransformer's logits and activations against this.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

GPTCONFIG_DEFAULTS = {
    "bias": True,
    "residual_activation_type": "identity",
    "activation_type": "gelu",
    "afrac": None,
    "afrac_loctypes": "attn_in,attn_out,mlp_in,mlp_out",
    "tied_unembed": True,
    "enable_bigram_table": False,
    "d_pos_emb": None,
    "sink": False,
    "flash": True,
}


def reference_forward(
    beeg: dict, sd: dict[str, Tensor], idx: Tensor, hooks: dict[str, Tensor] | None = None
) -> Tensor:
    """Logits [batch, pos, vocab] of their model; their named activations go into ``hooks``."""
    cfg = {**GPTCONFIG_DEFAULTS, **beeg}
    n_head, d_model = cfg["n_head"], cfg["d_model"]
    d_head = cfg.get("d_head") or d_model // n_head
    eps = torch.finfo(torch.float32).eps  # nn.RMSNorm(d), eps=None
    locations = set(cfg["afrac_loctypes"].split(","))
    sink = cfg["sink"] and cfg["flash"]  # their sink lives in the flash attention implementation
    B, T = idx.shape
    save = hooks.__setitem__ if hooks is not None else (lambda name, value: None)

    def rms_norm(x: Tensor, weight: Tensor) -> Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight

    def maybe_abstopk(x: Tensor, loc: str) -> Tensor:
        if cfg["afrac"] is None or loc not in locations:
            return x
        k = int(cfg["afrac"] * x.shape[-1])
        _, keep = torch.topk(x.abs(), k, dim=-1)
        return torch.zeros_like(x).scatter(-1, keep, x.gather(-1, keep))

    def linear(x: Tensor, name: str) -> Tensor:
        out = x @ sd[name + ".weight"].T
        return out + sd[name + ".bias"] if cfg["bias"] else out

    act = {"gelu": lambda x: F.gelu(x), "relu": torch.relu}[cfg["activation_type"]]

    def residual(x: Tensor, loc: str) -> Tensor:
        if cfg["residual_activation_type"] == "relu":
            x = torch.relu(x)
        return maybe_abstopk(x, loc)

    tok_emb = sd["transformer.wte.weight"][idx]
    pos_emb = sd["transformer.wpe.weight"][:T].unsqueeze(0).expand(B, T, -1)
    cat_pos = cfg["d_pos_emb"] is not None
    x = tok_emb if cat_pos else tok_emb + pos_emb
    causal = torch.ones(T, T, dtype=torch.bool).tril()

    for i in range(cfg["n_layer"]):
        p = f"transformer.h.{i}."
        save(f"{i}.resid_in", x)

        a = rms_norm(x, sd[p + "ln_1.weight"])
        if cat_pos:
            a = torch.cat([a, rms_norm(pos_emb, sd[p + "ln_p1.weight"])], dim=-1)
        a = maybe_abstopk(a, "attn_in")
        save(f"{i}.attn.act_in", a)
        q, k, v = linear(a, p + "attn.c_attn").split(n_head * d_head, dim=-1)
        k = maybe_abstopk(k, "attn_k")
        q = maybe_abstopk(q, "attn_q")
        v = maybe_abstopk(v, "attn_v")
        save(f"{i}.attn.q", q)
        save(f"{i}.attn.k", k)
        save(f"{i}.attn.v", v)
        qh, kh, vh = (t.view(B, T, n_head, d_head).transpose(1, 2) for t in (q, k, v))
        scores = (qh @ kh.transpose(-2, -1)) / math.sqrt(d_head)
        scores = scores.masked_fill(~causal, float("-inf"))
        if sink:
            # a prepended slot with zero key (score = its logit) and zero value: it only adds
            # exp(sink_logit) to the softmax denominator
            logit = sd[p + "attn.attn_imp.sink_logit"].view(1, n_head, 1, 1)
            top = torch.maximum(scores.amax(-1, keepdim=True), logit)
            numer = torch.exp(scores - top)
            weights = numer / (numer.sum(-1, keepdim=True) + torch.exp(logit - top))
        else:
            weights = torch.softmax(scores, dim=-1)
        y = (weights @ vh).transpose(1, 2).reshape(B, T, n_head * d_head)
        save(f"{i}.attn.y", y)
        delta = maybe_abstopk(linear(y, p + "attn.c_proj"), "attn_out")
        save(f"{i}.attn.resid_delta", delta)
        x = residual(x + delta, "resid_post_attn")

        save(f"{i}.resid_mid", x)
        m = rms_norm(x, sd[p + "ln_2.weight"])
        if cat_pos:
            m = torch.cat([m, rms_norm(pos_emb, sd[p + "ln_p2.weight"])], dim=-1)
        m = maybe_abstopk(m, "mlp_in")
        save(f"{i}.mlp.act_in", m)
        hidden = maybe_abstopk(act(linear(m, p + "mlp.c_fc")), "mlp_neuron")
        save(f"{i}.mlp.post_act", hidden)
        delta = maybe_abstopk(linear(hidden, p + "mlp.c_proj"), "mlp_out")
        save(f"{i}.mlp.resid_delta", delta)
        x = residual(x + delta, "resid_post_mlp")

    save("final_resid", x)
    x = rms_norm(x, sd["transformer.ln_f.weight"])
    lm_head = sd["transformer.wte.weight"] if cfg["tied_unembed"] else sd["lm_head.weight"]
    logits = x @ lm_head.T
    if "final_logits_bias" in sd:
        logits = logits + sd["final_logits_bias"]
    if cfg["enable_bigram_table"]:
        logits = logits + sd["bigram_table"][idx]
    return logits
