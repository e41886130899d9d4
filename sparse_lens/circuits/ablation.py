"""What a pruned node becomes: the mean cache, and the registry of ablation modes.

A node that a circuit leaves out is not deleted (that would change every downstream
normalisation); its activation is replaced by an *ablation value*. Three modes are registered
(:mod:`sparse_lens.circuits.registry`, which also generates the CLI's ``--ablation`` choices):

``mean`` (the paper's, the default)
    The node's mean over held-out pretraining tokens. The mean is taken in exactly the space the
    mask replaces: the HookPoint outputs listed in :mod:`sparse_lens.nodes`, i.e. AFTER AbsTopK,
    computed with the model's ordinary forward. A mean computed with AbsTopK switched off (one
    reimplementation did this) is the mean of a different, denser activation that the model never
    sees: it injects values the downstream weights were not trained on, and a "circuit" found
    under it is partly compensating for the wrong constant.
``zero``
    Zero. Cheap and cache-free, but for channels whose typical value is far from zero it is an
    intervention in itself (replication critique: it yields smaller, less faithful circuits).
``resample``
    The activation the model had at a random (context, position) of the pretraining data. The
    cache stores a *bank*: rows sampled from random (context, position) pairs, row ``i`` of every
    site coming from the same pair, so one draw gives a consistent "other input" across sites.
    At ablation time each (batch, position) draws one bank row with a seeded generator, once
    per forward pass (a hook on ``hook_embed`` starts each pass).

The cache is saved beside the model (``<model_dir>/mean_cache.safetensors``) with the weights
hash and token count in its metadata: it is reused across tasks and recomputed when the weights
change. Which pretraining tokens it uses is :func:`pretraining_tokens`'s job (the held-out split
of the corpus the model trained on); :func:`compute_mean_cache` accepts any ``[N, n_ctx]``
token tensor, so tests pass synthetic tokens.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float, Int
from safetensors import SafetensorError
from safetensors.torch import safe_open, save_file
from torch import Tensor

from sparse_lens.circuits.registry import ablation_class
from sparse_lens.defaults import HELDOUT_FRACTION, MEAN_TOKENS
from sparse_lens.errors import SparseLensError
from sparse_lens.io.atomic import atomic_path
from sparse_lens.io.checkpoint import PROVENANCE_FILE
from sparse_lens.nodes import NodeSite, node_sites

MEAN_CACHE_FILE = "mean_cache.safetensors"
CACHE_FORMAT_VERSION = "1"
DEFAULT_BANK_SIZE = 1024


# --------------------------------------------------------------------------------------------
# Identity of a model's weights


def weights_hash(model: torch.nn.Module) -> str:
    """sha256 over the state dict: names sorted, each tensor's name, dtype, shape and bytes.

    The canonical order (sorted names) makes the hash independent of module registration order;
    hashing dtype and shape too means a reshaped or re-typed tensor never collides. Negative
    zeros are hashed as zeros: masking a weight (``w * 0``) leaves ``-0.0``, which a sparse
    checkpoint stores as a plain zero, and a save/load round trip must not change the identity.
    """
    digest = hashlib.sha256()
    state = model.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().cpu()
        if tensor.is_floating_point():
            tensor = tensor + 0.0  # -0.0 + 0.0 == +0.0 in IEEE arithmetic
        tensor = tensor.contiguous()
        digest.update(f"{name}|{tensor.dtype}|{list(tensor.shape)}\n".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------
# The cache


@dataclass
class MeanCache:
    """Per-site means (and a resample bank) of a model's node activations.

    Attributes:
        means: hook name -> [width] mean activation (q/k/v flattened over (head, d_head)).
        bank: hook name -> [n_bank, width] activations at random (context, position) pairs; row
            i of every site comes from the same pair.
        n_tokens: how many token positions the means average over.
        weights_hash: :func:`weights_hash` of the model the cache belongs to.
        path: the file :func:`mean_cache_for` read it from or saved it to (None: not on disk).
    """

    means: dict[str, Float[Tensor, " _width"]]
    bank: dict[str, Float[Tensor, "n_bank _width"]]
    n_tokens: int
    weights_hash: str
    path: Path | None = field(default=None, compare=False, repr=False)

    @property
    def n_bank(self) -> int:
        return int(next(iter(self.bank.values())).shape[0]) if self.bank else 0

    def check_model(self, model: torch.nn.Module, digest: str | None = None) -> None:
        """SparseLensError unless the cache was computed on ``model``'s weights and has every
        node site at the right width (``digest``: the model's weights hash, if known)."""
        if (digest or weights_hash(model)) != self.weights_hash:
            raise SparseLensError(
                "the mean cache belongs to other weights; recompute it for this model",
                field="weights_hash",
            )
        for site in node_sites(model.cfg):
            mean = self.means.get(site.hook)
            if mean is None or tuple(mean.shape) != (site.width,):
                raise SparseLensError(
                    f"the mean cache has no [{site.width}] mean for {site.hook}; recompute it",
                    field="means",
                )


@torch.no_grad()
def compute_mean_cache(
    model: torch.nn.Module,
    tokens: Int[Tensor, "n_seq n_pos"],
    *,
    batch_size: int = 32,
    n_bank: int = DEFAULT_BANK_SIZE,
    seed: int = 0,
    progress: bool = False,
) -> MeanCache:
    """Mean of every node site over all positions of ``tokens``, plus a resample bank.

    The forward is the model's own (AbsTopK on), read at the HookPoints that masks replace, so
    the means live in the masked space (see the module docstring). Sums are accumulated in
    float64 so a long cache does not drift. The bank draws ``n_bank`` (sequence, position) pairs
    with a generator seeded by ``seed``.
    """
    from tqdm.auto import tqdm

    if tokens.ndim != 2 or tokens.shape[0] == 0 or tokens.shape[1] == 0:
        raise SparseLensError(
            f"need a non-empty [n_seq, n_pos] token tensor, got {tuple(tokens.shape)}",
            field="tokens",
        )
    model.check_tokens(tokens)
    sites = node_sites(model.cfg)
    n_seq, n_pos = tokens.shape
    generator = torch.Generator().manual_seed(seed)
    flat_pick = torch.randint(0, n_seq * n_pos, (n_bank,), generator=generator)
    pick_seq, pick_pos = flat_pick // n_pos, flat_pick % n_pos

    sums = {s.hook: torch.zeros(s.width, dtype=torch.float64) for s in sites}
    bank = {s.hook: torch.zeros(n_bank, s.width) for s in sites}
    state: dict[str, Tensor] = {}

    def record(site: NodeSite) -> Callable:
        def hook(act: Tensor, hook) -> None:
            flat = flatten_site(act, site).float()
            sums[site.hook] += flat.sum(dim=(0, 1)).double().cpu()
            rows = state["rows"]
            if rows.numel():
                bank[site.hook][rows] = flat[state["seq"], state["pos"]].cpu()

        return hook

    hooks = [(s.hook, record(s)) for s in sites]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with model.hooks(fwd_hooks=hooks):
            for start in tqdm(range(0, n_seq, batch_size), desc="mean cache", disable=not progress):
                chunk = tokens[start : start + batch_size].to(device)
                in_chunk = (pick_seq >= start) & (pick_seq < start + len(chunk))
                state["rows"] = in_chunk.nonzero().squeeze(-1)
                state["seq"] = (pick_seq[in_chunk] - start).to(device)
                state["pos"] = pick_pos[in_chunk].to(device)
                model(chunk, stop_at_layer=model.cfg.n_layers)  # node sites only: skip the unembed
    finally:
        model.train(was_training)
    n_tokens = n_seq * n_pos
    means = {hook: (total / n_tokens).float() for hook, total in sums.items()}
    return MeanCache(means=means, bank=bank, n_tokens=n_tokens, weights_hash=weights_hash(model))


def flatten_site(act: Tensor, site: NodeSite) -> Tensor:
    """[batch, pos, *channel_shape] -> [batch, pos, width] (q/k/v: flatten head and d_head)."""
    return act.flatten(-2) if len(site.channel_shape) == 2 else act


def save_mean_cache(cache: MeanCache, path: str | Path) -> Path:
    path = Path(path)
    tensors = {f"mean::{h}": t.contiguous() for h, t in cache.means.items()}
    tensors.update({f"bank::{h}": t.contiguous() for h, t in cache.bank.items()})
    metadata = {
        "format": CACHE_FORMAT_VERSION,
        "weights_hash": cache.weights_hash,
        "n_tokens": str(cache.n_tokens),
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return path


def load_mean_cache(path: str | Path) -> MeanCache:
    """Read a cache written by :func:`save_mean_cache` (SparseLensError if corrupt)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
            raw = {key: handle.get_tensor(key) for key in handle.keys()}
        if metadata.get("format") != CACHE_FORMAT_VERSION:
            raise ValueError(f"format {metadata.get('format')!r}, expected {CACHE_FORMAT_VERSION}")
        means = {k.split("::", 1)[1]: v for k, v in raw.items() if k.startswith("mean::")}
        bank = {k.split("::", 1)[1]: v for k, v in raw.items() if k.startswith("bank::")}
        return MeanCache(means, bank, int(metadata["n_tokens"]), str(metadata["weights_hash"]))
    except (SafetensorError, OSError, ValueError, KeyError) as error:
        raise SparseLensError(
            f"cannot read the mean cache ({error}); delete it to recompute", path=path
        ) from None


def pretraining_tokens(
    model: torch.nn.Module,
    model_dir: str | Path | None = None,
    n_tokens: int = MEAN_TOKENS,
    corpus: list[str] | None = None,
    progress: bool = True,
) -> Int[Tensor, "n_seq n_ctx"]:
    """Windows of ``n_ctx`` held-out pretraining tokens (about ``n_tokens`` in total).

    The corpus is ``corpus`` if given, else the one recorded in ``<model_dir>/training.json``
    (its ``train_config.corpus`` and ``heldout_fraction``), else the standard library. Tokens
    come from the data pipeline's token cache (:func:`sparse_lens.data.split_tokens`) with the
    model's own tokenizer; windows are :func:`sparse_lens.data.eval_batches`'s fixed ones, so
    the same model always gets the same tokens.
    """
    from sparse_lens.data import check_token_ids, eval_batches, load_corpus, split_tokens

    tokenizer = getattr(model, "tokenizer", None)
    if tokenizer is None:
        raise SparseLensError(
            "the model has no tokenizer, so its pretraining tokens cannot be rebuilt; pass a "
            "token tensor to compute_mean_cache instead",
            field="tokenizer",
        )
    heldout_fraction = HELDOUT_FRACTION
    sources = corpus
    provenance = Path(model_dir) / PROVENANCE_FILE if model_dir is not None else None
    if provenance is not None and provenance.is_file():
        try:
            train_config = json.loads(provenance.read_text()).get("train_config", {})
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise SparseLensError(f"not valid JSON ({error})", path=provenance) from None
        heldout_fraction = float(train_config.get("heldout_fraction", heldout_fraction))
        if sources is None:
            sources = list(train_config.get("corpus", [])) or None
    loaded = load_corpus(sources or None, heldout_fraction=heldout_fraction)
    if not loaded.heldout:
        raise SparseLensError("the corpus has no held-out file to take means over", field="corpus")
    stream = split_tokens(loaded, "heldout", tokenizer, progress=progress)
    n_ctx = model.cfg.n_ctx
    n_windows = max(1, n_tokens // n_ctx)
    windows = list(eval_batches(stream, batch_size=n_windows, n_ctx=n_ctx, max_windows=n_windows))
    tokens = torch.cat(windows)
    check_token_ids(tokens, model.cfg.d_vocab)
    return tokens


def mean_cache_for(
    model: torch.nn.Module,
    model_dir: str | Path | None,
    *,
    n_tokens: int = MEAN_TOKENS,
    tokens: Int[Tensor, "n_seq n_pos"] | None = None,
    corpus: list[str] | None = None,
    n_bank: int = DEFAULT_BANK_SIZE,
    recompute: bool = False,
    progress: bool = True,
) -> MeanCache:
    """The model's mean cache: loaded from ``<model_dir>/mean_cache.safetensors`` if that file
    has this model's weights hash, else computed and saved there.

    It is computed from ``tokens`` when given (always: explicit tokens mean "these tokens"),
    else from :func:`pretraining_tokens`; ``recompute`` ignores a saved file. A model directory
    that cannot be written to (a read-only install) keeps its cache under the user cache dir,
    keyed by the weights hash; so does a model shipped inside the package, which is read from
    but never written to.
    """
    from sparse_lens.data import cache_dir
    from sparse_lens.pretrained import is_shipped_dir

    digest = weights_hash(model)
    candidates = []
    if model_dir is not None:
        candidates.append(Path(model_dir) / MEAN_CACHE_FILE)
    candidates.append(cache_dir() / "mean_cache" / f"{digest[:24]}.safetensors")
    writable = candidates[1:] if model_dir is not None and is_shipped_dir(model_dir) else candidates
    for path in candidates if tokens is None and not recompute else ():
        if path.is_file():
            try:
                cache = load_mean_cache(path)
            except SparseLensError:
                continue  # corrupt: recompute and overwrite
            if cache.weights_hash == digest:
                cache.check_model(model, digest)
                cache.path = path
                return cache
    if tokens is None:
        tokens = pretraining_tokens(model, model_dir, n_tokens, corpus, progress=progress)
    cache = compute_mean_cache(model, tokens, n_bank=n_bank, progress=progress)
    for path in writable:
        try:
            save_mean_cache(cache, path)
            cache.path = path
            break
        except OSError as error:
            warnings.warn(f"could not save the mean cache to {path} ({error})", stacklevel=2)
    return cache


# --------------------------------------------------------------------------------------------
# Ablation modes


class Ablation:
    """What a masked-out node's activation becomes. Subclasses are registered by name.

    ``value(site, flat)`` returns the replacement for a [batch, pos, width] activation, shaped
    so it broadcasts against it. ``new_forward()`` is called at the start of every forward pass
    (from a hook on ``hook_embed``) for modes that draw per pass.
    """

    name: str = ""
    needs_cache: bool = False

    def __init__(self, cache: MeanCache | None = None, seed: int = 0):
        if self.needs_cache and cache is None:
            raise SparseLensError(f"{self.name} ablation needs a mean cache", field="ablation")
        self.cache = cache
        self.seed = seed

    def value(self, site: NodeSite, flat: Float[Tensor, "batch pos width"]) -> Tensor:
        raise NotImplementedError

    def new_forward(self) -> None:
        """Called once per forward pass; stateless modes ignore it."""


class MeanAblation(Ablation):
    """Frozen at the node's mean over pretraining tokens (after AbsTopK): the paper's choice."""

    name = "mean"
    needs_cache = True

    def value(self, site: NodeSite, flat: Float[Tensor, "batch pos width"]) -> Tensor:
        return self.cache.means[site.hook].to(flat.device, flat.dtype)


class ZeroAblation(Ablation):
    """Set to zero (no cache needed; a stronger intervention than the mean)."""

    name = "zero"

    def value(self, site: NodeSite, flat: Float[Tensor, "batch pos width"]) -> Tensor:
        return flat.new_zeros(())


class ResampleAblation(Ablation):
    """Replaced by the activation at a random pretraining (context, position) from the bank.

    One bank row per (batch, pos) is drawn per forward pass, shared by all sites (the bank's
    rows are aligned across sites), from a generator seeded once, so runs repeat exactly.
    """

    name = "resample"
    needs_cache = True

    def __init__(self, cache: MeanCache | None = None, seed: int = 0):
        super().__init__(cache, seed)
        if self.cache.n_bank == 0:
            raise SparseLensError("the mean cache has no resample bank; recompute it", field="bank")
        self.generator = torch.Generator().manual_seed(seed)
        self._rows: Tensor | None = None

    def new_forward(self) -> None:
        self._rows = None

    def value(self, site: NodeSite, flat: Float[Tensor, "batch pos width"]) -> Tensor:
        batch, n_pos = flat.shape[:2]
        if self._rows is None or tuple(self._rows.shape) != (batch, n_pos):
            self._rows = torch.randint(
                0, self.cache.n_bank, (batch, n_pos), generator=self.generator
            )
        return self.cache.bank[site.hook][self._rows].to(flat.device, flat.dtype)


def make_ablation(mode: str, cache: MeanCache | None = None, seed: int = 0) -> Ablation:
    """An :class:`Ablation` of the registered ``mode`` (:mod:`sparse_lens.circuits.registry`)."""
    return ablation_class(mode)(cache, seed)
