"""Import OpenAI circuit_sparsity checkpoints (``beeg_config.json`` + ``final_model.pt``).

OpenAI's release (github openai/circuit_sparsity, ``circuit_sparsity/inference/gpt.py``) stores
a model as a directory holding ``beeg_config.json`` (their ``GPTConfig`` plus training-only
keys) and ``final_model.pt`` (a plain state dict, dense tensors with explicit zeros, Linear
layout [out, in]). :func:`import_openai` turns such a directory into a
:class:`~sparse_lens.model.SparseTransformer` with the same logits and, given a destination,
saves it as a sparse-lens checkpoint (config.json, model.safetensors with the zeros stored
sparsely, tokenizer.json when their tokenizer files are present, and ``openai_source.json``
recording where it came from).

Why it is built this way
------------------------
* **Refuse what we cannot reproduce.** Every key of ``beeg_config.json`` is either interpreted
  (:data:`ARCHITECTURE_KEYS`), or on an explicit list of training-only keys that cannot change
  the forward pass at inference (:data:`TRAINING_ONLY_KEYS`, plus any ``debug_*`` flag). Any
  other key is an error naming it: a newer release with a new switch must not import silently
  into a model whose logits differ. Keys that are absent take ``GPTConfig``'s defaults, except
  the sizes (block_size, vocab_size, n_layer, n_head, d_model), which must be present.
* **Load without unpickling code.** ``torch.load(weights_only=True)`` only; a file that needs
  more is refused, never executed.
* **One place per difference.** The config mapping and the tensor mapping below are flat
  tables (the names of the node sites and of the weights joining them are columns of the
  graph table, :mod:`sparse_lens.model.graph`); the model's forward pass has no
  OpenAI-specific code.

Config mapping (theirs -> ours)
-------------------------------
block_size -> n_ctx; vocab_size -> d_vocab; n_layer -> n_layers; n_head -> n_heads; d_head ->
d_head (default d_model // n_head); d_model; d_mlp (older files: ``n_mlp``; default 4 d_model);
bias -> use_bias; activation_type -> act_fn; residual_activation_type -> residual_activation;
afrac / afrac_loctypes (comma list, default "attn_in,attn_out,mlp_in,mlp_out") -> afrac /
afrac_locations (afrac null: no AbsTopK); tied_unembed (default true); enable_bigram_table /
learnable_bigram_table -> bigram_table "off" | "fixed" | "learnable"; d_pos_emb null ->
positional_embedding_type "standard" (their ``wpe`` always exists and is added to the token
embedding), d_pos_emb set -> "concat"; sink -> attn_sink (their sink only exists with
``flash``, the default; with flash false their code silently skips it, and so do we).
rms_norm must be true: they use ``nn.RMSNorm(d)`` with eps None, i.e. torch.finfo(float32).eps,
which becomes our ``eps``; ``ln_bias`` has no effect on an RMSNorm. LayerNorm models are refused.
``bigram_table_rank`` must be null (no low-rank table exists in the released code), ``n_embd``
null or equal to d_model.

``dropout_cat_pos_emb`` and ``sinusoidal_cat_pos_emb`` are accepted whatever their value: the
first only applies dropout to the concatenated positions during training (identity at
inference), and with the second the fixed sinusoids are still stored in ``wpe``.

Tensor mapping (theirs -> ours; H heads, dh = d_head, d_in = d_model (+ d_pos_emb))
-----------------------------------------------------------------------------------
The six weight matrices joining node sites (W_Q, W_K, W_V, W_O, W_in, W_out) come from the
graph table, :data:`sparse_lens.model.graph.WEIGHTS`: its ``openai`` column names their Linear
weight in ``transformer.h.{i}.``, which is our edge matrix transposed; q, k and v are the three
consecutive H*dh row slices of ``c_attn``, head-major. The other tensors:

=========================================  ===========================================
transformer.wte.weight [V, d]              embed.W_E [V, d]
transformer.wpe.weight [n_ctx, d | dp]     pos_embed.W_pos
transformer.h.{i}.ln_1 / ln_2.weight       blocks.{i}.ln1.w / ln2.w
transformer.h.{i}.ln_p1 / ln_p2.weight     blocks.{i}.ln_p1.w / ln_p2.w   (concat positions)
h.{i}.attn.c_attn.bias [3 H dh]            blocks.{i}.attn.b_Q / b_K / b_V [H, dh]
h.{i}.attn.c_proj.bias [d]                 blocks.{i}.attn.b_O [d]
h.{i}.attn.attn_imp.sink_logit [H]         blocks.{i}.attn.sink_logit [H]
h.{i}.mlp.c_fc.bias / c_proj.bias          blocks.{i}.mlp.b_in [d_mlp] / b_out [d]
transformer.ln_f.weight                    ln_final.w
lm_head.weight [V, d] (no bias)            unembed.W_U [d, V] (tied: W_E itself)
final_logits_bias [V] (missing: zeros)     unembed.b_U [V] (buffer)
bigram_table [V, V]                        bigram.W_bigram [V, V]
=========================================  ===========================================

Their ``transformer.h.{i}.attn.bias`` (the causal-mask buffer of the non-flash path) is dropped;
``_orig_mod.`` / ``module.`` prefixes (torch.compile, DDP) are stripped; sparse or half-precision
tensors are made dense float32.

Hook names (theirs -> ours): :data:`OPENAI_HOOK_NAMES`
------------------------------------------------------
Every node site's name in their code is the graph table's ``openai`` column
(:data:`sparse_lens.model.graph.SITES`: e.g. ``{i}.attn.act_in`` is our
``blocks.{i}.attn.hook_read``, ``{i}.mlp.post_act`` our ``blocks.{i}.mlp.hook_post``). Three
more are not node sites: ``{i}.resid_in`` is our ``blocks.{i}.hook_resid_pre``, ``{i}.attn.y``
our ``blocks.{i}.attn.hook_z`` and ``final_resid`` our ``blocks.{n_layers-1}.hook_resid_post``.
Their q / k / v and y are [B, T, H*dh] where ours are [B, T, H, dh]
(:data:`OPENAI_FLAT_HEAD_HOOKS`); flat indices agree: their channel ``h * dh + j`` is our
``[h, j]`` (``ours.flatten(-2)``). Their ``{i+1}.resid_in`` is also our
``blocks.{i}.hook_resid_post``. Use :func:`openai_hook_name` to turn a concrete name of theirs
into ours.

Tokenizer
---------
Their tokenizer is a tiktoken BPE shipped as GPT-2-style ``vocab.bpe`` (merges) +
``encoder.json`` (token -> id, in GPT-2's byte-to-unicode alphabet). That format maps directly
onto a ``tokenizers`` byte-level BPE: :func:`tokenizer_from_gpt2_bpe`. If the files are in the
source directory (or ``tokenizer_dir``) the imported model gets the tokenizer; without them it
works on token ids. The pre-tokenizer is GPT-2's regex (what ``vocab.bpe`` + ``encoder.json``
files are made with); words already in the vocabulary are taken whole, as tiktoken does.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
from torch import Tensor

from sparse_lens.config import ABSTOPK_LOCATIONS, SparseConfig
from sparse_lens.errors import SparseLensError
from sparse_lens.io.atomic import write_json
from sparse_lens.io.checkpoint import load_state
from sparse_lens.model.graph import SITES, WEIGHTS, Weight
from sparse_lens.model.transformer import EOT, SparseTransformer

CONFIG_FILE = "beeg_config.json"
WEIGHTS_FILE = "final_model.pt"
VOCAB_BPE_FILE = "vocab.bpe"
ENCODER_JSON_FILE = "encoder.json"
SOURCE_FILE = "openai_source.json"
"""Written next to the imported checkpoint: source directory and their original config."""

ARCHITECTURE_KEYS = frozenset(
    {
        "block_size",
        "vocab_size",
        "n_layer",
        "n_head",
        "d_head",
        "d_model",
        "d_mlp",
        "n_mlp",
        "bias",
        "ln_bias",
        "rms_norm",
        "residual_activation_type",
        "activation_type",
        "afrac",
        "afrac_loctypes",
        "tied_unembed",
        "enable_bigram_table",
        "learnable_bigram_table",
        "bigram_table_rank",
        "d_pos_emb",
        "dropout_cat_pos_emb",
        "sinusoidal_cat_pos_emb",
        "sink",
        "flash",
        "n_embd",
    }
)
"""beeg_config.json keys the importer interprets (or checks for a value it supports)."""

TRAINING_ONLY_KEYS = frozenset(
    {
        "dropout",  # identity at inference
        "pfrac",  # weight-sparsity target: the zeros are already in the weights
        "expansion_factor",
        "expansion_factor_mlp",
        "grad_checkpointing",
        "sparse_matmul_impl",
        "enable_sparse_kernels",
        "ignore_dw_grad",
        "afrac_approx",  # approximate top-k during training; inference is exact
        "rtopk",
        "tokenizer_name",  # informational; the tokenizer comes from its files
        "debug_nans",
        "debug_exact_topk",
    }
)
"""beeg_config.json keys that cannot change the forward pass at inference. Any ``debug_*`` key
is treated the same way. Every other unknown key is an error."""

# Defaults of their GPTConfig for keys a beeg_config.json may omit (None: must be present).
_REQUIRED = ("block_size", "vocab_size", "n_layer", "n_head", "d_model")
_DEFAULTS: dict[str, Any] = {
    "d_head": None,
    "d_mlp": None,
    "bias": True,
    "rms_norm": False,
    "residual_activation_type": "identity",
    "activation_type": "gelu",
    "afrac": None,
    "afrac_loctypes": "attn_in,attn_out,mlp_in,mlp_out",
    "tied_unembed": True,
    "enable_bigram_table": False,
    "learnable_bigram_table": False,
    "bigram_table_rank": None,
    "d_pos_emb": None,
    "sink": False,
    "flash": True,
    "n_embd": None,
}
_CHOICES = {"activation_type": ("gelu", "relu"), "residual_activation_type": ("identity", "relu")}

RMS_NORM_EPS = torch.finfo(torch.float32).eps
"""``nn.RMSNorm(d)`` with eps=None uses the dtype's machine epsilon; their weights are float32."""

