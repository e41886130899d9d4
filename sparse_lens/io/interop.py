"""Hand a SparseTransformer to the wider ecosystem: a TL 4 ``TransformerBridge`` and nnsight.

TransformerLens 4 analyses new architectures through ``TransformerBridge``: an
``ArchitectureAdapter`` names the model's components (embed, blocks, attn, mlp, norms, unembed),
``build_bridge_from_module`` swaps each of them for a bridge component that wraps it, and the
bridge then runs the wrapped model's OWN forward. We rely on that last point: every bridge
component here is a pass-through (``hook_in`` -> our module -> ``hook_out``), so the bridge's
logits are our logits, bit for bit, bigram table and AbsTopK included.

Why bespoke components instead of TL's generic ones: TL's bridges assume Hugging Face modules
(``nn.Linear`` q/k/v/o projections, ``weight`` attributes, attention that returns its weights)
and recompute pieces themselves. Our modules already compute everything, store TL-layout
weights (``W_Q`` [head, d_in, d_head], ...) and fire TL-named HookPoints. So each component
here (1) reads weights straight from the wrapped module and (2) *adopts* the wrapped module's
HookPoints under their own names. The bridge's hook registry therefore holds our real
HookPoints: ``blocks.0.attn.hook_pattern`` on the bridge is the model's ``hook_pattern``, fired
inside the real computation, so caching it gives the true pattern, ``hook_attn_scores`` is
truly pre-softmax (TL's generic AttentionBridge would report the post-softmax weights there and
silently drop edits), and an edit at any node changes the output exactly as
``SparseTransformer.run_with_hooks`` would. Node names (``blocks.0.mlp.hook_post[3]``) mean the
same thing on the model and on its bridge.

What the bridge adds: TL's bridge API (``run_with_cache`` -> ``ActivationCache``,
``run_with_hooks``, ``hooks()``, ``generate``, stacked weights ``W_Q`` ..., ``to_tokens`` /
``to_str_tokens`` through an HF ``PreTrainedTokenizerFast``, ``stop_at_layer``, TL's patching
helpers) plus ``hook_in`` / ``hook_out`` at every component boundary. The root ``hook_embed`` /
``hook_pos_embed`` are TL's aliases of ``embed.hook_out`` / ``pos_embed.hook_out`` (same tensors,
firing just before the model's own root hooks); ``hook_unembed`` is the logits before the bigram
table, ``bigram.hook_logits`` the table's share. ``state_dict()`` has the model's own keys.
Caveats (tests/test_bridge.py checks them):

* No weight processing: ``enable_compatibility_mode()`` raises RuntimeError (the adapter opts
  out; TL's message speaks of a "diverging" path) and ``process_weights()`` raises
  NotImplementedError, since centering densifies the sparse matrices (REFERENCE section 8).
  Weights are already in TL layout; fold norms yourself if an analysis needs it.
* No ``start_at_layer`` and no attention masks: TL passes them to the wrapped forward as HF
  arguments (``inputs_embeds``, ``attention_mask``), which SparseTransformer does not take; our
  driver turns them into a SparseLensError. Call ``SparseTransformer(resid, start_at_layer=,
  tokens=)`` directly. Right-padded string batches need no mask and work (their loss, unlike
  SparseTransformer's, includes the padding positions); left padding is refused.
* ``set_use_attn_result`` / ``use_split_qkv_input`` / ``use_attn_in`` raise NotImplementedError
  (TL's check; our attention has no fork point before its projections). For per-head results
  build the model with ``cfg.use_attn_result = True`` before bridging: its ``hook_result`` is
  adopted like every other hook.
* ``generate`` recomputes the whole prefix each step (no KV cache) and is single-sequence.
* Bridging rewires the wrapped module tree in place (TL's design), so by default we wrap a deep
  copy and the caller's model is left untouched.
"""

from __future__ import annotations

