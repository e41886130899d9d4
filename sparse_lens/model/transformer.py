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
from transformer_lens import ActivationCache, HookedRootModule
from transformer_lens.FactoredMatrix import FactoredMatrix
from transformer_lens.hook_points import HookPoint

from sparse_lens.config import SparseConfig
from sparse_lens.errors import SparseLensError
from sparse_lens.model.block import TransformerBlock
from sparse_lens.model.components import BigramTable, Embed, PosEmbed, RMSNorm, Unembed
from sparse_lens.model.fused_loss import fused_next_token_loss
from sparse_lens.model.graph import logits_from_resid

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

    def run_with_cache(self, *model_args, return_cache_object: bool = True, remove_batch_dim: bool = False, **kwargs):
        """As HookedRootModule.run_with_cache, but the cache is a TL ``ActivationCache``."""
        out, cache_dict = super().run_with_cache(*model_args, remove_batch_dim=remove_batch_dim, **kwargs)
        if not return_cache_object:
            return out, cache_dict
        return out, ActivationCache(cache_dict, self, has_batch_dim=not remove_batch_dim)

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
        input: str | list[str],
        prepend_bos: bool | None = None,
        padding_side: Literal["left", "right"] = "right",
        move_to_device: bool = True,
        truncate: bool = True,
    ) -> Int[Tensor, "batch pos"]:
        """Tokenize to [batch, pos]. BOS is the end-of-text token (a document boundary, which is
        what the model saw before every training file); padding is end-of-text too."""
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

    def to_string(self, tokens: Int[Tensor, "... pos"] | list[int]) -> str | list[str]:
        tokenizer = self._require_tokenizer()
        if isinstance(tokens, Tensor):
            if tokens.ndim > 1:
                return [self.to_string(row) for row in tokens]
            tokens = tokens.tolist()
        return tokenizer.decode(tokens, skip_special_tokens=False)

    def to_str_tokens(self, input: str | Tensor | list[int], prepend_bos: bool | None = None) -> list[str]:
        tokenizer = self._require_tokenizer()
        if isinstance(input, str):
            ids = self.to_tokens(input, prepend_bos=prepend_bos)[0].tolist()
        elif isinstance(input, Tensor):
            ids = input.squeeze(0).tolist() if input.ndim > 1 else input.tolist()
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
        temperature: float = 1.0,
        top_k: int | None = None,
        do_sample: bool = True,
        stop_at_eos: bool = True,
        seed: int | None = None,
    ) -> str | Int[Tensor, "batch new_pos"]:
        """Sample a continuation (greedy with do_sample=False). Strings in, string out."""
        tokens = self.to_tokens(input) if isinstance(input, str) else input
        generator = None if seed is None else torch.Generator(device=tokens.device).manual_seed(seed)
        for _ in range(max_new_tokens):
            logits = self(tokens[:, -self.cfg.n_ctx :])[:, -1]
            if do_sample:
                logits = logits / max(temperature, 1e-8)
                if top_k is not None:
                    cutoff = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
                    logits = logits.masked_fill(logits < cutoff, float("-inf"))
                next_token = torch.multinomial(F.softmax(logits, -1), 1, generator=generator)
            else:
                next_token = logits.argmax(-1, keepdim=True)
            tokens = torch.cat([tokens, next_token], dim=1)
            if stop_at_eos and self.tokenizer is not None and bool((next_token == self.eot_token_id).all()):
                break
        return self.to_string(tokens[0]) if isinstance(input, str) else tokens

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

    def tokens_to_residual_directions(
        self, tokens: str | int | Int[Tensor, "..."]
    ) -> Float[Tensor, "... d_model"]:
        """Unembedding directions (columns of W_U) of tokens, as in TransformerLens."""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        if isinstance(tokens, int):
            return self.W_U[:, tokens]
        return self.W_U[:, tokens].movedim(0, -1)

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
