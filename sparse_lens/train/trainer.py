"""The training loop: one step is forward, backward, RMS-normalise, Adam, project, decay.

``Trainer(model, train_cfg, data, out_dir, callbacks).train()`` owns nothing but the loop; what
it trains on (``data``), where it writes (``out_dir``) and what else happens at each step
(``callbacks``) are seams. The order inside a step is the paper's recipe (REFERENCE section 2):

1. forward + backward on this rank's slice of global batch ``step`` (DDP all-reduces grads);
2. rescale the (all-reduced) gradient to global RMS 1;
3. Adam step at the sharkfin LR ``lr(step)``;
4. project every sparse target onto its top-k at ``L0(step)`` (skipped for dense runs);
5. decoupled weight decay on matrices and embeddings (after the projection, so zeros stay 0).

Robustness: held-out loss every ``eval_interval`` steps; a checkpoint every
``checkpoint_interval`` steps, at the end and on SIGINT / SIGTERM (the signal only raises a flag;
the loop saves after the current step and returns); a NaN/inf loss stops the run before the
optimizer touches the weights, keeping the last good checkpoint. Because batches are pure
functions of (seed, step) and the checkpoint holds the full optimizer and RNG state, a resumed
run on CPU ends with exactly the weights of an uninterrupted one. With a time limit
(``time_limit_s``, the CLI's ``--max-minutes``) the loop stops while the next step, a held-out
evaluation and a checkpoint still fit in it, evaluates, saves, and leaves a resumable run
(training.json ``finished: false``).

Speed options, all off by default: ``precision = "bf16"`` autocasts the training forward (and so
its backward) to bfloat16 while weights, Adam state, the projection and held-out evaluation stay
fp32, so held-out losses compare across precisions; ``compile = true`` runs the training forward
through ``torch.compile`` (the model that is evaluated and saved is the plain one).
"""

from __future__ import annotations

import inspect
import math
import signal
import threading
import time
from collections import deque
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from sparse_lens.errors import SparseLensError
from sparse_lens.train.checkpoint import (
    METRICS_FILE,
    append_metrics,
    has_checkpoint,
    load_checkpoint,
    recover,
    save_checkpoint,
    truncate_metrics,
)
from sparse_lens.train.config import TrainConfig
from sparse_lens.train.data import TrainData
from sparse_lens.train.distributed import DistEnv, all_reduce_sum, any_rank, barrier
from sparse_lens.train.optim import (
    DECAYED_KINDS,
    apply_weight_decay_,
    build_optimizer,
    normalize_grad_rms_,
    set_lr,
)
from sparse_lens.train.run_dir import checkpoint_bytes, claim_run_dir
from sparse_lens.train.schedules import Schedule
from sparse_lens.train.sparsifier import Sparsifier, sparsity_report