import copy as copy_module
import functools
import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from transformer_lens.config import TransformerBridgeConfig
from transformer_lens.hook_points import HookPoint
from transformer_lens.model_bridge import TransformerBridge
from transformer_lens.model_bridge.architecture_adapter import ArchitectureAdapter
from transformer_lens.model_bridge.generalized_components import (
    AttentionBridge,
    BlockBridge,
    EmbeddingBridge,
    MLPBridge,
    PosEmbedBridge,
    RMSNormalizationBridge,
    UnembeddingBridge,
)
from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent
from transformer_lens.model_bridge.sources.transformers_driver import TransformersDriver
from transformers import PreTrainedTokenizerFast

from sparse_lens.errors import SparseLensError
from sparse_lens.model.transformer import EOT, SparseTransformer

ARCHITECTURE = "SparseLensForCausalLM"
"""The name our ArchitectureAdapter is registered under in TL's ArchitectureAdapterFactory."""


# --------------------------------------------------------------------------- components
class _AdoptsHooks:
    """Mixin for bridge components that wrap one of our modules.

    ``forward`` is GeneralizedComponent's pass-through (hook_in -> wrapped module -> hook_out),
    and every HookPoint that is a direct child of the wrapped module becomes an attribute of
    the component under the same name, so TL registers our HookPoints (the ones that fire inside
    the real computation) rather than bridge-made twins. ``_unfired_hooks`` names HookPoints the
    TL base class creates but that could never fire around our module: they are removed, since
    a hook that silently never runs is a trap.
    """

    _unfired_hooks: tuple[str, ...] = ()

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return GeneralizedComponent.forward(self, *args, **kwargs)

    def set_original_component(self, original_component: nn.Module) -> None:
        super().set_original_component(original_component)  # type: ignore[misc]
        for name in self._unfired_hooks:
            if name in self._modules:  # type: ignore[attr-defined]
                delattr(self, name)
                self._hook_registry.pop(name, None)  # type: ignore[attr-defined]
        for name, child in original_component.named_children():
            if isinstance(child, HookPoint):
                setattr(self, name, child)  # GeneralizedComponent registers it under `name`


def _wrapped(component: GeneralizedComponent) -> nn.Module:
    module = component.original_component
    if module is None:
        raise RuntimeError(f"bridge component {component.name} is not bound to a module yet")
    return module


class SparseEmbedBridge(_AdoptsHooks, EmbeddingBridge):
    property_aliases: dict[str, str] = {}

    @property
    def W_E(self) -> Tensor:
        return _wrapped(self).W_E


class SparsePosEmbedBridge(_AdoptsHooks, PosEmbedBridge):
    """Learned positions. Its forward takes (batch, n_pos), so only hook_out carries a tensor."""

    property_aliases: dict[str, str] = {}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return PosEmbedBridge.forward(self, *args, **kwargs)

    @property
    def W_pos(self) -> Tensor:
        return _wrapped(self).W_pos


class SparseNormBridge(_AdoptsHooks, RMSNormalizationBridge):
    """Our RMSNorm (weight ``w``); its own hook_scale / hook_normalized replace TL's copies."""

    property_aliases: dict[str, str] = {}

    @property
    def w(self) -> Tensor:
        return _wrapped(self).w


