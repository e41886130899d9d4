"""``train_from_config``: a run config in, a trained checkpoint directory out.

The thin runner the CLI calls (and notebooks can): it joins the torchrun process group if there
is one, reads the corpus and tokenizer, builds the model and hands everything to
:class:`~sparse_lens.train.trainer.Trainer`. With ``resume=True`` the architecture and recipe come
from the checkpoint (explicit overrides still apply, e.g. more steps; a preset or config given
again must describe the same architecture), and the tokenizer is the checkpoint's own, so the
resumed run sees exactly the same token ids. With ``train.tokens`` set the data come from that
token set (:mod:`~sparse_lens.train.token_set`) instead of the corpus.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import TYPE_CHECKING

from sparse_lens.errors import SparseLensError
from sparse_lens.train.config import RunConfig, TrainConfig, apply_overrides
from sparse_lens.train.trainer import Callback, Trainer, TrainResult

if TYPE_CHECKING:
    from torch import nn


def checkpoint_run_config(out_dir: str | Path) -> RunConfig:
    """The run config a checkpoint was trained with (from its trainer_state.json)."""
    from sparse_lens.config import SparseConfig
    from sparse_lens.io.checkpoint import resolve_checkpoint_dir
    from sparse_lens.train.checkpoint import STATE_FILE, read_state

    state = read_state(out_dir)
    path = resolve_checkpoint_dir(Path(out_dir)) / STATE_FILE
    model = dict(state["model_config"])
    SparseConfig.from_dict(model, source=path)  # a damaged architecture, named before any work
    info = state.get("run_info", {})
    return RunConfig(
        model=model,
        train=TrainConfig.from_dict(state["train_config"], source=path),
        source=str(info.get("source", out_dir)),
    )


def train_from_config(
    run: RunConfig | None,
    out_dir: str | Path,
    *,
    resume: bool = False,
    overrides: Sequence[str] = (),
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
    max_minutes: float | None = None,
    wrap_model: Callable[[nn.Module], nn.Module] | None = None,
) -> TrainResult:
    """Train the model ``run`` describes into ``out_dir`` (or continue it with ``resume``).

    ``run`` may be None when resuming: the checkpoint's own config is used. ``overrides`` are
    ``key=value`` strings applied last (see :func:`~sparse_lens.train.config.apply_overrides`).
    ``max_minutes`` stops the training loop in time to checkpoint within that many minutes of
    wall time (a resumable, unfinished run; see :class:`~sparse_lens.train.trainer.Trainer`).
    ``wrap_model`` turns the freshly built model into what the trainer trains (the joint bridge
    route, :mod:`sparse_lens.bridges.joint`, wraps it with its bridges and a frozen dense model).
    """
    import torch

    from sparse_lens.io.checkpoint import resolve_checkpoint_dir
    from sparse_lens.model import SparseTransformer
    from sparse_lens.train.data import load_train_data
    from sparse_lens.train.distributed import barrier, init_distributed, shutdown_distributed
    from sparse_lens.train.run_dir import claim_run_dir
    from sparse_lens.train.token_set import load_token_set

    out_dir = Path(out_dir)
    tokenizer = None
    if resume:
        # The checkpoint's own config (which already includes the original run's overrides),
        # so a resumed run cannot silently change recipe; a preset / config given again is
        # only checked against it. Explicit overrides (e.g. more steps) still apply.
        saved = checkpoint_run_config(out_dir)
        if run is not None:
            _check_same_architecture(apply_overrides(run, list(overrides)), saved)
        run = saved
        tokenizer = resolve_checkpoint_dir(out_dir) / "tokenizer.json"
    elif run is None:
        raise SparseLensError(
            "no run config given (pass a preset or a config file)", field="preset"
        )
    if overrides:
        run = apply_overrides(run, list(overrides))
    if max_minutes is not None and max_minutes <= 0:
        raise SparseLensError(f"must be positive, got {max_minutes}", field="max-minutes")

    if run.train.threads:
        torch.set_num_threads(run.train.threads)
    env = init_distributed(run.train.device)
    claim = ExitStack()
    try:
        if env.is_main:  # before the data are prepared: a second trainer stops at once
            claim.enter_context(claim_run_dir(out_dir))
        if env.distributed and env.rank != 0:
            barrier(env)  # rank 0 trains the tokenizer and tokenizes the corpus first
        if run.train.tokens:  # its tokenizer must be the checkpoint's: Trainer checks hashes
            data = load_token_set(
                run.train.tokens, run.train.seed, heldout_fraction=run.train.heldout_fraction
            )
        else:
            data = load_train_data(
                run.train.corpus,
                run.train.vocab_size,
                run.train.seed,
                heldout_fraction=run.train.heldout_fraction,
                tokenizer=tokenizer if tokenizer is not None else (run.train.tokenizer or None),
                progress=progress and env.is_main,
            )
        if env.distributed and env.rank == 0:
            barrier(env)
        if env.is_main and progress:
            print(f"sparse-lens train: {data.description}", file=sys.stderr)
        cfg = run.model_config(data.tokenizer.get_vocab_size())
        cfg.device = str(env.device)
        data.check(cfg.n_ctx, cfg.d_vocab)
        torch.manual_seed(run.train.seed)
        model = SparseTransformer(cfg, tokenizer=data.tokenizer, seed=run.train.seed)
        if wrap_model is not None:
            model = wrap_model(model)
        trainer = Trainer(
            model,
            run.train,
            data,
            out_dir,
            callbacks,
            env=env,
            resume=resume,
            progress=progress,
            run_info={"source": run.source},
            time_limit_s=None if max_minutes is None else 60.0 * max_minutes,
        )
        return trainer.train()
    finally:
        claim.close()
        shutdown_distributed(env)


def _check_same_architecture(run: RunConfig, saved: RunConfig) -> None:
    d_vocab = saved.model.get("d_vocab", 2048)
    ours = run.model_config(d_vocab).to_dict()
    theirs = saved.model_config(d_vocab).to_dict()
    changed = sorted(k for k in ours if ours[k] != theirs.get(k))
    if changed:
        raise SparseLensError(
            f"the checkpoint's architecture differs from this config in {changed}; resume "
            "without --preset/--config to use the checkpoint's own",
            field=changed[0],
        )
