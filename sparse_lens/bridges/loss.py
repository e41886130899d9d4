"""The bridge loss (paper section 2.3 / appendix A.3).

    L = w_ce * CE(sparse)
      + sum_i w_nmse_enc * NMSE(enc_i(h_dense_i), h_sparse_i) + w_nmse_dec * NMSE(dec_i(h_sparse_i), h_dense_i)
      + sum_i w_kl_enc * KL(dense || sparse run from site i on enc_i(h_dense_i))
      + sum_i w_kl_dec * KL(dense || dense run from site i on dec_i(h_sparse_i))

The dense model is always frozen (its forward runs without gradients). Gradients reach the
bridges, and the sparse model too when it requires grad (the joint route); post hoc it is frozen
and the CE term is a constant that moves nothing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from sparse_lens.bridges.hybrid import residuals_at_sites, run_from_site
from sparse_lens.bridges.module import Bridges
from sparse_lens.errors import SparseLensError


@dataclass(frozen=True)
class LossWeights:
    ce: float = 1.0
    nmse_enc: float = 1.0
    nmse_dec: float = 1.0
    kl_enc: float = 1.0
    kl_dec: float = 1.0

    def __post_init__(self):
        for item in fields(self):
            value = getattr(self, item.name)
            if not value >= 0.0:
                raise SparseLensError(f"loss weight must be >= 0, got {value}", field=item.name)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


def nmse(pred: Float[Tensor, "... d"], target: Float[Tensor, "... d"]) -> Tensor:
    """Squared error over the variance of the target (per token, summed over channels); the
    variance is a scale, so no gradient flows through it."""
    target_flat = target.reshape(-1, target.shape[-1])
    variance = (target_flat - target_flat.mean(0)).pow(2).sum(-1).mean().detach()
    error = (pred - target).pow(2).sum(-1).mean()
    return error / variance.clamp_min(1e-12)


def kl_to(
    reference_logits: Float[Tensor, "batch pos vocab"], logits: Float[Tensor, "batch pos vocab"]
) -> Tensor:
    """Mean over tokens of KL(softmax(reference) || softmax(logits))."""
    ref = F.log_softmax(reference_logits.float(), -1).reshape(-1, reference_logits.shape[-1])
    other = F.log_softmax(logits.float(), -1).reshape(-1, logits.shape[-1])
    return F.kl_div(other, ref, log_target=True, reduction="batchmean")


@dataclass
class LossTerms:
    total: Tensor
    ce: float
    per_site: list[dict[str, float]]
    """Per site: nmse_enc, nmse_dec, kl_enc, kl_dec (floats, for logging and evaluation)."""


def bridge_loss(
    dense,
    sparse,
    bridges: Bridges,
    tokens: Int[Tensor, "batch pos"],
    weights: LossWeights = LossWeights(),
) -> LossTerms:
    sites = bridges.sites
    with torch.no_grad():
        dense_logits, h_dense = residuals_at_sites(dense, tokens, sites)
    ce, h_sparse = residuals_at_sites(sparse, tokens, sites, return_type="loss")
    total = weights.ce * ce
    per_site = []
    for site in sites:
        i = site.index
        encoded = bridges.encode(i, h_dense[i])
        decoded = bridges.decode(i, h_sparse[i])
        terms = {
            "nmse_enc": nmse(encoded, h_sparse[i]),
            "nmse_dec": nmse(decoded, h_dense[i]),
        }
        if weights.kl_enc:
            terms["kl_enc"] = kl_to(dense_logits, run_from_site(sparse, encoded, site, tokens))
        if weights.kl_dec:
            terms["kl_dec"] = kl_to(dense_logits, run_from_site(dense, decoded, site, tokens))
        for name, value in terms.items():
            total = total + getattr(weights, name) * value
        per_site.append({name: float(value.detach()) for name, value in terms.items()})
    return LossTerms(total=total, ce=float(ce.detach()), per_site=per_site)