class SparseAttentionBridge(_AdoptsHooks, AttentionBridge):
    """Our attention (AbsTopK on read, q/k/v and write; optional sink) run as one module.

    hook_q/k/v/z, hook_attn_scores (pre-softmax, causal mask applied, sink excluded) and
    hook_pattern are the model's own; there are no q/k/v/o sub-projections to alias.
    """

    hook_aliases: dict[str, str] = {}
    property_aliases: dict[str, str] = {}
    supports_split_qkv_fork = False  # no pre-projection fork point in our attention
    supports_attn_result = False  # hook_result exists only if the model was built with it
    _unfired_hooks = ("hook_hidden_states", "hook_result", "hook_attn_scores", "hook_pattern")

    def __init__(self, name: str, config: Any):
        super().__init__(name, config)
        # TL's default conversion reshapes 4-d tensors it guesses are patterns; ours are already
        # in TL layout, and the conversion keeps per-tensor state, so leave tensors alone.
        self.conversion_rule = None
        self.hook_in.hook_conversion = None
        self.hook_out.hook_conversion = None

    W_Q = property(lambda self: _wrapped(self).W_Q)  # [head, d_in, d_head]
    W_K = property(lambda self: _wrapped(self).W_K)
    W_V = property(lambda self: _wrapped(self).W_V)
    W_O = property(lambda self: _wrapped(self).W_O)  # [head, d_head, d_model]
    b_Q = property(lambda self: _wrapped(self).b_Q)  # [head, d_head]
    b_K = property(lambda self: _wrapped(self).b_K)
    b_V = property(lambda self: _wrapped(self).b_V)
    b_O = property(lambda self: _wrapped(self).b_O)  # [d_model]


class SparseMLPBridge(_AdoptsHooks, MLPBridge):
    """Our MLP; hook_read / hook_pre / hook_post (the neuron nodes) are the model's own."""

    hook_aliases: dict[str, str] = {}
    property_aliases: dict[str, str] = {}

    W_in = property(lambda self: _wrapped(self).W_in)  # [d_in, d_mlp]
    W_out = property(lambda self: _wrapped(self).W_out)  # [d_mlp, d_model]
    b_in = property(lambda self: _wrapped(self).b_in)
    b_out = property(lambda self: _wrapped(self).b_out)


class SparseBlockBridge(_AdoptsHooks, BlockBridge):
    """A block; hook_resid_pre / attn_out / resid_mid / mlp_out / resid_post are the model's own
    (with residual AbsTopK or a ReLU residual they differ from TL's hook_in / ln2 input)."""

    def __init__(self, name: str, config: Any, submodules: dict[str, GeneralizedComponent]):
        super().__init__(name, config, submodules=submodules)
        self.hook_aliases = {}  # adopted instead; TL's aliases would shadow them in hook_dict

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return BlockBridge.forward(self, *args, **kwargs)


class SparseUnembedBridge(_AdoptsHooks, UnembeddingBridge):
    property_aliases: dict[str, str] = {}

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return UnembeddingBridge.forward(self, *args, **kwargs)

    @property
    def W_U(self) -> Tensor:
        return _wrapped(self).W_U  # a view of W_E.T when tied

    @property
    def b_U(self) -> Tensor:
        return _wrapped(self).b_U


class SparseBigramBridge(_AdoptsHooks, GeneralizedComponent):
    """The bigram table: hook_in sees the tokens, hook_out (= bigram.hook_logits) its logits."""


# --------------------------------------------------------------------------- adapter
class SparseLensArchitectureAdapter(ArchitectureAdapter):
    """Maps TL component paths onto SparseTransformer's own module names (they coincide)."""

    supports_compatibility_mode = False  # weight processing would densify the sparse weights
    supports_kv_cache = False  # our forward has no KV cache: generate() recomputes the prefix
    supports_batched_generation = False  # ... and takes no attention mask
    supports_hf_output_attentions = False

    def __init__(self, cfg: TransformerBridgeConfig) -> None:
        super().__init__(cfg)
        self.supports_fold_ln = False
        self.supports_center_writing_weights = False
        block_parts: dict[str, GeneralizedComponent] = {
            "ln1": SparseNormBridge("ln1", cfg),
            "attn": SparseAttentionBridge("attn", cfg),
            "ln2": SparseNormBridge("ln2", cfg),
            "mlp": SparseMLPBridge("mlp", cfg),
        }
        if cfg.positional_embedding_type == "concat":  # the position vector's own norms
            block_parts["ln_p1"] = SparseNormBridge("ln_p1", cfg)
            block_parts["ln_p2"] = SparseNormBridge("ln_p2", cfg)
        block = SparseBlockBridge("blocks", cfg, submodules=block_parts)
        mapping: dict[str, GeneralizedComponent] = {"embed": SparseEmbedBridge("embed")}
        if cfg.positional_embedding_type != "none":
            mapping["pos_embed"] = SparsePosEmbedBridge("pos_embed")
        mapping["blocks"] = block
        mapping["ln_final"] = SparseNormBridge("ln_final", cfg)
        mapping["unembed"] = SparseUnembedBridge("unembed")
        if getattr(cfg, "bigram_table", "off") != "off":
            mapping["bigram"] = SparseBigramBridge("bigram")
        self.component_mapping = mapping


