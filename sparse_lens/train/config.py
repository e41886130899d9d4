"""Training configuration: the TrainConfig dataclass, TOML run files, presets and ``--set``.

A run is described by one TOML file with two tables, ``[model]`` (fields of
:class:`sparse_lens.config.SparseConfig`, the architecture) and ``[train]`` (fields of
:class:`TrainConfig`, the recipe). Presets are such files shipped in ``train/presets/``; the
registry is that directory, so adding a preset is adding a file and the CLI's choices follow.

Overrides (``--set key=value``) are typed by the dataclass field they name: ``steps=200`` becomes
an int, ``l0_target=1/32`` a float, ``corpus=a,b`` a list. A bare key is looked up in
TrainConfig first, then SparseConfig; ``model.<key>`` / ``train.<key>`` are explicit. Unknown keys
and ill-typed values raise :class:`SparseLensError` naming the key, because a silently ignored
option (SAELens #389) trains the wrong model for hours.

``d_vocab`` is not set here: the trainer takes it from the tokenizer, so the two cannot disagree.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparse_lens.defaults import HELDOUT_FRACTION
from sparse_lens.errors import SparseLensError
from sparse_lens.schema import Reader, checked_values, dataclass_from_dict

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PRESETS_DIR = Path(__file__).parent / "presets"
#: Values of TrainConfig.precision ("bf16" autocasts the training forward to bfloat16).
PRECISIONS = ("fp32", "bf16")


@dataclass
class TrainConfig:
    """The training recipe (REFERENCE section 2); every field can be set from TOML or ``--set``."""

    steps: int = 1000
    """Optimizer steps."""
    batch_size: int = 32
    """Global batch in sequences of ``n_ctx`` tokens (split across data-parallel ranks)."""
    lr: float = 0.01
    """Peak learning rate (before warmup, decay and the sharkfin L0 factor)."""
    l0_target: float = 1.0 / 16
    """Fraction of each weight matrix kept at the end of annealing; 1 trains a dense model."""
    anneal_start: float = 0.01
    """Fraction of training at which L0 starts falling from 1."""
    anneal_end: float = 0.5
    """Fraction of training at which L0 reaches ``l0_target`` (0.8 for the sparsest models)."""
    warmup_frac: float = 0.01
    """Fraction of training with linear LR warmup."""
    embed_density_factor: float = 4.0
    """Embeddings and biases keep ``min(1, factor * L0)`` of their entries."""
    min_per_unit: int = 4
    """Nonzeros each unit (neuron, q/k/v channel, output channel) keeps regardless of budget."""
    weight_decay: float = 0.1
    """Decoupled decay ``w *= 1 - lr * wd`` on matrices and embeddings, after the projection."""
    beta1: float = 0.9
    beta2: float = 0.95
    adam_eps: float = 0.1
    """Adam epsilon. 0.1 is the paper's (unusual) value."""
    grad_rms_norm: bool = True
    """Rescale the gradient to global RMS 1 every step (the paper: essential)."""
    eval_interval: int = 100
    """Steps between held-out evaluations (also run at the end)."""
    eval_batches: int = 4
    """Batches of ``batch_size`` sequences per held-out evaluation (fixed, so evals compare)."""
    checkpoint_interval: int = 500
    """Steps between checkpoints (also saved at the end and on SIGINT / SIGTERM)."""
    log_interval: int = 10
    """Steps between lines of metrics.jsonl."""
    seed: int = 0
    """Seeds model init and the batch order (batches are a pure function of seed and step)."""
    corpus: list[str] = field(default_factory=list)
    """Corpus sources (directories, globs, files); empty means the Python standard library."""
    heldout_fraction: float = HELDOUT_FRACTION
    """Fraction of files held out for evaluation (split by file name hash)."""
    vocab_size: int = 2048
    """Vocabulary of the BPE tokenizer trained on the corpus (ignored with ``tokenizer``)."""
    tokenizer: str = ""
    """Path to a tokenizer.json to use instead of training one."""
    device: str = "auto"
    """"auto" (CUDA if available, else CPU), "cpu", "cuda", "cuda:1", ..."""
    threads: int = 0
    """CPU threads for torch (0: torch's default). On a busy shared CPU, 1 can be much faster."""
    tokens: str = ""
    """A token set written by ``scripts/export_tokens.py`` (train and held-out streams, their
    tokenizer and corpus identity) to train from instead of reading ``corpus``."""
    precision: str = "fp32"
    """Training forward/backward: "fp32", or "bf16" (autocast; weights, Adam state, projection
    and held-out evaluation stay fp32)."""
    compile: bool = False
    """``torch.compile`` the training forward (the saved model and evaluation are unaffected)."""

    def __post_init__(self) -> None:
        for name, value in checked_values(TrainConfig, dataclasses.asdict(self)).items():
            setattr(self, name, value)
        positive = (
            "steps",
            "batch_size",
            "eval_interval",
            "eval_batches",
            "checkpoint_interval",
            "log_interval",
            "vocab_size",
        )
        for name in positive:
            if getattr(self, name) <= 0:
                raise SparseLensError(f"must be positive, got {getattr(self, name)}", field=name)
        if self.lr <= 0:
            raise SparseLensError(f"must be positive, got {self.lr}", field="lr")
        if not 0.0 < self.l0_target <= 1.0:
            raise SparseLensError(f"must be in (0, 1], got {self.l0_target}", field="l0_target")
        for name in ("anneal_start", "anneal_end", "warmup_frac"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise SparseLensError(f"must be in [0, 1], got {getattr(self, name)}", field=name)
        if self.anneal_start > self.anneal_end:
            raise SparseLensError(
                f"must not exceed anneal_end ({self.anneal_end}), got {self.anneal_start}",
                field="anneal_start",
            )
        if self.embed_density_factor < 1.0:
            raise SparseLensError(
                f"must be >= 1 (embeddings at least as dense as matrices), got "
                f"{self.embed_density_factor}",
                field="embed_density_factor",
            )
        if self.threads < 0:
            raise SparseLensError(f"must be >= 0, got {self.threads}", field="threads")
        if self.min_per_unit < 0:
            raise SparseLensError(f"must be >= 0, got {self.min_per_unit}", field="min_per_unit")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise SparseLensError(f"must be in [0, 1), got {getattr(self, name)}", field=name)
        if self.adam_eps <= 0 or self.weight_decay < 0:
            name = "adam_eps" if self.adam_eps <= 0 else "weight_decay"
            raise SparseLensError(f"out of range: {getattr(self, name)}", field=name)
        if not 0.0 <= self.heldout_fraction < 1.0:
            raise SparseLensError(
                f"must be in [0, 1), got {self.heldout_fraction}", field="heldout_fraction"
            )
        if self.precision not in PRECISIONS:
            raise SparseLensError(
                f"must be one of {list(PRECISIONS)}, got {self.precision!r}", field="precision"
            )
        if self.tokens and (self.corpus or self.tokenizer):
            raise SparseLensError(
                "a token set brings its own corpus split and tokenizer; drop "
                + ("corpus" if self.corpus else "tokenizer"),
                field="tokens",
            )

    @property
    def dense(self) -> bool:
        """A dense run: no projection, and the sharkfin factor is 1."""
        return self.l0_target >= 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str | Path | None = None) -> TrainConfig:
        """Build from a mapping, refusing unknown keys (named, with ``source``)."""
        return dataclass_from_dict(cls, data, source=source, noun="training field")


