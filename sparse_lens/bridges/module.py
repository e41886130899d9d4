"""The bridges of one dense / sparse pair: per site an encoder and a decoder.

encoder ``i``: dense residual -> sparse residual, Linear then AbsTopK (``encoder_frac`` of the
sparse width survive per token; None keeps all). decoder ``i``: sparse residual -> dense
residual, Linear. Both act on the residual stream before the norm (see :mod:`.sites`).
"""

from __future__ import annotations

from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor, nn

from sparse_lens.bridges.sites import BridgeSite, bridge_sites
from sparse_lens.errors import SparseLensError
from sparse_lens.model.components import AbsTopK


class Bridges(nn.Module):
    def __init__(
        self, n_layers: int, d_dense: int, d_sparse: int, encoder_frac: float | None = 0.25
    ):
        super().__init__()
        if encoder_frac is not None and not 0.0 < encoder_frac <= 1.0:
            raise SparseLensError(f"must be in (0, 1], got {encoder_frac}", field="encoder_frac")
        self.n_layers, self.d_dense, self.d_sparse = n_layers, d_dense, d_sparse
        self.encoder_frac = encoder_frac
        self.sites: list[BridgeSite] = bridge_sites(n_layers)
        self.encoders = nn.ModuleList(nn.Linear(d_dense, d_sparse) for _ in self.sites)
        self.decoders = nn.ModuleList(nn.Linear(d_sparse, d_dense) for _ in self.sites)
        self.topk = nn.Identity() if encoder_frac is None else AbsTopK(encoder_frac)

    @classmethod
    def for_pair(cls, dense, sparse, encoder_frac: float | None = 0.25, seed: int = 0) -> Bridges:
        """Untrained bridges (torch's default Linear init, seeded) for a checked model pair."""
        check_pair(dense, sparse)
        torch.manual_seed(seed)
        return cls(dense.cfg.n_layers, dense.cfg.d_model, sparse.cfg.d_model, encoder_frac)

    def encode(
        self, site: int, h_dense: Float[Tensor, "... d_dense"]
    ) -> Float[Tensor, "... d_sparse"]:
        return self.topk(self.encoders[site](h_dense))

    def decode(
        self, site: int, h_sparse: Float[Tensor, "... d_sparse"]
    ) -> Float[Tensor, "... d_dense"]:
        return self.decoders[site](h_sparse)

    def config(self) -> dict[str, Any]:
        return {
            "n_layers": self.n_layers,
            "d_dense": self.d_dense,
            "d_sparse": self.d_sparse,
            "encoder_frac": self.encoder_frac,
        }

    def check_models(self, dense, sparse) -> None:
        """The pair these bridges were fitted for: same layers and widths, else an error."""
        check_pair(dense, sparse)
        for role, model, width in (
            ("dense", dense, self.d_dense),
            ("sparse", sparse, self.d_sparse),
        ):
            if model.cfg.d_model != width:
                raise SparseLensError(
                    f"the {role} model has d_model {model.cfg.d_model} but the bridges were fitted "
                    f"for width {width}; use the models the bridges were fitted on",
                    field=f"d_{role}",
                )
        if dense.cfg.n_layers != self.n_layers:
            raise SparseLensError(
                f"the models have {dense.cfg.n_layers} layers, the bridges {self.n_layers}",
                field="n_layers",
            )


def check_pair(dense, sparse) -> None:
    """Two models can be bridged if they share the vocabulary (the hybrids compare logits token
    by token) and the number of layers (sites correspond one to one)."""
    if dense.cfg.d_vocab != sparse.cfg.d_vocab:
        raise SparseLensError(
            f"vocabularies differ: the dense model has d_vocab {dense.cfg.d_vocab}, the sparse "
            f"{sparse.cfg.d_vocab}; bridge two models trained with the same tokenizer",
            field="d_vocab",
        )
    if dense.tokenizer is not None and sparse.tokenizer is not None:
        if dense.tokenizer.get_vocab() != sparse.tokenizer.get_vocab():
            raise SparseLensError(
                "the two models' tokenizers differ (same size, other tokens); bridge two models "
                "trained with the same tokenizer",
                field="tokenizer",
            )
    if dense.cfg.n_layers != sparse.cfg.n_layers:
        raise SparseLensError(
            f"layer counts differ (dense {dense.cfg.n_layers}, sparse {sparse.cfg.n_layers}); "
            "single-switch hybrids need one site per sublayer in both models",
            field="n_layers",
        )
