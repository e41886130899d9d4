"""The ActivationCache ``SparseTransformer.run_with_cache`` returns: TL's, told where a sparse
model is not the model TL's decompositions assume.

Two differences matter:

* With concatenated positions (OpenAI's ``d_pos_emb``), ``hook_pos_embed`` is never added to the
  residual stream: positions reach each sublayer through its own norm and the concat. TL counts
  any cached ``hook_pos_embed`` as a residual component (and would stack a [.., d_pos_emb]
  tensor with [.., d_model] ones); here it is not one, so ``decompose_resid`` is embed + writes.
* AbsTopK on a sublayer's write (``attn_out`` / ``mlp_out`` locations) acts AFTER W_O / W_out, so
  per-head results (``stack_head_results``) and per-neuron results (``stack_neuron_results``,
  ``get_neuron_results``) sum to the write before AbsTopK, not to ``hook_attn_out`` /
  ``hook_mlp_out``. ``write_mask=True`` (a constructor argument, an attribute, or
  ``model.run_with_cache(..., write_mask=True)``) restricts each head's and neuron's result to
  the channels its sublayer's write kept. That decomposition is exact:
  ``sum_h result_h + b_O * kept == hook_attn_out`` (and the same for neurons with ``b_out``).
  Left at None, TL's numbers are returned with a :class:`NonAdditiveWarning`; ``False`` returns
  them without the warning.

A stack normalised by this cache (``decompose_resid(..., apply_ln=True)``, ``apply_ln_to_stack``)
remembers it: ``logit_attrs`` and ``apply_ln_to_stack`` do not divide it by the norm's scale a
second time (TL would, silently squaring the scale). So both TL routes to direct logit
attribution, ``logit_attrs(decompose_resid(layer=-1))`` and
``logit_attrs(decompose_resid(layer=-1, apply_ln=True))``, give the same numbers; with
:meth:`SparseTransformer.tokens_to_residual_directions` folding ``ln_final.w`` they sum to the
logit difference minus the ``b_U`` and bigram-table differences (which no residual part makes).

A ReLU residual or residual AbsTopK (``resid_post_attn`` / ``resid_post_mlp``) makes the
residual stream itself a non-linear function of the writes; ``decompose_resid`` and
``stack_head_results(incl_remainder=True)`` then warn too (there is no exact additive split).
"""

from __future__ import annotations

import warnings
import weakref
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor
from transformer_lens import ActivationCache
from transformer_lens.utilities import Slice


class NonAdditiveWarning(UserWarning):
    """A TL decomposition of a sparse model whose parts do not sum to the hooked activation."""


_WRITE = {"attn": ("attn_out", "hook_attn_out", "stack_head_results", "b_O"),
          "mlp": ("mlp_out", "hook_mlp_out", "stack_neuron_results", "b_out")}  # fmt: skip


