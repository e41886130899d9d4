"""SparseTransformer: a weight-sparse GPT as a TransformerLens HookedRootModule.

TransformerLens 4 removed HookedTransformer; what remains is HookedRootModule + HookPoint, and
TL's utilities (patching, head_detector, ActivationCache) accept any model with the surface in
``transformer_lens.model_protocol``. This class provides that surface: canonical hook names and
shapes, TL weight names and layouts, run_with_cache returning an ActivationCache, tokenisation
helpers, accumulated_bias and tokens_to_residual_directions.

Sparsity lives in the stored weights: zeros are in the tensors, never in a forward-time mask, so
every accessor, edge count and saved file sees the real model. Saving, loading, tokenising and
analysis helpers live in their own modules; this class stays a model.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from tokenizers import Tokenizer
from torch import Tensor, nn
from torch.nn.modules import module as _module_hooks
from transformer_lens import HookedRootModule
from transformer_lens.FactoredMatrix import FactoredMatrix
from transformer_lens.hook_points import HookPoint

from sparse_lens.config import SparseConfig
from sparse_lens.errors import SparseLensError
from sparse_lens.model.block import TransformerBlock
from sparse_lens.model.cache import SparseActivationCache
from sparse_lens.model.components import BigramTable, Embed, PosEmbed, RMSNorm, Unembed
from sparse_lens.model.fused_loss import fused_next_token_loss
from sparse_lens.model.graph import logits_from_resid
from sparse_lens.model.typecheck import shape_checked

ReturnType = Literal["logits", "loss", "both"] | None
ModelInput = str | list[str] | Int[Tensor, "batch pos"]
EOT = "<|endoftext|>"


def _has_module_hooks(module: nn.Module) -> bool:
    """Any forward / backward hook on ``module``, its submodules (HookPoints) or globally."""
    if _module_hooks._global_forward_hooks or _module_hooks._global_forward_pre_hooks:
        return True
    return any(
        m._forward_hooks or m._forward_pre_hooks or m._backward_hooks or m._backward_pre_hooks
        for m in module.modules()
    )


class SparseTransformer(HookedRootModule):
    """A (weight-)sparse decoder-only transformer with TransformerLens hooks and weight names.

    Hook table (shapes without the batch dim drop ``batch``). Which hooks are the paper's node
    sites, their node types and widths, the weights joining them and their OpenAI names are the
    graph table's: :mod:`sparse_lens.model.graph`.

    ==========================================  ==================================
    hook name                                   shape
    ==========================================  ==================================
    hook_embed                                  [batch, pos, d_model]
    hook_pos_embed                              [batch, pos, d_pos]
    blocks.{l}.hook_resid_pre                   [batch, pos, d_model]
    blocks.{l}.ln1.hook_scale / hook_normalized [batch, pos, 1] / [.., d_model]
    blocks.{l}.attn.hook_read                   [batch, pos, d_in]
    blocks.{l}.attn.hook_q / hook_k / hook_v    [batch, pos, head, d_head]
    blocks.{l}.attn.hook_attn_scores / pattern  [batch, head, q, k]
    blocks.{l}.attn.hook_z                      [batch, pos, head, d_head]
    blocks.{l}.hook_attn_out                    [batch, pos, d_model]
    blocks.{l}.hook_resid_mid                   [batch, pos, d_model]
    blocks.{l}.ln2.hook_scale / hook_normalized [batch, pos, 1] / [.., d_model]
    blocks.{l}.mlp.hook_read                    [batch, pos, d_in]
    blocks.{l}.mlp.hook_pre                     [batch, pos, d_mlp]
    blocks.{l}.mlp.hook_post                    [batch, pos, d_mlp]
    blocks.{l}.hook_mlp_out                     [batch, pos, d_model]
    blocks.{l}.hook_resid_post                  [batch, pos, d_model]
    ln_final.hook_scale / hook_normalized       [batch, pos, 1] / [.., d_model]
    bigram.hook_logits                          [batch, pos, d_vocab]
    ==========================================  ==================================

    d_in = d_model (+ d_pos_emb with concatenated positions).
    """

    def __init__(self, cfg: SparseConfig, tokenizer: Tokenizer | None = None, seed: int | None = None):
        super().__init__()
        if not isinstance(cfg, SparseConfig):
            raise TypeError(f"cfg must be a SparseConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.tokenizer = None
        if tokenizer is not None:
            self.set_tokenizer(tokenizer)

        self.embed = Embed(cfg)
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        if cfg.positional_embedding_type != "none":
            self.pos_embed = PosEmbed(cfg)
            self.hook_pos_embed = HookPoint()  # [batch, pos, d_pos]
        self.blocks = nn.ModuleList(TransformerBlock(cfg, layer) for layer in range(cfg.n_layers))
        self.ln_final = RMSNorm(cfg.d_model, cfg.eps)
        self.unembed = Unembed(cfg, self.embed)
        if cfg.bigram_table != "off":
            self.bigram = BigramTable(cfg)
        self.init_weights(seed)
        self.setup()

    # ------------------------------------------------------------------ construction
    @torch.no_grad()
    def init_weights(self, seed: int | None = None) -> None:
        """N(0, init_range) everywhere; W_O and W_out scaled by 1/sqrt(2 n_layers) (GPT-2)."""
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        std = self.cfg.init_range
        for name, param in self.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf.startswith("b_") or leaf in ("sink_logit", "W_bigram"):
                param.zero_()
            elif leaf == "w":
                param.fill_(1.0)
            else:
                scale = std / math.sqrt(2 * self.cfg.n_layers) if leaf in ("W_O", "W_out") else std
                param.copy_(torch.randn(param.shape, generator=generator) * scale)

    def set_explicit_attention(self, explicit: bool = True) -> None:
        """Always materialise attention scores and patterns (instead of only when a
        TransformerLens hook is attached), e.g. for nnsight, which cannot be seen by the check."""
        for block in self.blocks:
            block.attn.always_explicit = explicit

    def set_use_attn_result(self, use_attn_result: bool) -> None:
        """Add (or remove) ``blocks.{l}.attn.hook_result`` [batch, pos, head, d_model], each
        head's output before the write's AbsTopK, as TransformerLens' switch of the same name."""
        self.cfg.use_attn_result = bool(use_attn_result)
        for block in self.blocks:
            block.attn.set_use_attn_result(self.cfg.use_attn_result)
        self.setup()  # refresh the hook registry

    def set_sparse_execution(self, enabled: bool = True) -> None:
        """Let sparse weights run as CSR matmuls where measured faster, in forwards that do not
        train them (on by default; :mod:`sparse_lens.model.sparse_exec`)."""
        self.cfg.sparse_exec = bool(enabled)

    def set_tokenizer(self, tokenizer: Tokenizer) -> None:
        size = tokenizer.get_vocab_size()
        if size != self.cfg.d_vocab:
            raise SparseLensError(
                f"tokenizer has {size} tokens but the model's d_vocab is {self.cfg.d_vocab}; "
                "use the tokenizer the model was trained with",
                field="d_vocab",
            )
        self.tokenizer = tokenizer

    # ------------------------------------------------------------------ forward
    @shape_checked
    def forward(
        self,
        input: ModelInput | Float[Tensor, "batch pos d_model"],
        return_type: ReturnType = "logits",
        loss_per_token: bool = False,
        start_at_layer: int | None = None,
        stop_at_layer: int | None = None,
        tokens: Int[Tensor, "batch pos"] | None = None,
    ):
        """Run the model.

        ``input`` is a string, a list of strings (right-padded with end-of-text; padding is left
        out of the loss) or a [batch, pos] token tensor; with ``start_at_layer`` it is instead the
        residual stream entering that block ([batch, pos, d_model]) and ``tokens`` must be given
        if the model has a bigram table or a loss is asked for. With ``stop_at_layer`` the
        residual stream entering that block is returned (TransformerLens semantics).
        """
        loss_mask = None
        embedded_here = start_at_layer is None
        if start_at_layer is None:
            if isinstance(input, (str, list)):
                tokens, loss_mask = self._tokenize_batch(input)
            else:
                tokens = input
            self.check_tokens(tokens)
            resid = self.hook_embed(self.embed(tokens))
            start_at_layer = 0
        else:
            resid = input
            if tokens is not None:
                self.check_tokens(tokens)
        batch, n_pos = resid.shape[:2]
        if n_pos > self.cfg.n_ctx:
            raise SparseLensError(
                f"sequence of {n_pos} tokens is longer than the model's n_ctx = {self.cfg.n_ctx}; "
                "truncate the input",
                field="n_ctx",
            )

        pos = None
        if self.cfg.positional_embedding_type != "none":
            pos = self.hook_pos_embed(self.pos_embed(batch, n_pos))
            if self.cfg.positional_embedding_type == "standard":
                if embedded_here:
                    resid = resid + pos
                pos = None

        for block in self.blocks[start_at_layer:stop_at_layer]:
            resid = block(resid, pos)
        if stop_at_layer is not None:
            return resid

        if self.cfg.bigram_table != "off" and tokens is None:
            raise SparseLensError(
                "this model has a bigram table, so it needs `tokens=` when starting mid-model",
                field="tokens",
            )
        if self._fused_loss_applies(return_type, loss_per_token, loss_mask, tokens):
            bigram = self.bigram.W_bigram if self.cfg.bigram_table != "off" else None
            return fused_next_token_loss(self.ln_final(resid), self.W_U, self.b_U, bigram, tokens)
        logits = logits_from_resid(self, resid, tokens)
        if return_type == "logits":
            return logits
        if return_type is None:
            return None
        if tokens is None:
            raise SparseLensError("a loss needs the input tokens: pass `tokens=`", field="tokens")
        loss = self.loss_fn(logits, tokens, loss_mask, per_token=loss_per_token)
        return loss if return_type == "loss" else (logits, loss)

    def block_positions(self, batch: int, n_pos: int) -> Float[Tensor, "batch pos d_pos"] | None:
        """What every block reads beside the residual stream: the position embeddings when they
        are concatenated to each read, else None (standard positions are in the stream)."""
        if self.cfg.positional_embedding_type != "concat":
            return None
        return self.hook_pos_embed(self.pos_embed(batch, n_pos))

    def _fused_loss_applies(self, return_type, per_token, mask, tokens) -> bool:
        """Whether the fused loss (:mod:`sparse_lens.model.fused_loss`) may replace unembed +
        ``loss_fn``: a mean loss without a padding mask, with gradients on, and nothing that
        could observe the logits (no hook on the unembedding or the bigram table). Under
        no_grad the plain path runs, so evaluation and analysis get the loss of the
        materialised logits bit for bit."""
        if return_type != "loss" or per_token or mask is not None or tokens is None:
            return False
        if not torch.is_grad_enabled():
            return False
        watched = [self.unembed] + ([self.bigram] if self.cfg.bigram_table != "off" else [])
        return not any(_has_module_hooks(module) for module in watched)

    @staticmethod
    @shape_checked
    def loss_fn(
        logits: Float[Tensor, "batch pos d_vocab"],
        tokens: Int[Tensor, "batch pos"],
        mask: Tensor | None = None,
        per_token: bool = False,
    ) -> Tensor:
        """Next-token cross-entropy; per token [batch, pos - 1] or the mean over kept tokens."""
        log_probs = F.log_softmax(logits[:, :-1].float(), dim=-1)
        nll = -log_probs.gather(-1, tokens[:, 1:, None]).squeeze(-1)
        if per_token:
            return nll
        if mask is None:
            return nll.mean()
        keep = mask[:, 1:].to(nll.dtype)
        return (nll * keep).sum() / keep.sum()

    def check_tokens(self, tokens: Tensor) -> None:
        if tokens.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise SparseLensError(f"token ids must be integers, got {tokens.dtype}", field="tokens")
        if tokens.ndim != 2:
            raise SparseLensError(f"tokens must be [batch, pos], got shape {tuple(tokens.shape)}", field="tokens")
        if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= self.cfg.d_vocab):
            bad = int(tokens.max()) if int(tokens.max()) >= self.cfg.d_vocab else int(tokens.min())
            raise SparseLensError(
                f"token id {bad} is out of range for d_vocab = {self.cfg.d_vocab}; "
                "was the input tokenized with this model's tokenizer?",
                field="tokens",
            )

    def run_with_cache(
        self,
        *model_args,
        return_cache_object: bool = True,
        remove_batch_dim: bool = False,
        write_mask: bool | None = None,
        **kwargs,
    ):
        """As HookedRootModule.run_with_cache, but the cache is a TL ``ActivationCache``: a
        :class:`~sparse_lens.model.cache.SparseActivationCache`, whose ``write_mask`` makes
        per-head / per-neuron results exact under AbsTopK on the writes (see there)."""
        out, cache_dict = super().run_with_cache(*model_args, remove_batch_dim=remove_batch_dim, **kwargs)
        if not return_cache_object:
            return out, cache_dict
        cache = SparseActivationCache(
            cache_dict, self, has_batch_dim=not remove_batch_dim, write_mask=write_mask
        )
        return out, cache

    # ------------------------------------------------------------------ tokenisation
    def _require_tokenizer(self) -> Tokenizer:
        if self.tokenizer is None:
            raise SparseLensError(
                "this model has no tokenizer (e.g. an OpenAI import without tokenizer files); "
                "pass token ids as a [batch, pos] tensor",
                field="tokenizer",
            )
        return self.tokenizer

    @property
    def eot_token_id(self) -> int:
        tokenizer = self._require_tokenizer()
        token_id = tokenizer.token_to_id(EOT)
        return self.cfg.d_vocab - 1 if token_id is None else token_id

    def to_tokens(
        self,
        input: str | list[str] | Int[Tensor, "batch pos"] | Int[Tensor, " pos"],
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] = "right",
        move_to_device: bool = True,
        truncate: bool = True,
    ) -> Int[Tensor, "batch pos"]:
        """Tokenize to [batch, pos]. BOS is the end-of-text token (a document boundary, which is
        what the model saw before every training file); padding is end-of-text too.

        Token ids pass through ([pos] gains a batch dim), so TL tools that call ``to_tokens`` on
        their input (``head_detector.detect_head``) work on models without a tokenizer."""
        if isinstance(input, Tensor):
            tokens = input.unsqueeze(0) if input.ndim == 1 else input
            self.check_tokens(tokens)
        else:
            tokens, _ = self._tokenize_batch(input, prepend_bos, padding_side, truncate)
        return tokens.to(self.cfg.device) if move_to_device else tokens

    def _tokenize_batch(self, input, prepend_bos=None, padding_side="right", truncate=True):
        tokenizer = self._require_tokenizer()
        texts = [input] if isinstance(input, str) else list(input)
        if prepend_bos is None:
            prepend_bos = self.cfg.default_prepend_bos
        bos = [self.eot_token_id] if prepend_bos else []
        rows = [bos + enc.ids for enc in tokenizer.encode_batch(texts)]
        if truncate:
            rows = [row[-self.cfg.n_ctx :] for row in rows]
        width = max(len(row) for row in rows)
        tokens = torch.full((len(rows), width), self.eot_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.bool)
        for i, row in enumerate(rows):
            span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
            tokens[i, span] = torch.tensor(row, dtype=torch.long)
            mask[i, span] = True
        return tokens.to(self.W_E.device), mask.to(self.W_E.device)

    def to_string(self, tokens: int | Int[Tensor, "..."] | list[int]) -> str | list[str]:
        """Decode token ids: one id or a [pos] tensor / list to a string, [batch, pos] to a list."""
        tokenizer = self._require_tokenizer()
        if isinstance(tokens, Tensor):
            if tokens.ndim > 1:
                return [self.to_string(row) for row in tokens]
            tokens = tokens.reshape(-1).tolist()
        elif isinstance(tokens, int):
            tokens = [tokens]
        return tokenizer.decode(tokens, skip_special_tokens=False)

    def to_str_tokens(
        self, input: str | list[str] | Int[Tensor, "..."] | list[int], prepend_bos: bool | None = None
    ) -> list[str] | list[list[str]]:
        """One string per token. A list of strings or a [batch, pos] tensor with batch > 1
        gives one list per row (TransformerLens semantics)."""
        tokenizer = self._require_tokenizer()
        if isinstance(input, list) and input and isinstance(input[0], str):
            return [self.to_str_tokens(text, prepend_bos=prepend_bos) for text in input]
        if isinstance(input, str):
            ids = self.to_tokens(input, prepend_bos=prepend_bos)[0].tolist()
        elif isinstance(input, Tensor):
            if input.ndim > 1 and input.shape[0] > 1:
                return [self.to_str_tokens(row) for row in input]
            ids = input.reshape(-1).tolist()
        else:
            ids = list(input)
        return [tokenizer.decode([i], skip_special_tokens=False) for i in ids]

    def to_single_token(self, string: str) -> int:
        ids = self._require_tokenizer().encode(string).ids
        if len(ids) != 1:
            raise SparseLensError(f"{string!r} is {len(ids)} tokens, not one", field="string")
        return ids[0]

    @torch.no_grad()
    def generate(
        self,
        input: str | Int[Tensor, "batch pos"],
        max_new_tokens: int = 20,
        stop_at_eos: bool = True,
        eos_token_id: int | None = None,
        do_sample: bool = True,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float = 1.0,
        freq_penalty: float = 0.0,
        use_past_kv_cache: bool = True,
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] | None = None,
        return_type: Literal["input", "str", "tokens"] = "input",
        verbose: bool = False,
        seed: int | None = None,
    ) -> str | list[str] | Int[Tensor, "batch new_pos"]:
        """Sample a continuation (greedy with ``do_sample=False``), with TransformerLens'
        arguments. ``return_type="input"`` gives a string for a string and tokens for tokens.

        There is no KV cache (each step recomputes the prefix), so ``use_past_kv_cache`` only
        changes speed in TL and is accepted and ignored here; ``padding_side`` is accepted for
        the same reason (one prompt, nothing to pad). ``verbose`` shows a tqdm progress bar.
        ``seed`` makes sampling reproducible. Stops when every row has produced the
        end-of-text token (``eos_token_id``, default the tokenizer's) with ``stop_at_eos``.
        """
        from tqdm.auto import tqdm

        if return_type not in ("input", "str", "tokens"):
            raise SparseLensError(f"return_type must be input, str or tokens, got {return_type!r}", field="return_type")
        tokens = self.to_tokens(input, prepend_bos=prepend_bos) if isinstance(input, str) else input
        self.check_tokens(tokens)
        if eos_token_id is None and stop_at_eos and self.tokenizer is not None:
            eos_token_id = self.eot_token_id
        generator = None if seed is None else torch.Generator(device=tokens.device).manual_seed(seed)
        counts = torch.zeros(tokens.shape[0], self.cfg.d_vocab, device=tokens.device)
        if freq_penalty:
            counts.scatter_add_(1, tokens, torch.ones_like(tokens, dtype=counts.dtype))
        finished = torch.zeros(tokens.shape[0], dtype=torch.bool, device=tokens.device)
        for _ in tqdm(range(max_new_tokens), disable=not verbose):
            logits = self(tokens[:, -self.cfg.n_ctx :])[:, -1].float()
            if do_sample:
                next_token = self._sample(logits - freq_penalty * counts, temperature, top_k, top_p, generator)
            else:
                next_token = logits.argmax(-1, keepdim=True)
            if stop_at_eos and eos_token_id is not None:  # finished rows keep emitting EOS
                next_token = next_token.masked_fill(finished[:, None], eos_token_id)
                finished |= next_token[:, 0] == eos_token_id
            counts.scatter_add_(1, next_token, torch.ones_like(next_token, dtype=counts.dtype))
            tokens = torch.cat([tokens, next_token], dim=1)
            if bool(finished.all()):
                break
        if return_type == "str" or (return_type == "input" and isinstance(input, str)):
            text = self.to_string(tokens)
            return text[0] if isinstance(input, str) else text
        return tokens

    @staticmethod
    def _sample(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None, generator) -> Tensor:
        logits = logits / max(temperature, 1e-8)
        if top_k is not None:
            cutoff = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
            logits = logits.masked_fill(logits < cutoff, float("-inf"))
        if top_p is not None:
            # keep the most likely tokens whose cumulative probability first reaches top_p
            sorted_logits, order = logits.sort(-1, descending=True)
            cumulative = F.softmax(sorted_logits, -1).cumsum(-1)
            drop_sorted = cumulative - F.softmax(sorted_logits, -1) >= top_p
            logits = logits.masked_fill(drop_sorted.scatter(-1, order, drop_sorted), float("-inf"))
        return torch.multinomial(F.softmax(logits, -1), 1, generator=generator)

    # ------------------------------------------------------------------ TL analysis surface
    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> Float[Tensor, " d_model"]:
        """Sum of the attention and MLP output biases written before ``layer`` (TL semantics)."""
        total = torch.zeros(self.cfg.d_model, device=self.W_E.device)
        for i in range(layer):
            total = total + self.blocks[i].attn.b_O
            if include_mlp_biases:
                total = total + self.blocks[i].mlp.b_out
        if mlp_input:
            if layer >= self.cfg.n_layers:
                raise ValueError("mlp_input needs layer < n_layers")
            total = total + self.blocks[layer].attn.b_O
        return total

    @shape_checked
    def tokens_to_residual_directions(
        self, tokens: str | int | Int[Tensor, "..."]
    ) -> Float[Tensor, "... d_model"]:
        """The residual direction that reads each token's logit: its unembedding column with
        the final norm's weight folded in, ``ln_final.w * W_U[:, token]``.

        This is what TransformerLens returns after ``fold_ln`` (which scales W_U's rows by the
        norm weight, keeping its zeros) and what its analyses assume: DLA
        (``cache.logit_attrs``, ``tools.analysis.direct_logit_attribution``) dots these with
        residual parts divided by the cached ``ln_final.hook_scale``, and ``ln_final``'s
        ``hook_normalized`` (before the weight) dotted with them is the logit minus ``b_U`` and
        the bigram table. ``W_U`` itself stays the stored, unfolded matrix.
        """
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        if isinstance(tokens, int):
            return self.ln_final.w * self.W_U[:, tokens]
        return (self.ln_final.w[:, None] * self.W_U[:, tokens.reshape(-1)]).T.reshape(*tokens.shape, -1)

    # ------------------------------------------------------------------ TL weight accessors
    def _stack(self, sub: str, name: str) -> Tensor:
        return torch.stack([getattr(getattr(block, sub), name) for block in self.blocks])

    W_E = property(lambda self: self.embed.W_E)
    W_U = property(lambda self: self.unembed.W_U)
    b_U = property(lambda self: self.unembed.b_U)
    W_pos = property(lambda self: self.pos_embed.W_pos)
    W_Q = property(lambda self: self._stack("attn", "W_Q"))  # [n_layers, head, d_in, d_head]
    W_K = property(lambda self: self._stack("attn", "W_K"))
    W_V = property(lambda self: self._stack("attn", "W_V"))
    W_O = property(lambda self: self._stack("attn", "W_O"))  # [n_layers, head, d_head, d_model]
    b_Q = property(lambda self: self._stack("attn", "b_Q"))
    b_K = property(lambda self: self._stack("attn", "b_K"))
    b_V = property(lambda self: self._stack("attn", "b_V"))
    b_O = property(lambda self: self._stack("attn", "b_O"))
    W_in = property(lambda self: self._stack("mlp", "W_in"))  # [n_layers, d_in, d_mlp]
    W_out = property(lambda self: self._stack("mlp", "W_out"))  # [n_layers, d_mlp, d_model]
    b_in = property(lambda self: self._stack("mlp", "b_in"))
    b_out = property(lambda self: self._stack("mlp", "b_out"))

    @property
    def QK(self) -> FactoredMatrix:
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-2, -1))

    @property
    def OV(self) -> FactoredMatrix:
        return FactoredMatrix(self.W_V, self.W_O)

    # ------------------------------------------------------------------ persistence
    def save_pretrained(
        self, directory: str | Path, storage_dtypes: dict[str, torch.dtype] | None = None
    ) -> Path:
        """Write config.json, model.safetensors (sparse tensors as indices + values) and
        tokenizer.json into ``directory``, atomically (see :mod:`sparse_lens.io.checkpoint`).
        ``storage_dtypes`` stores the named tensors narrower (e.g. ``{"bigram.W_bigram":
        torch.float16}``); loading casts them back."""
        from sparse_lens.io.checkpoint import save_pretrained

        return save_pretrained(self, directory, storage_dtypes)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | None = None) -> SparseTransformer:
        """Load a saved model directory, or a model shipped with sparse-lens by name."""
        from sparse_lens.io.checkpoint import load_pretrained

        return load_pretrained(name_or_path, device=device)