@dataclass
class RunConfig:
    """A whole run: the architecture (a SparseConfig mapping, minus d_vocab) and the recipe."""

    model: dict[str, Any]
    train: TrainConfig
    source: str = ""
    """Where it came from ("preset:cpu", a file path), for messages and training.json."""

    def model_config(self, d_vocab: int) -> Any:
        """The SparseConfig for a tokenizer with ``d_vocab`` tokens."""
        from sparse_lens.config import SparseConfig

        if "d_vocab" in self.model and self.model["d_vocab"] != d_vocab:
            raise SparseLensError(
                f"d_vocab = {self.model['d_vocab']} but the tokenizer has {d_vocab} tokens; "
                "drop d_vocab from the config (it follows the tokenizer)",
                path=self.source or None,
                field="d_vocab",
            )
        return SparseConfig.from_dict(
            {**self.model, "d_vocab": d_vocab}, source=self.source or None
        )

    def to_dict(self) -> dict[str, Any]:
        return {"model": dict(self.model), "train": self.train.to_dict()}


# ---------------------------------------------------------------------------- presets / files


def preset_names() -> list[str]:
    """Names of the shipped presets (the registry is the presets directory)."""
    return sorted(p.stem for p in PRESETS_DIR.glob("*.toml"))


def preset_path(name: str) -> Path:
    if name not in preset_names():
        raise SparseLensError(
            f"unknown preset {name!r}; choose from {preset_names()}", field="preset"
        )
    return PRESETS_DIR / f"{name}.toml"


