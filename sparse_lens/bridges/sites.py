"""The bridge sites: every sublayer input, on the residual stream before the norm.

Site ``2 * l`` is the stream entering block ``l``'s attention (``blocks.{l}.hook_resid_pre``),
site ``2 * l + 1`` the stream entering its MLP (``blocks.{l}.hook_resid_mid``). Both models of a
bridged pair have the same number of layers, so sites correspond one to one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class BridgeSite:
    index: int
    layer: int
    sublayer: Literal["attn", "mlp"]

    @property
    def hook(self) -> str:
        """The HookPoint holding the pre-norm residual stream this sublayer reads."""
        name = "hook_resid_pre" if self.sublayer == "attn" else "hook_resid_mid"
        return f"blocks.{self.layer}.{name}"

    @property
    def read_hook(self) -> str:
        """The node site of this sublayer's post-norm read (its channels are steerable nodes)."""
        return f"blocks.{self.layer}.{self.sublayer}.hook_read"

    @property
    def label(self) -> str:
        return f"L{self.layer}.{self.sublayer}"


def bridge_sites(n_layers: int) -> list[BridgeSite]:
    return [
        BridgeSite(2 * layer + offset, layer, sublayer)
        for layer in range(n_layers)
        for offset, sublayer in enumerate(("attn", "mlp"))
    ]


def site_of_read_hook(n_layers: int, read_hook: str) -> BridgeSite | None:
    return next((s for s in bridge_sites(n_layers) if s.read_hook == read_hook), None)
