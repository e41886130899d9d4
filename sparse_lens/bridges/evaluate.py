"""Score bridges: every single-switch hybrid, per site, by KL to the dense model and CE.

Per site ``i``: ``nmse_enc`` / ``nmse_dec`` (reconstruction), ``kl_enc`` / ``ce_enc`` (dense up
to i, encode, the sparse model from i), ``kl_dec`` / ``ce_dec`` (the sparse model up to i,
decode, the dense model from i) and ``kl_roundtrip`` (dense up to i, encode then decode, dense
from i). Overall: the dense and sparse CE and KL(dense || sparse), the floor and ceiling the
hybrids sit between.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from sparse_lens.bridges.hybrid import residuals_at_sites, run_from_site
from sparse_lens.bridges.loss import kl_to, nmse
from sparse_lens.bridges.module import Bridges

SITE_METRICS = ("nmse_enc", "nmse_dec", "kl_enc", "kl_dec", "kl_roundtrip", "ce_enc", "ce_dec")


def _ce(model, logits: Tensor, tokens: Tensor) -> Tensor:
    return model.loss_fn(logits, tokens)


@torch.no_grad()
def evaluate_bridges(dense, sparse, bridges: Bridges, batches: Iterable[Tensor]) -> dict[str, Any]:
    """Token-weighted means over ``batches`` ([batch, pos] token tensors); see the module doc."""
    sites = bridges.sites
    sums: dict[str, float] = {}
    site_sums = [dict.fromkeys(SITE_METRICS, 0.0) for _ in sites]
    count = 0
    for tokens in batches:
        weight = tokens.numel()
        count += weight
        dense_logits, h_dense = residuals_at_sites(dense, tokens, sites)
        sparse_logits, h_sparse = residuals_at_sites(sparse, tokens, sites)
        overall = {
            "ce_dense": _ce(dense, dense_logits, tokens),
            "ce_sparse": _ce(sparse, sparse_logits, tokens),
            "kl_sparse": kl_to(dense_logits, sparse_logits),
        }
        for name, value in overall.items():
            sums[name] = sums.get(name, 0.0) + float(value) * weight
        for site in sites:
            i = site.index
            encoded = bridges.encode(i, h_dense[i])
            decoded = bridges.decode(i, h_sparse[i])
            enc_logits = run_from_site(sparse, encoded, site, tokens)
            dec_logits = run_from_site(dense, decoded, site, tokens)
            round_logits = run_from_site(dense, bridges.decode(i, encoded), site, tokens)
            values = {
                "nmse_enc": nmse(encoded, h_sparse[i]),
                "nmse_dec": nmse(decoded, h_dense[i]),
                "kl_enc": kl_to(dense_logits, enc_logits),
                "kl_dec": kl_to(dense_logits, dec_logits),
                "kl_roundtrip": kl_to(dense_logits, round_logits),
                "ce_enc": _ce(sparse, enc_logits, tokens),
                "ce_dec": _ce(dense, dec_logits, tokens),
            }
            for name, value in values.items():
                site_sums[i][name] += float(value) * weight
    if not count:
        raise ValueError("no batches to evaluate")
    return {
        **{name: value / count for name, value in sums.items()},
        "sites": [
            {"site": site.label, "hook": site.hook, **{k: v / count for k, v in s.items()}}
            for site, s in zip(sites, site_sums, strict=True)
        ],
        "tokens": count,
    }


def format_table(result: dict[str, Any], control: dict[str, Any] | None = None) -> str:
    """The per-site table `sparse-lens bridge eval` prints (with the control's KL if given)."""
    header = ["site", *SITE_METRICS] + (["ctl_kl_enc", "ctl_kl_dec"] if control else [])
    rows = [header]
    for index, site in enumerate(result["sites"]):
        row = [site["site"], *(f"{site[m]:.4f}" for m in SITE_METRICS)]
        if control:
            other = control["sites"][index]
            row += [f"{other['kl_enc']:.4f}", f"{other['kl_dec']:.4f}"]
        rows.append(row)
    widths = [max(len(r[c]) for r in rows) for c in range(len(header))]
    lines = ["  ".join(cell.rjust(w) for cell, w in zip(r, widths, strict=True)) for r in rows]
    lines.append(
        f"CE dense {result['ce_dense']:.4f}, CE sparse {result['ce_sparse']:.4f}, "
        f"KL(dense || sparse) {result['kl_sparse']:.4f}, over {result['tokens']:,} tokens"
    )
    return "\n".join(lines)