OPENAI_HOOK_NAMES: dict[str, str] = {
    "{i}.resid_in": "blocks.{i}.hook_resid_pre",
    **{"{i}." + site.openai: site.hook("{i}") for site in SITES if site.openai is not None},
    "{i}.attn.y": "blocks.{i}.attn.hook_z",
    "final_resid": "blocks.{last}.hook_resid_post",
}
"""Their hook-name templates -> ours: the node sites' (graph table's ``openai`` column) and
three more. ``{i}`` is the layer, ``{last}`` is n_layers - 1. Fill them in with
:func:`openai_hook_name`."""

OPENAI_FLAT_HEAD_HOOKS = frozenset(
    {"{i}." + site.openai for site in SITES if site.openai and len(site.shape) == 2}
    | {"{i}.attn.y"}
)
"""Their hooks that are [batch, pos, H*dh] where ours are [batch, pos, H, dh]."""

_LAYER_HOOK = re.compile(r"^(\d+)\.(.+)$")


def openai_hook_name(name: str, n_layers: int) -> str:
    """Our hook name for one of theirs, e.g. ``"3.attn.q"`` -> ``"blocks.3.attn.hook_q"``."""
    if name == "final_resid":
        return OPENAI_HOOK_NAMES[name].format(last=n_layers - 1)
    match = _LAYER_HOOK.match(name)
    template = "{i}." + match.group(2) if match else None
    if template not in OPENAI_HOOK_NAMES or not 0 <= int(match.group(1)) < n_layers:
        raise SparseLensError(
            f"not an OpenAI hook name of a {n_layers}-layer model: {name!r}; known forms: "
            f"{sorted(OPENAI_HOOK_NAMES)}",
            field="name",
        )
    return OPENAI_HOOK_NAMES[template].format(i=int(match.group(1)))