class SparseActivationCache(ActivationCache):
    """A TransformerLens ``ActivationCache`` for a :class:`SparseTransformer` (module docstring)."""

    def __init__(
        self,
        cache_dict: dict[str, Tensor],
        model: Any,
        has_batch_dim: bool = True,
        write_mask: bool | None = None,
    ):
        super().__init__(cache_dict, model, has_batch_dim=has_batch_dim)
        self.write_mask = write_mask
        self._normalised: dict[int, tuple[weakref.ref, tuple[int, bool]]] = {}
        if model.cfg.positional_embedding_type == "concat":
            self.has_pos_embed = False  # positions are concatenated to reads, not added

    # ------------------------------------------------------------------ when TL's sums are off
    def _write_is_sparse(self, sublayer: str) -> bool:
        return self.model.cfg.abstopk_at(_WRITE[sublayer][0]) is not None

    def _resid_is_nonlinear(self) -> bool:
        cfg = self.model.cfg
        topk = any(cfg.abstopk_at(loc) is not None for loc in ("resid_post_attn", "resid_post_mlp"))
        return topk or cfg.residual_activation != "identity"

    def _masking(self, sublayer: str) -> bool:
        """Whether results of ``sublayer`` are masked to its kept write channels (warns when
        the caller did not choose and TL's unmasked results do not sum to the write)."""
        if not self._write_is_sparse(sublayer):
            return False
        if self.write_mask is None:
            location, hook, method, bias = _WRITE[sublayer]
            warnings.warn(
                f"AbsTopK acts on the {sublayer} write after its weights ({location}), so these "
                f"per-{'head' if sublayer == 'attn' else 'neuron'} results sum to the write before "
                f"AbsTopK, not to {hook}. For an exact decomposition set cache.write_mask = True "
                f"(or run_with_cache(..., write_mask=True)): each result is then restricted to "
                f"the channels the write kept, and they sum to {hook} minus the kept {bias}. "
                "Set write_mask = False to silence this warning.",
                NonAdditiveWarning,
                stacklevel=3,
            )
        return bool(self.write_mask)

    def _warn_nonlinear_resid(self) -> None:
        if self._resid_is_nonlinear():
            warnings.warn(
                "this model applies a ReLU or AbsTopK to the residual stream, so the residual "
                "is not the sum of the embeddings and the sublayer writes; decomposition parts "
                "will not sum to hook_resid_post",
                NonAdditiveWarning,
                stacklevel=3,
            )

    def _kept(self, hook: str, layer: int) -> Tensor:
        """1.0 where ``blocks.{layer}.{hook}`` is nonzero: the channels AbsTopK kept (a kept
        channel that is exactly 0 contributes 0 either way, so the split stays exact)."""
        write = self[f"blocks.{layer}.{hook}"]
        return (write != 0).to(write.dtype)

    # ------------------------------------------------------------------ normalise once
    def _norm_site(self, layer: int | None, mlp_input: bool) -> tuple[int, bool]:
        n_layers = self.model.cfg.n_layers
        layer = n_layers if layer is None or layer == -1 else layer
        return layer, mlp_input and layer != n_layers

    def _is_normalised(self, stack: Tensor, site: tuple[int, bool]) -> bool:
        entry = self._normalised.get(id(stack))
        return entry is not None and entry[0]() is stack and entry[1] == site

    def apply_ln_to_stack(
        self,
        residual_stack: Tensor,
        layer: int | None = None,
        mlp_input: bool = False,
        pos_slice: Any = None,
        batch_slice: Any = None,
        has_batch_dim: bool = True,
        recompute_ln: bool = False,
    ) -> Tensor:
        site = self._norm_site(layer, mlp_input)
        if self._is_normalised(residual_stack, site):
            if has_batch_dim:  # TL slices the stack's batch before scaling; do the same
                batch_slice = batch_slice if isinstance(batch_slice, Slice) else Slice(batch_slice)
                return batch_slice.apply(residual_stack, dim=1)
            return residual_stack
        out = super().apply_ln_to_stack(
            residual_stack, layer, mlp_input, pos_slice, batch_slice, has_batch_dim, recompute_ln
        )
        if out is not residual_stack:
            key = id(out)
            self._normalised[key] = (weakref.ref(out, lambda _, k=key: self._normalised.pop(k, None)), site)
        return out

    # ------------------------------------------------------------------ TL methods, corrected
    def decompose_resid(self, *args: Any, **kwargs: Any) -> Any:
        self._warn_nonlinear_resid()
        return super().decompose_resid(*args, **kwargs)

    def stack_head_results(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("incl_remainder"):
            self._warn_nonlinear_resid()
        if not self._masking("attn"):
            return super().stack_head_results(*args, **kwargs)
        with self._masked_head_results():
            return super().stack_head_results(*args, **kwargs)

    def compute_head_results(self) -> None:
        if self._masking("attn"):
            raise NotImplementedError(
                "with write_mask=True head results depend on the mask; use stack_head_results, "
                "which computes the masked results on the fly"
            )
        super().compute_head_results()

    @contextmanager
    def _masked_head_results(self):
        """Put the masked per-head results in the cache for the duration of one TL call."""
        keys = [f"blocks.{layer}.attn.hook_result" for layer in range(self.model.cfg.n_layers)]
        saved = {key: self.cache_dict[key] for key in keys if key in self.cache_dict}
        for layer, key in enumerate(keys):
            z = self[f"blocks.{layer}.attn.hook_z"]
            result = torch.einsum("...hd,hdm->...hm", z, self.model.blocks[layer].attn.W_O)
            self.cache_dict[key] = result * self._kept("hook_attn_out", layer).unsqueeze(-2)
        try:
            yield
        finally:
            for key in keys:
                self.cache_dict.pop(key)
            self.cache_dict.update(saved)

    def get_neuron_results(
        self,
        layer: int,
        neuron_slice: Any = None,
        pos_slice: Any = None,
        project_output_onto: Tensor | None = None,
    ) -> Tensor:
        if not self._masking("mlp"):
            return super().get_neuron_results(layer, neuron_slice, pos_slice, project_output_onto)
        pos_slice = pos_slice if isinstance(pos_slice, Slice) else Slice(pos_slice)
        kept = pos_slice.apply(self._kept("hook_mlp_out", layer), dim=-2)
        results = super().get_neuron_results(layer, neuron_slice, pos_slice) * kept.unsqueeze(-2)
        if project_output_onto is None:
            return results
        return results @ project_output_onto

    def get_full_resid_decomposition(self, *args: Any, **kwargs: Any) -> Any:
        masking = [self._masking(sublayer) for sublayer in ("attn", "mlp")]
        if any(masking):
            raise NotImplementedError(
                "get_full_resid_decomposition adds the unmasked output biases, so with "
                "write_mask=True it would not be exact; use stack_head_results(incl_remainder="
                "True) and stack_neuron_results(incl_remainder=True) instead"
            )
        self._warn_nonlinear_resid()
        return super().get_full_resid_decomposition(*args, **kwargs)
