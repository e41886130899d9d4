"""Training from an exported token set, in bf16, under a time limit: the GPU route, on CPU.

A token set (scripts/export_tokens.py) must reproduce the corpus route exactly: the same
streams, so a model trained from it scores the same held-out loss when that is recomputed from
the corpus. bf16 autocast must reach the training forward and not the evaluation, and the time
guard must leave an evaluated, checkpointed, resumable run.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from test_trainer import (  # noqa: F401 (fixtures)
    REPO,
    private_cache,
    subprocess_env,
    write_corpus,
)

from sparse_lens.cli import main as cli_main
from sparse_lens.errors import SparseLensError
from sparse_lens.model import SparseTransformer
from sparse_lens.train import heldout_loss
from sparse_lens.train.config import TrainConfig, apply_overrides, load_preset
from sparse_lens.train.data import load_train_data
from sparse_lens.train.runner import train_from_config
from sparse_lens.train.token_set import MANIFEST_FILE, load_token_set
from sparse_lens.train.trainer import Callback

pytestmark = pytest.mark.usefixtures("one_thread")


def export_main():
    spec = importlib.util.spec_from_file_location(
        "export_tokens", REPO / "scripts/export_tokens.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus") / "src")


@pytest.fixture
def token_set(corpus, tmp_path):
    out = tmp_path / "tokens"
    code = export_main()(["--corpus", str(corpus), "--vocab-size", "300", "--out", str(out)])
    assert code == 0
    return out


def from_tokens(token_set, *overrides: str):
    """The tiny preset trained from the token set (no corpus)."""
    return apply_overrides(load_preset("tiny"), [f'tokens="{token_set}"', *overrides])


def test_token_set_holds_the_corpus_route_streams(corpus, token_set):
    direct = load_train_data([str(corpus)], 300, seed=0, progress=False)
    loaded = load_token_set(token_set, seed=0)
    assert np.array_equal(loaded.train_tokens, direct.train_tokens)
    assert np.array_equal(loaded.heldout_tokens, direct.heldout_tokens)
    assert loaded.train_tokens.dtype == np.uint16
    assert loaded.manifest_hash == direct.manifest_hash
    assert loaded.tokenizer_hash == direct.tokenizer_hash
    assert torch.equal(loaded.batch(3, 8, 64), direct.batch(3, 8, 64))


class Precisions(Callback):
    """Records whether autocast to bfloat16 is on in every forward, training or evaluation."""

    def on_train_start(self, trainer):
        self.training, self.evaluation = set(), set()

        def record(module, args, kwargs):
            on = torch.is_autocast_enabled("cpu") and (
                torch.get_autocast_dtype("cpu") == torch.bfloat16
            )
            (self.training if module.training else self.evaluation).add(on)

        trainer.model.register_forward_pre_hook(record, with_kwargs=True)


def test_bf16_time_guarded_run_from_tokens_matches_the_corpus_heldout_loss(
    corpus, token_set, tmp_path
):
    out = tmp_path / "run"
    precisions = Precisions()
    result = train_from_config(
        from_tokens(token_set, "steps=3", "precision=bf16", "eval_interval=100"),
        out,
        callbacks=[precisions],
        progress=False,
        max_minutes=30.0,
    )
    assert result.steps == 3 and not result.interrupted and not result.time_limited
    assert precisions.training == {True} and precisions.evaluation == {False}

    record = json.loads((out / "training.json").read_text())
    assert record["finished"] and record["train_config"]["precision"] == "bf16"
    assert record["corpus_manifest_hash"] == load_token_set(token_set, 0).manifest_hash
    model = SparseTransformer.from_pretrained(out)
    fresh = heldout_loss(model, [corpus], batch_size=8, n_batches=2)
    assert fresh.manifest_hash == record["corpus_manifest_hash"]
    assert fresh.loss == pytest.approx(record["final_heldout_loss"], abs=1e-5)

    # bf16 changes the arithmetic of training (so the option is not a no-op), not its recipe.
    fp32 = train_from_config(
        from_tokens(token_set, "steps=3", "eval_interval=100"), tmp_path / "fp32", progress=False
    )
    assert fp32.heldout_loss != result.heldout_loss
    assert fp32.heldout_loss == pytest.approx(result.heldout_loss, abs=0.05)


class SlowSteps(Callback):
    def on_step_end(self, trainer, step, metrics):
        time.sleep(0.3)


def test_time_limit_evaluates_checkpoints_and_resumes(token_set, tmp_path):
    out = tmp_path / "run"
    run = from_tokens(token_set, "steps=40", "eval_interval=100", "checkpoint_interval=100")
    # A limit of 1.2 s with iterations held to >= 0.3 s: the guard stops after a step or two,
    # keeping two iterations in hand (unguarded, the 40 would take over 12 s).
    result = train_from_config(run, out, callbacks=[SlowSteps()], progress=False, max_minutes=0.02)
    assert result.time_limited and result.interrupted and 1 <= result.steps <= 3
    assert result.wall_time <= 1.2
    assert result.history[-1]["step"] == result.steps  # evaluated at the stopping step

    state = json.loads((out / "trainer_state.json").read_text())
    record = json.loads((out / "training.json").read_text())
    assert state["step"] == result.steps and not record["finished"]
    assert record["final_heldout_loss"] == pytest.approx(result.heldout_loss)
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("stopped") == "time limit" for r in lines)

    resumed = train_from_config(None, out, resume=True, progress=False)
    assert resumed.steps == 40 and not resumed.interrupted
    assert json.loads((out / "training.json").read_text())["finished"]


def test_cli_time_limit_exits_0_and_says_unfinished(token_set, tmp_path, capsys):
    out = tmp_path / "run"
    code = cli_main(
        ["train", "--preset", "tiny", "--tokens", str(token_set), "--out", str(out)]
        + ["--steps", "100000", "--max-minutes", "0.01", "--no-progress"]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert "stopped by --max-minutes" in captured.err and "--resume" in captured.err
    assert "tokens/s" in captured.out
    assert not json.loads((out / "training.json").read_text())["finished"]


def test_token_set_errors_name_the_problem(corpus, token_set, tmp_path):
    with pytest.raises(SparseLensError, match="drop corpus") as info:
        apply_overrides(load_preset("tiny"), [f'tokens="{token_set}"', f'corpus=["{corpus}"]'])
    assert info.value.field == "tokens"
    with pytest.raises(SparseLensError, match="heldout_fraction 0.02"):
        load_token_set(token_set, 0, heldout_fraction=0.1)
    with pytest.raises(SparseLensError, match="not a token set"):
        load_token_set(tmp_path, 0)

    train = token_set / "train.npy"
    data = bytearray(train.read_bytes())
    data[-1] ^= 1
    train.write_bytes(bytes(data))
    with pytest.raises(SparseLensError, match="damaged"):
        load_token_set(token_set, 0)
    (token_set / MANIFEST_FILE).unlink()
    code = cli_main(
        ["train", "--preset", "tiny", "--tokens", str(token_set), "--out", str(tmp_path / "o")]
    )
    assert code == 2


def test_precision_and_time_limit_are_checked():
    with pytest.raises(SparseLensError) as info:
        TrainConfig(precision="fp16")
    assert info.value.field == "precision"
    with pytest.raises(SparseLensError, match="max-minutes"):
        train_from_config(load_preset("tiny"), "unused", max_minutes=0.0)


def test_gpu_script_dry_run_on_cpu(token_set, tmp_path, private_cache):  # noqa: F811 (fixture)
    """scripts/gpu_train.sh end to end with a CPU preset: calibrates, trains, reports, returns."""
    out, work = tmp_path / "out", tmp_path / "work"
    env = dict(
        subprocess_env(private_cache),
        PRESET="tiny",
        TOKENS=str(token_set),
        REQUIRE_CUDA="0",
        WORK=str(work),
        OUT=str(out),
        CALIBRATE_STEPS="10",
        MAX_MINUTES="2",
        PYTHON=sys.executable,
    )
    proc = subprocess.run(
        ["bash", str(REPO / "scripts/gpu_train.sh"), "--set", "threads=1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "tokens/s overall" in proc.stdout and "calibration" in proc.stderr
    returned = sorted(p.name for p in (out / "gpu").iterdir())
    assert returned == [
        "config.json",
        "metrics.jsonl",
        "model.safetensors",
        "tokenizer.json",
        "train.log",
        "training.json",
    ]
    assert json.loads((out / "gpu" / "training.json").read_text())["finished"]
    SparseTransformer.from_pretrained(out / "gpu")