# ---------------------------------------------------------------------------------- config
def convert_openai_config(
    beeg: Mapping[str, Any], *, source: str | Path | None = None, model_name: str = "openai-import"
) -> SparseConfig:
    """Map a beeg_config.json dict onto a :class:`SparseConfig` (errors name the key)."""
    if not isinstance(beeg, Mapping):
        raise SparseLensError("beeg_config.json must hold a JSON object", path=source)
    unknown = sorted(
        key
        for key in beeg
        if key not in ARCHITECTURE_KEYS
        and key not in TRAINING_ONLY_KEYS
        and not key.startswith("debug_")
    )
    if unknown:
        raise SparseLensError(
            f"unknown config key(s) {unknown}: they may change the architecture, which this "
            "importer does not reproduce; if they are training-only, add them to "
            "sparse_lens.io.openai.TRAINING_ONLY_KEYS",
            path=source,
            field=unknown[0],
        )
    missing = [key for key in _REQUIRED if key not in beeg]
    if missing:
        raise SparseLensError(
            f"required key(s) {missing} are missing", path=source, field=missing[0]
        )

    def get(key: str) -> Any:
        return beeg[key] if key in beeg else _DEFAULTS[key]

    def fail(key: str, message: str) -> SparseLensError:
        return SparseLensError(message, path=source, field=key)

    for key in (
        "block_size",
        "vocab_size",
        "n_layer",
        "n_head",
        "d_model",
        "d_head",
        "d_mlp",
        "n_mlp",
        "d_pos_emb",
    ):
        value = beeg.get(key)
        if value is not None and (
            not isinstance(value, int) or isinstance(value, bool) or value <= 0
        ):
            raise fail(key, f"must be a positive integer, got {value!r}")
    for key in (
        "bias",
        "rms_norm",
        "tied_unembed",
        "enable_bigram_table",
        "learnable_bigram_table",
        "sink",
        "flash",
    ):
        if not isinstance(get(key), bool):
            raise fail(key, f"must be true or false, got {get(key)!r}")
    for key, allowed in _CHOICES.items():
        if get(key) not in allowed:
            raise fail(key, f"must be one of {list(allowed)}, got {get(key)!r}")

    if not get("rms_norm"):
        raise fail(
            "rms_norm",
            "LayerNorm models (rms_norm false or absent) are not supported: sparse-lens models "
            "use RMSNorm",
        )
    if get("bigram_table_rank") is not None:
        raise fail(
            "bigram_table_rank",
            f"must be null (a low-rank bigram table is not supported), got {get('bigram_table_rank')!r}",
        )
    d_model = beeg["d_model"]
    if get("n_embd") is not None and get("n_embd") != d_model:
        raise fail(
            "n_embd",
            f"is {get('n_embd')} but d_model is {d_model}; which width is meant is ambiguous",
        )

    d_mlp = beeg.get("d_mlp")
    if beeg.get("n_mlp") is not None:
        if d_mlp is not None and d_mlp != beeg["n_mlp"]:
            raise fail("n_mlp", f"is {beeg['n_mlp']} but d_mlp is {d_mlp}; give one of them")
        d_mlp = beeg["n_mlp"]
    d_head = get("d_head") if get("d_head") is not None else d_model // beeg["n_head"]

    afrac = get("afrac")
    if afrac is not None and (isinstance(afrac, bool) or not isinstance(afrac, (int, float))):
        raise fail("afrac", f"must be a number or null, got {afrac!r}")
    loctypes = get("afrac_loctypes")
    if not isinstance(loctypes, str):
        raise fail("afrac_loctypes", f"must be a comma-separated string, got {loctypes!r}")
    locations = tuple(dict.fromkeys(loc.strip() for loc in loctypes.split(",") if loc.strip()))
    bad = [loc for loc in locations if loc not in ABSTOPK_LOCATIONS]
    if bad:
        raise fail("afrac_loctypes", f"unknown location(s) {bad}; known: {list(ABSTOPK_LOCATIONS)}")

    if not get("enable_bigram_table"):
        bigram = "off"
    else:
        bigram = "learnable" if get("learnable_bigram_table") else "fixed"
    d_pos_emb = get("d_pos_emb")

    fields = dict(
        n_layers=beeg["n_layer"],
        d_model=d_model,
        n_heads=beeg["n_head"],
        d_head=d_head,
        d_mlp=d_mlp if d_mlp is not None else 4 * d_model,
        n_ctx=beeg["block_size"],
        d_vocab=beeg["vocab_size"],
        act_fn=get("activation_type"),
        eps=RMS_NORM_EPS,
        positional_embedding_type="standard" if d_pos_emb is None else "concat",
        d_pos_emb=d_pos_emb,
        afrac=None if afrac is None else float(afrac),
        afrac_locations=locations,
        attn_sink=get("sink") and get("flash"),
        bigram_table=bigram,
        use_bias=get("bias"),
        tied_unembed=get("tied_unembed"),
        residual_activation=get("residual_activation_type"),
        final_logits_bias=True,
        model_name=model_name,
    )
    try:
        return SparseConfig(**fields)
    except SparseLensError as error:
        raise SparseLensError(f"cannot be represented: {error}", path=source) from None