def register_architecture() -> None:
    """Register our adapter with TL's factory and teach ``TransformerBridge.boot_transformers``
    sparse-lens checkpoints (both idempotent; run when this module is imported).
    build_bridge_from_module looks the architecture name up in the factory."""
    from transformer_lens.factories.architecture_adapter_factory import ArchitectureAdapterFactory

    ArchitectureAdapterFactory.register_adapter(ARCHITECTURE, SparseLensArchitectureAdapter)
    current = TransformerBridge.boot_transformers
    if not getattr(current, "boots_sparse_lens", False):
        TransformerBridge.boot_transformers = staticmethod(_boot_sparse_lens_too(current))


def sparse_lens_checkpoint(name_or_path: Any) -> Path | None:
    """The model directory if ``name_or_path`` is a sparse-lens checkpoint folder or the name
    of a shipped model (a config.json with sparse-lens fields and no HF ``model_type``)."""
    from sparse_lens.pretrained import PRETRAINED_DIR, shipped_model_names

    if not isinstance(name_or_path, (str, Path)):
        return None
    directory = Path(name_or_path)
    if not directory.is_dir() and str(name_or_path) in shipped_model_names():
        directory = PRETRAINED_DIR / str(name_or_path)
    try:
        config = json.loads((directory / "config.json").read_text())
    except (OSError, ValueError):
        return None
    ours = isinstance(config, dict) and {"afrac", "bigram_table"} <= config.keys()
    return directory if ours and "model_type" not in config else None


def _boot_sparse_lens_too(boot_transformers: Any) -> Any:
    """TL's ``boot_transformers``, which reads Hugging Face checkpoints only (their config.json
    needs a ``model_type``), extended: a sparse-lens checkpoint loads with
    ``SparseTransformer.from_pretrained`` and is bridged by :func:`to_transformer_bridge`."""

    @functools.wraps(boot_transformers)
    def boot(model_name: Any, *args: Any, **kwargs: Any) -> Any:
        directory = sparse_lens_checkpoint(model_name)
        if directory is None:
            return boot_transformers(model_name, *args, **kwargs)
        device, dtype = kwargs.pop("device", None), kwargs.pop("dtype", None)
        given = [name for name, value in kwargs.items() if value is not None] + (["positional"] if args else [])
        if given:
            raise SparseLensError(
                f"{directory} is a sparse-lens checkpoint; boot_transformers options {given} "
                "are for Hugging Face models (only device= and dtype= apply)",
                path=directory,
            )
        model = SparseTransformer.from_pretrained(directory, device=None if device is None else str(device))
        if dtype is not None:
            model = model.to(dtype)
        return to_transformer_bridge(model, copy=False)

    boot.boots_sparse_lens = True
    return boot