class TrainingDiverged(SparseLensError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""


class Callback:
    """Hooks into the loop; override any subset. All run on every rank, after the step."""

    def on_train_start(self, trainer: Trainer) -> None: ...

    def on_step_end(self, trainer: Trainer, step: int, metrics: dict[str, Any]) -> None: ...

    def on_eval(self, trainer: Trainer, step: int, heldout_loss: float) -> None: ...

    def on_checkpoint(self, trainer: Trainer, step: int) -> None: ...

    def on_train_end(self, trainer: Trainer, result: TrainResult) -> None: ...


@dataclass
class TrainResult:
    out_dir: Path
    steps: int
    tokens_seen: int
    train_loss: float | None
    heldout_loss: float | None
    wall_time: float
    interrupted: bool = False
    time_limited: bool = False
    """Stopped by the time limit (then also ``interrupted`` unless the last step was reached)."""
    rank: int = 0
    """This process's rank (only rank 0 reports)."""
    history: list[dict[str, Any]] = field(default_factory=list)
    """Held-out evaluations of this process: ``{"step": s, "heldout_loss": x}``."""


class Trainer:
    """Trains ``model`` on ``data`` with the recipe in ``train_cfg``, writing into ``out_dir``.

    ``resume=True`` restores the checkpoint in ``out_dir`` before training continues.
    ``run_info`` is extra provenance recorded in training.json (e.g. the run config source).
    ``time_limit_s`` bounds this call's ``train()`` in wall-clock seconds (see the module doc).
    """

    def __init__(
        self,
        model: nn.Module,
        train_cfg: TrainConfig,
        data: TrainData,
        out_dir: str | Path,
        callbacks: Sequence[Callback] = (),
        *,
        env: DistEnv | None = None,
        resume: bool = False,
        progress: bool = True,
        run_info: dict[str, Any] | None = None,
        time_limit_s: float | None = None,
    ):
        from sparse_lens.model import sparse_targets

        self.env = env or DistEnv(device=next(model.parameters()).device)
        self.model = model.to(self.env.device)
        self.cfg = train_cfg
        self.data = data
        self.out_dir = Path(out_dir)
        self.callbacks = list(callbacks)
        self.resume = resume
        self.progress = progress
        self.run_info = dict(run_info or {})
        if time_limit_s is not None and time_limit_s <= 0:
            raise SparseLensError(f"must be positive, got {time_limit_s}", field="time_limit_s")
        self.time_limit_s = time_limit_s
        self.n_ctx = int(model.cfg.n_ctx)
        if train_cfg.batch_size % self.env.world_size:
            raise SparseLensError(
                f"batch_size {train_cfg.batch_size} does not split evenly over "
                f"{self.env.world_size} processes",
                field="batch_size",
            )
        self.schedule = Schedule(
            total_steps=train_cfg.steps,
            lr=train_cfg.lr,
            l0_target=train_cfg.l0_target,
            anneal_start=train_cfg.anneal_start,
            anneal_end=train_cfg.anneal_end,
            warmup_frac=train_cfg.warmup_frac,
        )
        self.targets = sparse_targets(model)
        self.sparsifier = Sparsifier(
            self.targets, train_cfg.min_per_unit, train_cfg.embed_density_factor
        )
        self.decayed = [t.param for t in self.targets if t.kind in DECAYED_KINDS]
        self.param_names = [n for n, p in model.named_parameters() if p.requires_grad]
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.optimizer = build_optimizer(
            model, train_cfg.lr, betas=(train_cfg.beta1, train_cfg.beta2), eps=train_cfg.adam_eps
        )
        self.ddp: nn.Module = model
        if self.env.distributed:
            device_ids = [self.env.device.index] if self.env.device.type == "cuda" else None
            # Buffers (final-logits bias, a fixed bigram table) never change: no per-step sync.
            ddp_params = inspect.signature(nn.parallel.DistributedDataParallel).parameters
            sync = (
                "forward_sync_buffers"
                if "forward_sync_buffers" in ddp_params
                else "broadcast_buffers"
            )
            self.ddp = nn.parallel.DistributedDataParallel(
                model, device_ids=device_ids, **{sync: False}
            )
        self.train_forward = torch.compile(self.ddp) if train_cfg.compile else self.ddp
        self.step = 0
        self.tokens_seen = 0
        self.elapsed = 0.0
        self.recent_losses: deque[float] = deque(maxlen=train_cfg.log_interval)
        self.heldout_loss: float | None = None
        self.history: list[dict[str, Any]] = []
        self.timers = {"step": 0.0, "projection": 0.0}
        self._stop_signal: int | None = None
        self._last_checkpoint = -1
        # Durations of the latest evaluation and save: what the time guard reserves for them.
        self._latest_s = {"eval": 0.0, "save": 0.0}

    # ------------------------------------------------------------------ public API
    @property
    def tokens_per_step(self) -> int:
        return self.cfg.batch_size * self.n_ctx

    def request_stop(self, signum: int | None = None) -> None:
        """Stop after the current step, saving a checkpoint (what SIGINT / SIGTERM do)."""
        self._stop_signal = signum if signum is not None else 0

    def train(self) -> TrainResult:
        """Run (or continue) training to ``train_cfg.steps``; returns losses and counts.

        The output directory is claimed first (:func:`~sparse_lens.train.run_dir.claim_run_dir`):
        writable, room for a checkpoint, and no other trainer on it.
        """
        claim = ExitStack()
        if self.env.is_main:
            n_weights = sum(p.numel() for p in self.params)
            claim.enter_context(claim_run_dir(self.out_dir, checkpoint_bytes(n_weights)))
        with claim:
            return self._train()

    def _train(self) -> TrainResult:
        if self.resume:
            self._restore()
        elif any_rank(self.env, self.env.is_main and has_checkpoint(self.out_dir)):
            raise SparseLensError(
                "already holds a training checkpoint; pass --resume to continue it or choose "
                "another --out",
                path=self.out_dir,
            )
        else:
            torch.manual_seed(self.cfg.seed)
            if self.env.is_main:  # a log left by a run that died before its first checkpoint
                (self.out_dir / METRICS_FILE).unlink(missing_ok=True)
        start_step = self.step
        for callback in self.callbacks:
            callback.on_train_start(self)
        previous = self._install_signal_handlers()
        bar = tqdm(
            total=self.cfg.steps,
            initial=start_step,
            desc="train",
            unit="step",
            disable=not (self.progress and self.env.is_main),
            dynamic_ncols=True,
        )
        interrupted = time_limited = False
        call_start = time.perf_counter()
        window_start, window_tokens = call_start, 0
        last_check = call_start  # the time guard's: one loop iteration is what the next costs
        run_start = time.perf_counter() - self.elapsed
        tokens_per_s = 0.0
        try:
            while self.step < self.cfg.steps:
                metrics = self._train_step()
                window_tokens += self.tokens_per_step
                self.elapsed = time.perf_counter() - run_start
                done = self.step
                if done % self.cfg.log_interval == 0 or done == self.cfg.steps:
                    now = time.perf_counter()
                    tokens_per_s = window_tokens / max(now - window_start, 1e-9)
                    window_start, window_tokens = now, 0
                    self._log(
                        {**metrics, "loss": self._recent_loss(), "tokens_per_s": tokens_per_s}
                    )
                if done % self.cfg.eval_interval == 0 or done == self.cfg.steps:
                    self.evaluate_and_log()
                for callback in self.callbacks:
                    callback.on_step_end(self, done, metrics)
                bar.update(1)
                bar.set_postfix(
                    loss=f"{metrics['loss']:.3f}",
                    heldout="-" if self.heldout_loss is None else f"{self.heldout_loss:.3f}",
                    L0=f"{metrics['l0']:.4f}",
                    tok_s=f"{tokens_per_s:,.0f}",
                    refresh=False,
                )
                now = time.perf_counter()
                iteration, last_check = now - last_check, now
                time_limited = self.time_limit_s is not None and any_rank(
                    self.env, self._out_of_time(now - call_start, iteration)
                )
                if time_limited:
                    self._log({"step": done, "stopped": "time limit", "limit_s": self.time_limit_s})
                    if not self.history or self.history[-1]["step"] != done:
                        self.evaluate_and_log()  # the unfinished run's last held-out loss
                stop = time_limited or any_rank(self.env, self._stop_signal is not None)
                if stop or done % self.cfg.checkpoint_interval == 0 or done == self.cfg.steps:
                    self.save()
                if stop:
                    interrupted = done < self.cfg.steps
                    break
        finally:
            bar.close()
            self._restore_signal_handlers(previous)
        result = TrainResult(
            out_dir=self.out_dir,
            steps=self.step,
            tokens_seen=self.tokens_seen,
            train_loss=self._recent_loss(),
            heldout_loss=self.heldout_loss,
            wall_time=self.elapsed,
            interrupted=interrupted,
            time_limited=time_limited,
            rank=self.env.rank,
            history=list(self.history),
        )
        for callback in self.callbacks:
            callback.on_train_end(self, result)
        return result

    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean next-token loss on the fixed held-out windows (all ranks together)."""
        was_training = self.model.training
        self.model.eval()
        total, count = 0.0, 0
        for tokens in self.data.eval_batches(
            self.cfg.batch_size,
            self.n_ctx,
            self.cfg.eval_batches,
            self.env.rank,
            self.env.world_size,
        ):
            loss = self.model(tokens.to(self.env.device), return_type="loss")
            total += float(loss) * tokens.shape[0]
            count += tokens.shape[0]
        total, count = all_reduce_sum(self.env, [total, float(count)])
        self.model.train(was_training)
        return total / max(count, 1.0)

    def evaluate_and_log(self) -> float:
        started = time.perf_counter()
        loss = self.evaluate()
        self._latest_s["eval"] = time.perf_counter() - started
        self.heldout_loss = loss
        self.history.append({"step": self.step, "heldout_loss": loss})
        self._log({"step": self.step, "heldout_loss": loss, "tokens": self.tokens_seen})
        for callback in self.callbacks:
            callback.on_eval(self, self.step, loss)
        return loss

    def save(self) -> None:
        """Checkpoint into ``out_dir`` (rank 0 writes; all ranks wait for it)."""
        if self._last_checkpoint == self.step:
            return
        started = time.perf_counter()
        self._check_ranks_agree()
        if self.env.is_main:
            try:
                save_checkpoint(
                    self.out_dir,
                    self.model,
                    self.optimizer,
                    self.param_names,
                    self._state(),
                    self.provenance(),
                )
            except OSError as error:  # a full or read-only disk: the last checkpoint is intact
                kept = f"step {self._last_checkpoint}" if self._last_checkpoint >= 0 else "none"
                raise SparseLensError(
                    f"cannot write the step {self.step} checkpoint ({error.strerror or error}); "
                    f"the previous checkpoint ({kept}) is kept: free space and --resume",
                    path=self.out_dir,
                ) from None
        barrier(self.env)
        self._last_checkpoint = self.step
        self._latest_s["save"] = time.perf_counter() - started
        for callback in self.callbacks:
            callback.on_checkpoint(self, self.step)

    @torch.no_grad()
    def _check_ranks_agree(self) -> None:
        """Data-parallel ranks must hold identical weights (the projection runs on each)."""
        if not self.env.distributed:
            return
        checksum = torch.stack([p.detach().double().abs().sum() for p in self.params]).sum()
        low, high = checksum.clone(), checksum.clone()
        torch.distributed.all_reduce(low, op=torch.distributed.ReduceOp.MIN)
        torch.distributed.all_reduce(high, op=torch.distributed.ReduceOp.MAX)
        if not torch.equal(low, high):
            raise RuntimeError(
                f"data-parallel ranks diverged at step {self.step} ({low} vs {high})"
            )

    def provenance(self) -> dict[str, Any]:
        """What training.json records: where the model came from and how it did."""
        from sparse_lens import __version__

        return {
            **self.run_info,
            "finished": self.step >= self.cfg.steps,
            "corpus_manifest_hash": self.data.manifest_hash,
            "corpus": self.data.description,
            "tokenizer_hash": self.data.tokenizer_hash,
            "model_config": self.model.cfg.to_dict(),
            "train_config": self.cfg.to_dict(),
            "steps": self.step,
            "total_steps": self.cfg.steps,
            "tokens_seen": self.tokens_seen,
            "final_train_loss": self._recent_loss(),
            "final_heldout_loss": self.heldout_loss,
            "wall_time_s": round(self.elapsed, 3),
            "world_size": self.env.world_size,
            "device": str(self.env.device),
            "dense": self.cfg.dense,
            "nonzero_fraction": sparsity_report(self.targets),
            "sparse_lens_version": __version__,
            "torch_version": torch.__version__,
        }

    # ------------------------------------------------------------------ one step
    def _train_step(self) -> dict[str, Any]:
        step = self.step
        lr = self.schedule.learning_rate(step)
        l0 = self.schedule.l0(step)
        started = time.perf_counter()
        tokens = self.data.batch(
            step, self.cfg.batch_size, self.n_ctx, self.env.rank, self.env.world_size
        )
        with torch.autocast(
            self.env.device.type, dtype=torch.bfloat16, enabled=self.cfg.precision == "bf16"
        ):
            loss = self.train_forward(tokens.to(self.env.device), return_type="loss")
        (mean_loss,) = all_reduce_sum(self.env, [float(loss.detach())])
        mean_loss /= self.env.world_size
        if not math.isfinite(mean_loss):
            self._diverged(step, mean_loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_rms = normalize_grad_rms_(self.params) if self.cfg.grad_rms_norm else float("nan")
        if self.cfg.grad_rms_norm and not math.isfinite(grad_rms):
            self._diverged(step, grad_rms, what="gradient RMS")
        set_lr(self.optimizer, lr)
        self.optimizer.step()
        projection = 0.0
        if not self.cfg.dense:
            projected = time.perf_counter()
            self.sparsifier.project(l0)
            projection = time.perf_counter() - projected
        apply_weight_decay_(self.decayed, lr, self.cfg.weight_decay)
        self.timers["step"] += time.perf_counter() - started
        self.timers["projection"] += projection
        self.step = step + 1
        self.tokens_seen += self.tokens_per_step
        self.recent_losses.append(mean_loss)
        return {
            "step": self.step,
            "loss": mean_loss,
            "lr": lr,
            "l0": l0,
            "grad_rms": grad_rms,
            "tokens": self.tokens_seen,
            "projection_s": projection,
        }

    def _out_of_time(self, elapsed: float, iteration: float) -> bool:
        """Whether another loop iteration, then an evaluation and a save, might overrun the time
        limit (the iteration counted twice: iterations vary)."""
        reserve = 2 * iteration + self._latest_s["eval"] + self._latest_s["save"]
        return elapsed + reserve > self.time_limit_s

    def _diverged(self, step: int, value: float, what: str = "loss") -> None:
        kept = (
            f"the last good checkpoint (step {self._last_checkpoint}) is kept in {self.out_dir}"
            if self._last_checkpoint >= 0
            else "no checkpoint was written yet"
        )
        if self.env.is_main:
            self._log({"step": step, "diverged": what, "value": str(value)})
        raise TrainingDiverged(
            f"training diverged: {what} is {value} at step {step}; {kept}. Lower lr (now "
            f"{self.cfg.lr}) or check the data",
            field="lr",
        )

    # ------------------------------------------------------------------ state
    def _recent_loss(self) -> float | None:
        return sum(self.recent_losses) / len(self.recent_losses) if self.recent_losses else None

    def _state(self) -> dict[str, Any]:
        return {
            "format": 1,
            "step": self.step,
            "tokens_seen": self.tokens_seen,
            "elapsed_s": self.elapsed,
            "recent_losses": list(self.recent_losses),
            "heldout_loss": self.heldout_loss,
            "history": self.history,
            "train_config": self.cfg.to_dict(),
            "model_config": self.model.cfg.to_dict(),
            "run_info": self.run_info,
            "corpus_manifest_hash": self.data.manifest_hash,
            "tokenizer_hash": self.data.tokenizer_hash,
        }

    def _restore(self) -> None:
        state = load_checkpoint(self.out_dir, self.model, self.optimizer, self.param_names)
        for key, ours in (
            ("corpus_manifest_hash", self.data.manifest_hash),
            ("tokenizer_hash", self.data.tokenizer_hash),
        ):
            if state.get(key) != ours:
                raise SparseLensError(
                    f"the checkpoint was trained with a different {key.split('_')[0]} "
                    f"({key} {str(state.get(key))[:12]} vs {ours[:12]}); resume with the same "
                    "--corpus",
                    path=self.out_dir,
                    field=key,
                )
        self.step = int(state["step"])
        self.tokens_seen = int(state["tokens_seen"])
        self.elapsed = float(state.get("elapsed_s", 0.0))
        self.recent_losses.extend(state.get("recent_losses", []))
        self.heldout_loss = state.get("heldout_loss")
        self.history = list(state.get("history", []))
        self._last_checkpoint = self.step
        barrier(self.env)  # every rank has read the checkpoint before rank 0 touches it
        if self.env.is_main:
            recover(self.out_dir)
            truncate_metrics(self.out_dir, self.step)
        barrier(self.env)

    def _log(self, record: dict[str, Any]) -> None:
        if self.env.is_main:
            clean = {
                k: (None if isinstance(v, float) and not math.isfinite(v) else v)
                for k, v in record.items()
            }
            append_metrics(self.out_dir, clean)

    # ------------------------------------------------------------------ signals
    def _install_signal_handlers(self) -> dict[int, Any]:
        """SIGINT / SIGTERM set a flag; a second signal gets the previous behaviour."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous: dict[int, Any] = {}

        def handler(signum, frame):
            self.request_stop(signum)
            self._restore_signal_handlers(previous)

        for signum in (signal.SIGINT, signal.SIGTERM):
            previous[signum] = signal.signal(signum, handler)
        return previous

    @staticmethod
    def _restore_signal_handlers(previous: dict[int, Any]) -> None:
        for signum, old in previous.items():
            signal.signal(signum, old)