# ---------------------------------------------------------------------------------- weights
def load_openai_state_dict(path: str | Path) -> dict[str, Tensor]:
    """Read ``final_model.pt`` with ``torch.load(weights_only=True)``: dense float32 tensors,
    ``_orig_mod.`` / ``module.`` prefixes stripped. Never unpickles code."""
    path = Path(path)
    if not path.is_file():
        raise SparseLensError(
            f"{path.name} not found; an OpenAI model directory holds {CONFIG_FILE} and {WEIGHTS_FILE}",
            path=path,
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError, ...
        first_line = (
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        )
        raise SparseLensError(
            f"cannot read weights with torch.load(weights_only=True) ({first_line}); the file is "
            "corrupt or holds more than a plain state dict",
            path=path,
        ) from None
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, Tensor) for k, v in state.items()
    ):
        raise SparseLensError("expected a plain state dict (names -> tensors)", path=path)
    out: dict[str, Tensor] = {}
    for name, tensor in state.items():
        for prefix in ("_orig_mod.", "module."):
            name = name.removeprefix(prefix)
        if tensor.is_sparse:
            tensor = tensor.to_dense()
        out[name] = tensor.detach().to(torch.float32)
    return out


def convert_openai_state_dict(
    state: Mapping[str, Tensor], cfg: SparseConfig, *, source: str | Path | None = None
) -> dict[str, Tensor]:
    """Their state dict (names and [out, in] layout) -> ours (TL names and layout) for ``cfg``.

    Missing, unexpected and misshapen tensors are errors naming them (shapes are those implied
    by beeg_config.json). ``final_logits_bias`` may be missing (zeros).
    """
    h, dh, d, d_mlp, V = cfg.n_heads, cfg.d_head, cfg.d_model, cfg.d_mlp, cfg.d_vocab
    concat = cfg.positional_embedding_type == "concat"
    # our name -> (their name, expected shape of theirs, conversion)
    table: dict[str, tuple[str, tuple[int, ...], Any]] = {}

    def put(ours: str, theirs: str, shape: tuple[int, ...], fn: Any = None) -> None:
        table[ours] = (theirs, shape, fn)

    edge_slices = _edge_weight_slices(cfg)
    put("embed.W_E", "transformer.wte.weight", (V, d))
    put("pos_embed.W_pos", "transformer.wpe.weight", (cfg.n_ctx, cfg.d_pos))
    for i in range(cfg.n_layers):
        ours, theirs = f"blocks.{i}.", f"transformer.h.{i}."
        put(ours + "ln1.w", theirs + "ln_1.weight", (d,))
        put(ours + "ln2.w", theirs + "ln_2.weight", (d,))
        if concat:
            put(ours + "ln_p1.w", theirs + "ln_p1.weight", (cfg.d_pos_emb,))
            put(ours + "ln_p2.w", theirs + "ln_p2.weight", (cfg.d_pos_emb,))
        for weight, (rows, start, stop, fan) in edge_slices.items():
            put(
                ours + weight.param,
                theirs + weight.openai,
                (rows, fan),
                lambda w, weight=weight, start=start, stop=stop: weight.from_matrix(
                    w[start:stop].T, cfg
                ),
            )
        if cfg.use_bias:
            for j, name in enumerate("QKV"):  # q, k, v: consecutive [H*dh] slices, head-major
                put(
                    ours + f"attn.b_{name}",
                    theirs + "attn.c_attn.bias",
                    (3 * h * dh,),
                    lambda b, j=j: b[j * h * dh : (j + 1) * h * dh].view(h, dh),
                )
            put(ours + "attn.b_O", theirs + "attn.c_proj.bias", (d,))
            put(ours + "mlp.b_in", theirs + "mlp.c_fc.bias", (d_mlp,))
            put(ours + "mlp.b_out", theirs + "mlp.c_proj.bias", (d,))
        if cfg.attn_sink:
            put(ours + "attn.sink_logit", theirs + "attn.attn_imp.sink_logit", (h,))
    put("ln_final.w", "transformer.ln_f.weight", (d,))
    if not cfg.tied_unembed:
        put("unembed.W_U", "lm_head.weight", (V, d), lambda w: w.T)
    put("unembed.b_U", "final_logits_bias", (V,))
    if cfg.bigram_table != "off":
        put("bigram.W_bigram", "bigram_table", (V, V))

    state = dict(state)
    if "final_logits_bias" not in state:
        state["final_logits_bias"] = torch.zeros(V)
    if cfg.attn_sink:  # a single shared sink logit is broadcast over heads in their code
        for i in range(cfg.n_layers):
            key = f"transformer.h.{i}.attn.attn_imp.sink_logit"
            if key in state and state[key].numel() == 1:
                state[key] = state[key].reshape(1).expand(h).clone()
    if cfg.tied_unembed and "lm_head.weight" in state:
        wte = state.setdefault("transformer.wte.weight", state["lm_head.weight"])
        if not torch.equal(wte, state["lm_head.weight"]):
            raise SparseLensError(
                "tied_unembed is true but lm_head.weight differs from transformer.wte.weight",
                path=source,
                field="lm_head.weight",
            )
    ignorable = {"lm_head.weight"} if cfg.tied_unembed else set()
    ignorable |= {f"transformer.h.{i}.attn.bias" for i in range(cfg.n_layers)}  # causal-mask buffer

    used = {theirs for theirs, _, _ in table.values()}
    missing = sorted(used - set(state))
    unexpected = sorted(set(state) - used - ignorable)
    if missing or unexpected:
        raise SparseLensError(
            f"weights do not match {CONFIG_FILE} (missing: {missing[:6]}, unexpected: "
            f"{unexpected[:6]}); is this the config that goes with these weights?",
            path=source,
            field=(missing or unexpected)[0],
        )
    for theirs in sorted(used):
        expected = next(shape for name, shape, _ in table.values() if name == theirs)
        if tuple(state[theirs].shape) != expected:
            raise SparseLensError(
                f"tensor '{theirs}' has shape {tuple(state[theirs].shape)}, {CONFIG_FILE} "
                f"implies {expected}",
                path=source,
                field=theirs,
            )
    return {
        ours: (fn(state[theirs]) if fn is not None else state[theirs]).contiguous()
        for ours, (theirs, _, fn) in table.items()
    }