# --------------------------------------------------------------------------- driver
class _SparseLensDriver(TransformersDriver):
    """TL's torch driver, turning the HF keyword arguments it would pass into clear errors.

    TL drives the wrapped module like an HF model (``attention_mask``, ``inputs_embeds`` for
    ``start_at_layer``); SparseTransformer has neither. Right padding needs no mask (attention is
    causal and the real tokens come first), so such masks are dropped; anything else is refused
    with a SparseLensError instead of a TypeError from deep inside TL.
    """

    def forward(self, input_ids: Any = None, **kwargs: Any) -> Any:
        mask = kwargs.pop("attention_mask", None)
        if mask is not None and bool((mask[:, 1:] > mask[:, :-1]).any()):
            raise SparseLensError(
                "SparseTransformer has no attention mask, so only right-padded batches work "
                "through the bridge; pass padding_side='right'",
                field="attention_mask",
            )
        if not kwargs.get("use_cache", True):
            kwargs.pop("use_cache")
        if "inputs_embeds" in kwargs:
            raise SparseLensError(
                "the bridge cannot start mid-model (start_at_layer / inputs_embeds); call "
                "SparseTransformer(resid, start_at_layer=..., tokens=...) directly",
                field="start_at_layer",
            )
        model_kwargs = {k: v for k, v in kwargs.items() if k not in _DRIVER_KWARGS}
        if model_kwargs:
            raise SparseLensError(
                f"SparseTransformer's forward takes no {sorted(model_kwargs)} (HF-only options)"
            )
        return super().forward(input_ids, **kwargs)


_DRIVER_KWARGS = ("capture", "intervene", "max_new_tokens", "return_logits")


