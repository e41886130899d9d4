"""Node masks as TransformerLens hook functions.

Every node site (:mod:`sparse_lens.nodes`) gets one mask parameter ``tau`` per channel, applied
at all token positions by a forward hook on the site's HookPoint:

    out = ablated + gate * (live - ablated),      gate = Heaviside(tau > 0)

so a closed node takes its ablation value (:mod:`.ablation`) and an open one is untouched. The
Heaviside has zero gradient almost everywhere, so the backward pass is straight-through with a
surrogate: d gate / d tau = sigmoid'(tau / T) / T (temperature T). The forward stays exactly
binary, so the loss the optimiser sees is the loss of a real discrete circuit; the surrogate
only says which way to move tau. Because d out / d gate = live - ablated is computed even for a
closed node, a closed node whose opening would help gets pushed back open.

Attention's q, k and v hooks fire before attention mixes positions, so masking them there
(``[batch, pos, head, d_head]``, flattened to ``[batch, pos, n_heads * d_head]`` for the mask)
removes a channel from the query/key/value of every position, which is what a q/k/v node means.
The same hook function serves fixed circuits (a boolean keep mask per site) and learned masks.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from jaxtyping import Bool, Float
from torch import Tensor, nn

from sparse_lens.circuits.ablation import Ablation, flatten_site
from sparse_lens.nodes import NodeSite, node_sites

Hooks = list[tuple[str, Callable]]


class _HeavisideSTE(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tau: Tensor, temperature: float) -> Tensor:
        ctx.save_for_backward(tau)
        ctx.temperature = temperature
        return (tau > 0).to(tau.dtype)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None]:
        (tau,) = ctx.saved_tensors
        s = torch.sigmoid(tau / ctx.temperature)
        return grad * s * (1 - s) / ctx.temperature, None


def heaviside_gate(tau: Float[Tensor, "*n"], temperature: float = 1.0) -> Float[Tensor, "*n"]:
    """Heaviside(tau > 0) forward, sigmoid'(tau / T) / T backward (straight-through)."""
    return _HeavisideSTE.apply(tau, temperature)


class _GatedSelect(torch.autograd.Function):
    """out = ablated + gate * (live - ablated) for a binary gate, computed as a select.

    The select keeps open channels bit-exact (``a + (b - a)`` need not round to ``b``) and
    costs one pass instead of three; the backward is that of the blend: d out / d live = gate,
    d out / d gate = live - ablated (summed over batch and positions).
    """

    @staticmethod
    def forward(ctx, live: Tensor, gate: Tensor, ablated: Tensor) -> Tensor:
        ctx.save_for_backward(live, gate, ablated)
        return torch.where(gate > 0, live, ablated)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        live, gate, ablated = ctx.saved_tensors
        grad_live = grad * gate if ctx.needs_input_grad[0] else None
        grad_gate = None
        if ctx.needs_input_grad[1]:
            grad_gate = ((live - ablated) * grad).sum(dim=tuple(range(grad.ndim - 1)))
        return grad_live, grad_gate, None


def masked(
    act: Float[Tensor, "batch pos *channels"],
    gate: Float[Tensor, " width"] | Bool[Tensor, " width"],
    site: NodeSite,
    ablation: Ablation,
) -> Float[Tensor, "batch pos *channels"]:
    """``act`` with every channel whose gate is 0 / False replaced by its ablation value.

    A float gate (learned masks) carries gradient: out = ablated + gate * (act - ablated).
    """
    flat = flatten_site(act, site)
    ablated = ablation.value(site, flat)
    if gate.dtype == torch.bool:
        out = torch.where(gate, flat, ablated)
    else:
        out = _GatedSelect.apply(flat, gate, ablated)
    return out.view_as(act)


def _site_hook(site: NodeSite, gate_of: Callable[[], Tensor], ablation: Ablation) -> Callable:
    def hook(act: Tensor, hook) -> Tensor:
        return masked(act, gate_of(), site, ablation)

    return hook


def _pass_start_hook(ablation: Ablation) -> Callable:
    def hook(act: Tensor, hook) -> None:
        ablation.new_forward()

    return hook


def keep_hooks(
    model: nn.Module, keep: dict[str, Bool[Tensor, " _width"]], ablation: Ablation
) -> Hooks:
    """Forward hooks that ablate every node whose ``keep`` entry is False.

    ``keep`` maps hook name -> [width] booleans; sites not in it are left alone, and sites kept
    entirely get no hook (nothing to do there).
    """
    hooks: Hooks = [("hook_embed", _pass_start_hook(ablation))]
    for site in node_sites(model.cfg):
        mask = keep.get(site.hook)
        if mask is None or bool(mask.all()):
            continue
        mask = mask.to(model.W_E.device)
        hooks.append((site.hook, _site_hook(site, lambda m=mask: m, ablation)))
    return hooks


class NodeMasks(nn.Module):
    """One learnable ``tau`` per node at every node site, and the hooks that apply them.

    Taus live in one flat parameter (site order from :func:`sparse_lens.nodes.node_sites`, then
    channel index), which keeps the optimiser, clamping, ranking and warm starts one-liners.
    """

    def __init__(
        self,
        sites: list[NodeSite],
        init_bias: float = 0.1,
        init_scale: float = 1e-2,
        generator: torch.Generator | None = None,
        temperature: float = 1.0,
    ):
        super().__init__()
        self.sites = list(sites)
        self.temperature = temperature
        self.offsets = [0]
        for site in self.sites:
            self.offsets.append(self.offsets[-1] + site.width)
        n = self.offsets[-1]
        self.tau = nn.Parameter(init_bias + init_scale * torch.randn(n, generator=generator))
        self._gates: Tensor | None = None

    @property
    def n_nodes(self) -> int:
        return self.offsets[-1]

    def gates(self) -> Float[Tensor, " n_nodes"]:
        """Binary gates of every node, with the surrogate gradient attached."""
        return heaviside_gate(self.tau, self.temperature)

    def n_open(self) -> int:
        return int((self.tau.detach() > 0).sum())

    @torch.no_grad()
    def clamp_(self) -> None:
        self.tau.clamp_(-1.0, 1.0)

    def site_slice(self, i: int) -> slice:
        return slice(self.offsets[i], self.offsets[i + 1])

    def hooks(self, ablation: Ablation) -> Hooks:
        """Hooks applying the current gates; call :meth:`refresh` once before each forward."""
        hooks: Hooks = [("hook_embed", _pass_start_hook(ablation))]
        for i, site in enumerate(self.sites):
            part = self.site_slice(i)
            hooks.append(
                (site.hook, _site_hook(site, lambda part=part: self._gates[part], ablation))
            )
        return hooks

    def refresh(self) -> Float[Tensor, " n_nodes"]:
        """Compute this step's gates (shared by all hooks and the sparsity penalty)."""
        self._gates = self.gates()
        return self._gates

    def nodes(self, flat_indices: list[int]) -> list[tuple[str, int]]:
        """(hook, index) of flat node positions."""
        out = []
        for flat in flat_indices:
            i = next(j for j in range(len(self.sites)) if self.offsets[j + 1] > flat)
            out.append((self.sites[i].hook, flat - self.offsets[i]))
        return out

    def keep_dict(self, keep: Bool[Tensor, " n_nodes"]) -> dict[str, Bool[Tensor, " _width"]]:
        """Split a flat keep vector into per-site masks."""
        return {site.hook: keep[self.site_slice(i)] for i, site in enumerate(self.sites)}