def _edge_weight_slices(cfg: SparseConfig) -> dict[Weight, tuple[int, int, int, int]]:
    """Where each weight of the graph table lies in their Linear weight: (rows of their
    tensor, first row, end row, in features). Their [out, in] slice is our edge matrix
    transposed; weights sharing a tensor are consecutive row slices in table order."""
    width = {site.name: site.width(cfg) for site in SITES}
    rows: dict[str, int] = {}
    slices: dict[Weight, tuple[int, int]] = {}
    for weight in WEIGHTS:
        start = rows.get(weight.openai, 0)
        rows[weight.openai] = start + width[weight.dst]
        slices[weight] = (start, rows[weight.openai])
    return {
        weight: (rows[weight.openai], start, stop, width[weight.src])
        for weight, (start, stop) in slices.items()
    }


# ---------------------------------------------------------------------------------- tokenizer
def tokenizer_from_gpt2_bpe(vocab_bpe: str | Path, encoder_json: str | Path) -> Tokenizer:
    """A ``tokenizers`` byte-level BPE equal to a GPT-2 / tiktoken "data gym" BPE.

    ``encoder.json`` maps tokens (GPT-2's byte-to-unicode alphabet) to ids 0..n-1;
    ``vocab.bpe`` lists the merges in rank order after a ``#version`` line. ``<|...|>`` entries
    become special tokens; ``<|endoftext|>`` is appended as the next id if absent (tiktoken
    keeps it out of these files).
    """
    vocab_bpe, encoder_json = Path(vocab_bpe), Path(encoder_json)
    for path in (vocab_bpe, encoder_json):
        if not path.is_file():
            raise SparseLensError("tokenizer file not found", path=path)
    try:
        encoder = json.loads(encoder_json.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SparseLensError(f"not valid JSON ({error})", path=encoder_json) from None
    if not isinstance(encoder, dict) or not all(
        isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool)
        for k, v in encoder.items()
    ):
        raise SparseLensError(
            "expected a JSON object mapping tokens to integer ids", path=encoder_json
        )
    if sorted(encoder.values()) != list(range(len(encoder))):
        raise SparseLensError("token ids must be exactly 0 .. n-1, each once", path=encoder_json)

    merges: list[tuple[str, str]] = []
    try:
        lines = vocab_bpe.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as error:
        raise SparseLensError(f"not UTF-8 text ({error})", path=vocab_bpe) from None
    for number, line in enumerate(lines, start=1):
        if not line.strip() or (number == 1 and line.startswith("#version")):
            continue
        parts = line.split()
        if len(parts) != 2:
            raise SparseLensError(
                f"line {number}: expected a merge 'left right', got {line!r}", path=vocab_bpe
            )
        left, right = parts
        for token in (left, right, left + right):
            if token not in encoder:
                raise SparseLensError(
                    f"line {number}: merge {line!r} uses {token!r}, which encoder.json lacks",
                    path=vocab_bpe,
                )
        merges.append((left, right))

    tokenizer = Tokenizer(models.BPE(vocab=encoder, merges=merges, ignore_merges=True))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    specials = [token for token in encoder if token.startswith("<|") and token.endswith("|>")]
    if EOT not in encoder:
        specials.append(EOT)
    tokenizer.add_special_tokens(
        [AddedToken(token, special=True, normalized=False) for token in specials]
    )
    return tokenizer