# --------------------------------------------------------------------------- bridge
class SparseLensBridge(TransformerBridge):
    """The TransformerBridge returned by :func:`to_transformer_bridge`.

    Two differences from TL's: ``state_dict`` keeps TL's leaves named ``weight`` / ``bias`` (HF
    modules) and so would return nothing for our TL-named tensors; ours returns the wrapped
    model's state dict under the model's own keys (``blocks.0.attn.W_Q``), which are also TL's
    names (``load_state_dict`` already accepts them). And ``process_weights`` refuses plainly
    instead of failing half-way on HF key names.
    """

    def process_weights(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError(
            "sparse-lens bridges do not process weights: centering densifies sparse matrices "
            "(fold_ln would keep zeros, but TL expects HF weight names here); the weights are "
            "already in TL layout, fold norms yourself if an analysis needs it"
        )

    def state_dict(self, destination: Any = None, prefix: str = "", keep_vars: bool = False) -> Any:
        if destination is not None or prefix:  # nested in a parent module: plain nn.Module keys
            return super().state_dict(destination=destination, prefix=prefix, keep_vars=keep_vars)
        raw = self.original_model.state_dict(keep_vars=keep_vars)
        return {key.replace("._original_component", ""): value for key, value in raw.items()}


# --------------------------------------------------------------------------- entry points
def bridge_config(model: SparseTransformer) -> TransformerBridgeConfig:
    """The TransformerBridgeConfig describing ``model`` (TL names; sparse switches attached)."""
    cfg = model.cfg
    tl_cfg = TransformerBridgeConfig(
        d_model=cfg.d_model,
        d_head=cfg.d_head,
        n_layers=cfg.n_layers,
        n_ctx=cfg.n_ctx,
        n_heads=cfg.n_heads,
        d_vocab=cfg.d_vocab,
        d_vocab_out=cfg.d_vocab,
        d_mlp=cfg.d_mlp,
        act_fn=cfg.act_fn,
        eps=cfg.eps,
        normalization_type="RMS",
        uses_rms_norm=True,
        final_rms=True,
        positional_embedding_type=cfg.positional_embedding_type,
        default_prepend_bos=cfg.default_prepend_bos,
        tie_word_embeddings=cfg.tied_unembed,
        use_attn_result=cfg.use_attn_result,
        architecture=ARCHITECTURE,
        original_architecture="SparseTransformer",
        model_name=cfg.model_name,
        device=cfg.device,
    )
    # Sparse-specific switches ride along as plain attributes (TL's dataclass has no fields for
    # them); the adapter reads bigram_table, analyses can read the rest.
    for name in ("bigram_table", "afrac", "afrac_locations", "attn_sink", "d_pos_emb"):
        setattr(tl_cfg, name, getattr(cfg, name))
    return tl_cfg


def hf_tokenizer(model: SparseTransformer) -> PreTrainedTokenizerFast:
    """Our ``tokenizers.Tokenizer`` as the HF ``PreTrainedTokenizerFast`` the bridge expects.

    BOS, EOS and padding are all ``<|endoftext|>``, and BOS is prepended by the tokenizer
    itself: the document separator the model saw before every training file, exactly as
    ``SparseTransformer.to_tokens`` does.
    """
    if model.tokenizer is None:
        raise SparseLensError("this model has no tokenizer to convert", field="tokenizer")
    return PreTrainedTokenizerFast(
        tokenizer_object=copy_module.deepcopy(model.tokenizer),  # HF edits its post-processor
        bos_token=EOT,
        eos_token=EOT,
        pad_token=EOT,
        padding_side="right",
        model_max_length=model.cfg.n_ctx,
        # With add_bos_token the tokenizer prepends <|endoftext|> itself, and TL keeps it as is;
        # without it TL re-downloads the tokenizer by name to get one that does (a network call).
        add_bos_token=True,
        name_or_path=model.cfg.model_name,
    )


def to_transformer_bridge(model: SparseTransformer, *, copy: bool = True) -> SparseLensBridge:
    """Wrap ``model`` in a TransformerLens 4 ``TransformerBridge`` whose forward is ours.

    ``copy=True`` (default) bridges a deep copy, because bridging replaces submodules of the
    wrapped model in place (``model.blocks`` becomes a list of bridge blocks, state-dict keys
    gain ``_original_component``); with ``copy=False`` the model is wrapped as is (no extra
    memory) and should afterwards be used only through the bridge.
    """
    from transformer_lens.model_bridge.sources import build_bridge_from_module

    if not isinstance(model, SparseTransformer):
        raise TypeError(f"expected a SparseTransformer, got {type(model).__name__}")
    register_architecture()
    target = copy_module.deepcopy(model) if copy else model
    bridge = build_bridge_from_module(
        target,
        ARCHITECTURE,
        tl_config=bridge_config(target),
        tokenizer=None if target.tokenizer is None else hf_tokenizer(target),
        device=next(target.parameters()).device,
        model_name=target.cfg.model_name,
    )
    # build_bridge_from_module always builds a plain TransformerBridge and TransformersDriver.
    # Our subclasses add methods but no state, so retyping the instances is the least intrusive
    # way to install them (the alternative is re-implementing that function's private steps).
    if type(bridge) is not TransformerBridge or type(bridge._driver) is not TransformersDriver:
        raise RuntimeError("unexpected TransformerLens bridge types; sparse-lens needs updating")
    bridge.__class__ = SparseLensBridge
    bridge._driver.__class__ = _SparseLensDriver
    return bridge



def _invoke_tokens(model: SparseTransformer, inputs: tuple) -> Tensor:
    """One invoke's input as [batch, pos] token ids (strings are tokenized as the model does)."""
    if not inputs:
        raise SparseLensError("every tracer.invoke(...) needs the model input", field="input")
    data = inputs[0]
    if isinstance(data, Tensor):
        return model.to_tokens(data, move_to_device=False)
    if isinstance(data, (str, list)):
        return model.to_tokens(data, move_to_device=False)
    raise SparseLensError(
        f"an invoke's input must be a string, a list of strings or token ids, got {type(data).__name__}",
        field="input",
    )


def _batch_invokes(model: SparseTransformer, invokes: list[tuple]) -> tuple:
    """nnsight's ``_batch``: several invokes' inputs as one [batch, pos] forward input.

    Rows keep their invoke's order; shorter inputs are right-padded with end-of-text, which a
    causal model never lets reach the real positions (so read and edit positions counted from
    the start, or give every invoke the same length)."""
    rows = [_invoke_tokens(model, inputs) for inputs, _ in invokes]
    merged: dict[str, Any] = {}
    for _, kwargs in invokes:
        for key, value in kwargs.items():
            if key in merged and merged[key] is not value and merged[key] != value:
                raise SparseLensError(
                    f"invokes pass different {key}= values; one forward runs them all, so pass "
                    "it once to trace(...)",
                    field=key,
                )
            merged[key] = value
    width = max(row.shape[1] for row in rows)
    pad = model.cfg.d_vocab - 1  # end-of-text is the last id (data.tokenizer's contract)
    padded = [torch.nn.functional.pad(row, (0, width - row.shape[1]), value=pad) for row in rows]
    return (torch.cat(padded),), merged


@functools.cache
def _nnsight_class() -> type:
    from nnsight import NNsight

    class SparseNNsight(NNsight):
        """NNsight for a SparseTransformer: several ``tracer.invoke`` calls batch into one
        forward (:func:`_batch_invokes`)."""

        def _batch_size(self, *inputs: Any, **kwargs: Any) -> int:
            if not inputs:
                return 0
            return _invoke_tokens(self._module, inputs).shape[0]

        def _batch(self, invokes: list[tuple], fn: Any) -> tuple:
            if len(invokes) <= 1:
                return super()._batch(invokes, fn)
            return _batch_invokes(self._module, invokes)

    return SparseNNsight


def _watch_patterns(nn_model: Any, model: SparseTransformer) -> None:
    """Tell each attention when an nnsight trace waits on its scores or pattern, so it computes
    them then (and only then: otherwise the fused kernel runs, as without nnsight).

    nnsight reaches modules in execution order, so when attention decides, any worker that will
    read ``hook_pattern`` of this layer is parked on it (everything before it has run)."""
    interleaver = nn_model.interleaver
    for layer, block in enumerate(model.blocks):
        path = nn_model.blocks[layer].attn.path
        prefixes = (f"{path}.hook_pattern.", f"{path}.hook_attn_scores.")

        def wanted(prefixes: tuple[str, str] = prefixes) -> bool:
            return interleaver.interleaving and any(p.startswith(prefixes) for p in interleaver.parked)

        block.attn.patterns_wanted = wanted


def to_nnsight(model: SparseTransformer, *, attention_patterns: bool = False) -> Any:
    """``nnsight.NNsight(model)``, able to batch invokes: trace, read and edit any HookPoint.

    Inside ``with nn_model.trace(tokens):`` read ``nn_model.blocks[0].mlp.hook_post.output``
    (``.save()`` keeps it past the block) or assign to it (``...output[:, :, 3] = 0`` edits in
    place; ``...output = f(...)`` replaces it). Access modules in the order they run, or nnsight
    raises OutOfOrderError. Results equal ``run_with_hooks`` with the same edit.

    Several ``with tracer.invoke(input):`` blocks in one ``nn_model.trace()`` run as one batch
    (the usual way to patch a clean activation into a corrupted run); each invoke sees its own
    rows. Inputs of different lengths are right-padded with end-of-text.

    ``hook_attn_scores`` / ``hook_pattern`` fire whenever a trace reads or edits them: the
    attention computes them explicitly for that run only (otherwise it uses the fused kernel,
    which never forms them). NNsight changes the wrapped model in place (an inert forward
    wrapper per module, and here an inert check on each attention). Importing nnsight takes a
    few seconds, hence the lazy import. ``attention_patterns=True`` (no longer needed, kept for
    older code) switches the model to explicit attention for good
    (``model.set_explicit_attention(True)``).
    """
    if attention_patterns:
        model.set_explicit_attention(True)
    nn_model = _nnsight_class()(model)
    _watch_patterns(nn_model, model)
    return nn_model


register_architecture()

__all__ = [
    "ARCHITECTURE",
    "SparseLensBridge",
    "SparseLensArchitectureAdapter",
    "bridge_config",
    "hf_tokenizer",
    "register_architecture",
    "sparse_lens_checkpoint",
    "to_nnsight",
    "to_transformer_bridge",
]