def load_preset(name: str) -> RunConfig:
    config = load_config_file(preset_path(name))
    config.source = f"preset:{name}"
    return config


def load_config_file(path: str | Path) -> RunConfig:
    """Read a run TOML with ``[model]`` and ``[train]`` tables (both optional)."""
    path = Path(path)
    if not path.is_file():
        raise SparseLensError("config file not found", path=path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise SparseLensError(f"not valid TOML ({error})", path=path) from None
    return config_from_dict(data, source=path)


def config_from_dict(data: dict[str, Any], *, source: str | Path | None = None) -> RunConfig:
    top = Reader(data, source)
    model = dict(top.mapping("model", {}))
    train = TrainConfig.from_dict(dict(top.mapping("train", {})), source=source)
    top.done(noun="table")
    config = RunConfig(model=model, train=train, source=str(source or ""))
    config.model_config(model.get("d_vocab", 2048))  # validate the architecture now
    return config


# ---------------------------------------------------------------------------- overrides


def apply_overrides(config: RunConfig, overrides: list[str]) -> RunConfig:
    """Apply ``key=value`` strings; unknown keys and bad values raise SparseLensError."""
    from sparse_lens.config import SparseConfig

    train_hints = typing.get_type_hints(TrainConfig)
    model_hints = typing.get_type_hints(SparseConfig)
    model_fields = {f.name for f in dataclasses.fields(SparseConfig)} - {"device", "dtype"}
    train = config.train.to_dict()
    model = dict(config.model)
    for item in overrides:
        key, sep, raw = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise SparseLensError(f"override {item!r} is not key=value", field=key or item)
        table, _, name = key.rpartition(".")
        if table not in ("", "train", "model"):
            raise SparseLensError(f"unknown config key {key!r}", field=key)
        if table in ("", "train") and name in train_hints:
            train[name] = parse_value(raw, train_hints[name], key)
        elif table in ("", "model") and name in model_fields:
            model[name] = parse_value(raw, model_hints[name], key)
        else:
            raise SparseLensError(
                f"unknown config key {key!r}; training keys: {sorted(train_hints)}; "
                f"model keys: {sorted(model_fields)}",
                field=key,
            )
    result = RunConfig(model=model, train=TrainConfig.from_dict(train), source=config.source)
    result.model_config(model.get("d_vocab", 2048))
    return result


def parse_value(raw: str, hint: Any, key: str) -> Any:
    """Turn the text of ``--set key=raw`` into a value of the field's type ``hint``."""
    raw = raw.strip()
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if type(None) in args and raw.lower() in ("none", "null", ""):
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return parse_value(raw, arg, key)
            except SparseLensError:
                continue
        raise SparseLensError(f"cannot parse {raw!r} as {hint}", field=key)
    if origin in (list, tuple):
        items = _toml_value(raw)
        if not isinstance(items, list):
            items = [s.strip() for s in raw.split(",") if s.strip()]
        (item_hint,) = {a for a in args if a is not Ellipsis} or {str}
        values = [
            parse_value(str(v) if not isinstance(v, str) else v, item_hint, key) for v in items
        ]
        return tuple(values) if origin is tuple else values
    if hint is bool:
        lowered = raw.lower()
        if lowered in ("true", "1", "yes", "on"):
            return True
        if lowered in ("false", "0", "no", "off"):
            return False
        raise SparseLensError(f"expected true or false, got {raw!r}", field=key)
    if hint is int:
        try:
            number = float(raw)
        except ValueError:
            raise SparseLensError(f"expected an integer, got {raw!r}", field=key) from None
        if not number.is_integer():
            raise SparseLensError(f"expected an integer, got {raw!r}", field=key)
        return int(number)
    if hint is float:
        numerator, slash, denominator = raw.partition("/")
        try:
            if slash:
                return float(numerator) / float(denominator)
            return float(raw)
        except (ValueError, ZeroDivisionError):
            raise SparseLensError(f"expected a number (or a/b), got {raw!r}", field=key) from None
    if hint is str:
        value = _toml_value(raw)
        return value if isinstance(value, str) else raw
    raise SparseLensError(f"cannot be set from the command line (type {hint})", field=key)


def _toml_value(raw: str) -> Any:
    try:
        return tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        return None