def _find_tokenizer(src: Path, tokenizer_dir: Path | None) -> Tokenizer | None:
    directory = src if tokenizer_dir is None else tokenizer_dir
    files = (directory / VOCAB_BPE_FILE, directory / ENCODER_JSON_FILE)
    present = [path.is_file() for path in files]
    if all(present):
        return tokenizer_from_gpt2_bpe(*files)
    if tokenizer_dir is not None or any(present):
        missing = files[present.index(False)]
        raise SparseLensError(
            f"tokenizer needs both {VOCAB_BPE_FILE} and {ENCODER_JSON_FILE}; {missing.name} is missing",
            path=missing,
        )
    return None


# ---------------------------------------------------------------------------------- import
def import_openai(
    src_dir: str | Path,
    dst_dir: str | Path | None = None,
    tokenizer_dir: str | Path | None = None,
) -> SparseTransformer:
    """Load an OpenAI circuit_sparsity model directory as a SparseTransformer (eval mode).

    ``src_dir`` holds beeg_config.json and final_model.pt (and optionally vocab.bpe +
    encoder.json; ``tokenizer_dir`` points elsewhere for them). With ``dst_dir`` the model is
    also saved there as a sparse-lens checkpoint, with ``openai_source.json`` for provenance.
    """
    src = Path(src_dir)
    if not src.is_dir():
        raise SparseLensError("no such OpenAI model directory", path=src)
    config_path, weights_path = src / CONFIG_FILE, src / WEIGHTS_FILE
    if not config_path.is_file():
        raise SparseLensError(
            f"{CONFIG_FILE} not found; an OpenAI model directory holds {CONFIG_FILE} and {WEIGHTS_FILE}",
            path=config_path,
        )
    try:
        beeg = json.loads(config_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SparseLensError(f"not valid JSON ({error})", path=config_path) from None
    if not isinstance(beeg, dict):
        raise SparseLensError("expected a JSON object", path=config_path)
    cfg = convert_openai_config(beeg, source=config_path, model_name=f"openai/{src.resolve().name}")
    tokenizer = _find_tokenizer(src, None if tokenizer_dir is None else Path(tokenizer_dir))

    tensors = convert_openai_state_dict(
        load_openai_state_dict(weights_path), cfg, source=weights_path
    )
    model = SparseTransformer(cfg)
    load_state(model, tensors, source=weights_path)
    if tokenizer is not None:
        try:
            model.set_tokenizer(tokenizer)
        except SparseLensError as error:
            where = src if tokenizer_dir is None else Path(tokenizer_dir)
            raise SparseLensError(str(error), path=where / ENCODER_JSON_FILE) from None
    model.eval()

    if dst_dir is not None:
        dst = model.save_pretrained(dst_dir)
        provenance = {
            "format": "openai/circuit_sparsity",
            "src_dir": str(src.resolve()),
            "beeg_config": beeg,
            "ignored_keys": sorted(
                k for k in beeg if k in TRAINING_ONLY_KEYS or k.startswith("debug_")
            ),
        }
        write_json(dst / SOURCE_FILE, provenance, sort_keys=True)
    return model


__all__ = [
    "ARCHITECTURE_KEYS",
    "TRAINING_ONLY_KEYS",
    "OPENAI_HOOK_NAMES",
    "OPENAI_FLAT_HEAD_HOOKS",
    "openai_hook_name",
    "convert_openai_config",
    "load_openai_state_dict",
    "convert_openai_state_dict",
    "tokenizer_from_gpt2_bpe",
    "import_openai",
]
