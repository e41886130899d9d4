"""SparseConfig: every architecture switch of a weight-sparse transformer, in TL's vocabulary.

It subclasses TransformerLens's ``TransformerLensConfig`` so that every TL utility that reads
``model.cfg`` (patching, head_detector, ActivationCache) finds the names it expects: n_layers,
d_model, d_head, n_heads, d_mlp, n_ctx, d_vocab, act_fn, normalization_type. The sparse-specific
switches (REFERENCE section 1) are added on top. Unlike TL's ``from_dict``, which silently drops
unknown keys, ours refuses them: a misspelt field in a config file must not train the wrong
model for two hours.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformer_lens.config import TransformerLensConfig

from sparse_lens import limits
from sparse_lens.errors import SparseLensError
from sparse_lens.io.atomic import write_json
from sparse_lens.schema import checked_values, dataclass_from_dict

ABSTOPK_LOCATIONS = (
    "attn_in",
    "attn_q",
    "attn_k",
    "attn_v",
    "attn_out",
    "mlp_in",
    "mlp_neuron",
    "mlp_out",
    "resid_post_attn",
    "resid_post_mlp",
)
"""Where AbsTopK may act (REFERENCE section 1). The attention output before W_O is never one."""

PAPER_ABSTOPK_LOCATIONS = ABSTOPK_LOCATIONS[:8]
BIGRAM_MODES = ("off", "learnable", "fixed")
POSITIONAL_EMBEDDINGS = ("none", "standard", "concat")
RESIDUAL_ACTIVATIONS = ("identity", "relu")
ACT_FNS = ("gelu", "relu")

# Runtime properties of a loaded model, not of the architecture (never saved or read back).
_RUNTIME_FIELDS = ("device", "dtype", "sparse_exec")


@dataclass
class SparseConfig(TransformerLensConfig):
    """Architecture of a (weight-)sparse GPT-style transformer.

    TL fields keep TL's meaning. ``positional_embedding_type`` is TL's field with the values
    "none" (the paper's default: no positions), "standard" (a learned ``W_pos`` added to the
    token embedding, as OpenAI's release always has) or "concat" (a ``d_pos_emb``-wide learned
    position vector, through its own RMSNorm, concatenated onto every sublayer input).
    """

    d_model: int = 256
    d_head: int = 16
    n_layers: int = 2
    n_ctx: int = 256
    n_heads: int = -1
    d_mlp: int | None = None
    d_vocab: int = 2048
    act_fn: str = "gelu"
    normalization_type: str | None = "RMS"
    uses_rms_norm: bool = True
    final_rms: bool = True
    eps: float = 1e-6
    positional_embedding_type: str = "none"
    default_prepend_bos: bool = True

    afrac: float | None = 0.25
    """Fraction of each AbsTopK site kept (k = int(afrac * width)); None turns AbsTopK off."""
    afrac_locations: tuple[str, ...] = PAPER_ABSTOPK_LOCATIONS
    attn_sink: bool = False
    bigram_table: str = "learnable"
    d_pos_emb: int | None = None
    use_bias: bool = True
    tied_unembed: bool = False
    residual_activation: str = "identity"
    final_logits_bias: bool = True
    """A (non-trained) per-vocab logit bias buffer ``unembed.b_U``, as in OpenAI's release."""
    init_range: float = 0.02
    model_name: str = "sparse-lens"
    sparse_exec: bool = True
    """Run sparse weights as CSR matmuls where that is faster and the weights are not training
    (:mod:`sparse_lens.model.sparse_exec`). A runtime switch: not saved in config.json."""

    def __post_init__(self) -> None:
        if isinstance(self.afrac_locations, list):
            self.afrac_locations = tuple(self.afrac_locations)
        _check_types(self)
        if self.n_heads == -1 and self.d_head > 0 and self.d_model % self.d_head:
            raise SparseLensError(
                f"d_model ({self.d_model}) must be a multiple of d_head ({self.d_head}) when "
                "n_heads is derived from them; change d_head or set n_heads",
                field="d_head",
            )
        super().__post_init__()
        self._validate()

    # ------------------------------------------------------------------ derived sizes
    @property
    def d_in(self) -> int:
        """Width of every sublayer input (the residual read): d_model, plus d_pos_emb if concat."""
        if self.positional_embedding_type == "concat":
            return self.d_model + self.d_pos_emb
        return self.d_model

    @property
    def d_pos(self) -> int:
        """Width of W_pos: d_pos_emb for concatenated positions, d_model otherwise."""
        return self.d_pos_emb if self.positional_embedding_type == "concat" else self.d_model

    def abstopk_at(self, location: str) -> float | None:
        """The kept fraction at ``location``, or None if AbsTopK is off there."""
        if location not in ABSTOPK_LOCATIONS:
            raise KeyError(location)
        if self.afrac is None or location not in self.afrac_locations:
            return None
        return self.afrac

    # ------------------------------------------------------------------ validation
    def _validate(self) -> None:
        def positive(name: str) -> None:
            if getattr(self, name) <= 0:
                raise SparseLensError(f"must be a positive integer, got {getattr(self, name)}", field=name)

        for name in ("d_model", "d_head", "n_layers", "n_ctx", "n_heads", "d_mlp", "d_vocab"):
            positive(name)
        self._check_sizes()
        choices = {
            "act_fn": ACT_FNS,
            "bigram_table": BIGRAM_MODES,
            "positional_embedding_type": POSITIONAL_EMBEDDINGS,
            "residual_activation": RESIDUAL_ACTIVATIONS,
            "normalization_type": ("RMS",),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise SparseLensError(
                    f"must be one of {list(allowed)}, got {getattr(self, name)!r}", field=name
                )
        unknown = [loc for loc in self.afrac_locations if loc not in ABSTOPK_LOCATIONS]
        if unknown:
            raise SparseLensError(
                f"unknown AbsTopK location(s) {unknown}; choose from {list(ABSTOPK_LOCATIONS)}",
                field="afrac_locations",
            )
        if self.afrac is not None and not 0.0 < self.afrac <= 1.0:
            raise SparseLensError(f"must be in (0, 1] or null, got {self.afrac}", field="afrac")
        if self.positional_embedding_type == "concat":
            if self.d_pos_emb is None or self.d_pos_emb <= 0:
                raise SparseLensError(
                    "concatenated positions need a positive d_pos_emb", field="d_pos_emb"
                )
        elif self.d_pos_emb is not None:
            raise SparseLensError(
                "d_pos_emb is only used with positional_embedding_type = 'concat'",
                field="d_pos_emb",
            )
        if self.eps <= 0:
            raise SparseLensError(f"must be positive, got {self.eps}", field="eps")

    def _check_sizes(self) -> None:
        """Refuse sizes beyond :mod:`sparse_lens.limits` before anything is allocated."""
        caps = {
            "n_layers": limits.MAX_LAYERS,
            "n_heads": limits.MAX_HEADS,
            "d_model": limits.MAX_WIDTH,
            "d_head": limits.MAX_WIDTH,
            "d_mlp": limits.MAX_WIDTH,
            "d_pos_emb": limits.MAX_WIDTH,
            "d_vocab": limits.MAX_VOCAB,
            "n_ctx": limits.MAX_CONTEXT,
        }
        for name, cap in caps.items():
            value = getattr(self, name)
            if value is not None and value > cap:
                raise SparseLensError(
                    f"{value} exceeds the limit {cap} (sparse_lens.limits); is it a typo?",
                    field=name,
                )
        terms = self._weight_terms()
        weights = sum(terms.values())
        if weights > limits.MAX_PARAMETERS:
            largest = max(terms, key=terms.get)
            raise SparseLensError(
                f"this architecture has about {weights:,} weights, over the limit "
                f"{limits.MAX_PARAMETERS:,} (sparse_lens.limits); most of them come from {largest}",
                field=largest,
            )

    def weight_count(self) -> int:
        """The number of weights in the model's matrices (norms and biases left out)."""
        return sum(self._weight_terms().values())

    def _weight_terms(self) -> dict[str, int]:
        """Weights by the field that scales them: the vocabulary (embeddings and the bigram
        table), the layers (attention and MLP matrices) and the positions."""
        d_in = self.d_model + (self.d_pos_emb or 0)
        embeddings = self.d_vocab * self.d_model * (1 if self.tied_unembed else 2)
        bigram = self.d_vocab**2 if self.bigram_table != "off" else 0
        attention = self.n_heads * self.d_head * (3 * d_in + self.d_model)
        mlp = self.d_mlp * (d_in + self.d_model)
        positions = 0
        if self.positional_embedding_type != "none":
            positions = self.n_ctx * (self.d_pos_emb or self.d_model)
        return {
            "d_vocab": embeddings + bigram,
            "n_layers": self.n_layers * (attention + mlp),
            "n_ctx": positions,
        }

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        """Every architecture field, JSON-ready (runtime fields device/dtype left out)."""
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            if f.name in _RUNTIME_FIELDS:
                continue
            value = getattr(self, f.name)
            out[f.name] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], *, source: str | Path | None = None) -> SparseConfig:
        """Build a config, refusing unknown fields (named in the error, with ``source``)."""
        return dataclass_from_dict(
            cls,
            config_dict,
            source=source,
            what="a config (a JSON object / TOML table)",
            exclude=_RUNTIME_FIELDS,
            noun="config field",
        )

    def to_json(self, path: str | Path) -> None:
        write_json(path, self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, path: str | Path) -> SparseConfig:
        path = Path(path)
        if not path.is_file():
            raise SparseLensError("config file not found; is this a sparse-lens model directory?", path=path)
        try:
            data = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise SparseLensError(f"not valid JSON ({error}); re-save the model", path=path) from None
        return cls.from_dict(data, source=path)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SparseConfig) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in self.to_dict().items())
        return f"SparseConfig({fields})"


def _check_types(cfg: SparseConfig) -> None:
    """Reject ill-typed field values (e.g. a string where an int belongs), naming the field."""
    names = [f.name for f in dataclasses.fields(cfg) if f.name not in _RUNTIME_FIELDS]
    checked_values(SparseConfig, {name: getattr(cfg, name) for name in names})


def field_names() -> list[str]:
    """Names accepted by :meth:`SparseConfig.from_dict` (for CLI `--set` help)."""
    return [f.name for f in dataclasses.fields(SparseConfig) if f.name not in _RUNTIME_FIELDS]


__all__ = ["SparseConfig", "ABSTOPK_LOCATIONS", "PAPER_ABSTOPK_LOCATIONS", "field_names"]
