"""The trainer end to end on the `tiny` preset: loss goes down, every step's projection is exact,
resume is bit-exact, SIGTERM saves, divergence keeps the last good checkpoint, CLI errors exit 2.

Runs on a small synthetic corpus of Python files written into a temp dir, with a 300-token
tokenizer trained on it, and a private cache dir, so nothing depends on the machine's stdlib.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from sparse_lens.cli import main as cli_main
from sparse_lens.errors import SparseLensError
from sparse_lens.model import SparseTransformer
from sparse_lens.train.config import apply_overrides, load_preset
from sparse_lens.train.runner import train_from_config
from sparse_lens.train.trainer import Callback, TrainingDiverged

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------ fixtures

NAMES = ["items", "total", "count", "value", "result", "key", "node", "path", "line", "data"]
FUNCS = ["load", "parse", "render", "update", "visit", "merge", "split", "clean", "walk", "scan"]


def synthetic_module(rng: random.Random) -> str:
    """A small, plausible Python module (loops, dicts, strings, classes)."""
    parts = ['"""Generated module for trainer tests."""\n', "import os\nimport sys\n\n"]
    for _ in range(rng.randint(3, 6)):
        func, a, b = rng.choice(FUNCS), rng.choice(NAMES), rng.choice(NAMES)
        quote = rng.choice(["'", '"'])
        body = rng.choice(
            [
                f"    for {a} in {b}:\n        if {a} is None:\n            continue\n"
                f"        print({quote}{func}{quote}, {a})\n    return {b}\n",
                f"    {a} = {{}}\n    for i, {b} in enumerate(range(10)):\n"
                f"        {a}[i] = {b} * 2\n    return {a}\n",
                f"    with open({quote}{func}.txt{quote}) as f:\n        {a} = f.read()\n"
                f"    return {a}.split({quote},{quote})\n",
                f"    while {a}:\n        {a} = {a}[1:]\n    return len({b})\n",
            ]
        )
        parts.append(f"def {func}_{rng.randint(0, 99)}({a}, {b}=None):\n{body}\n\n")
    cls = rng.choice(["Parser", "Walker", "Store", "Cache"])
    parts.append(
        f"class {cls}:\n    def __init__(self, {NAMES[0]}, {NAMES[1]}):\n"
        f"        self.{NAMES[0]} = {NAMES[0]}\n        self.{NAMES[1]} = {NAMES[1]}\n\n"
        f'    def __repr__(self):\n        return f"{cls}({{self.{NAMES[0]}!r}})"\n'
    )
    return "".join(parts)


def write_corpus(directory: Path, n_files: int = 30, seed: int = 0) -> Path:
    rng = random.Random(seed)
    directory.mkdir(parents=True, exist_ok=True)
    for i in range(n_files):
        (directory / f"module_{i:02d}.py").write_text(synthetic_module(rng))
    return directory


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "src")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(autouse=True)
def private_cache(tmp_path_factory, monkeypatch):
    cache = tmp_path_factory.getbasetemp() / "sparse-lens-cache"
    monkeypatch.setenv("SPARSE_LENS_CACHE", str(cache))
    return cache


def tiny_run(corpus: Path, *overrides: str):
    """The tiny preset on the test corpus; overrides keep each test at a few seconds."""
    return apply_overrides(load_preset("tiny"), [f'corpus=["{corpus}"]', *overrides])


def subprocess_env(cache: Path) -> dict[str, str]:
    env = dict(os.environ, SPARSE_LENS_CACHE=str(cache), OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ------------------------------------------------------------------------------ tests


class InitialLoss(Callback):
    def on_train_start(self, trainer):
        self.loss = trainer.evaluate()


def test_tiny_run_lowers_heldout_loss(corpus, tmp_path):
    initial = InitialLoss()
    out = tmp_path / "run"
    result = train_from_config(tiny_run(corpus), out, callbacks=[initial], progress=False)
    assert result.steps == 40 and not result.interrupted
    assert result.heldout_loss < initial.loss - 0.5
    assert [h["step"] for h in result.history] == [10, 20, 30, 40]

    provenance = json.loads((out / "training.json").read_text())
    for key in (
        "corpus_manifest_hash",
        "tokenizer_hash",
        "model_config",
        "train_config",
        "steps",
        "tokens_seen",
        "final_train_loss",
        "final_heldout_loss",
        "wall_time_s",
    ):
        assert provenance[key] is not None, key
    assert provenance["finished"] and provenance["steps"] == 40
    assert provenance["tokens_seen"] == 40 * 8 * 64
    assert provenance["final_heldout_loss"] == pytest.approx(result.heldout_loss)

    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "heldout_loss" in r] == [10, 20, 30, 40]
    assert all("tokens_per_s" in r and "l0" in r for r in records if "loss" in r)

    model = SparseTransformer.from_pretrained(out)  # the out dir is a model directory
    assert model.tokenizer is not None and model.cfg.d_vocab == model.tokenizer.get_vocab_size()
    w = model.blocks[0].mlp.W_in
    assert int(torch.count_nonzero(w)) == round(0.25 * w.numel())


class ProjectionCheck(Callback):
    """After every step: each target holds min(scheduled k, what it had) nonzeros; units >= 4."""

    def on_train_start(self, trainer):
        self.checked = 0
        self.sparse_steps = 0
        project = trainer.sparsifier.project

        def recording_project(l0):
            self.before = {t.name: int(torch.count_nonzero(t.param)) for t in trainer.targets}
            self.l0 = l0
            return project(l0)

        trainer.sparsifier.project = recording_project

    def on_step_end(self, trainer, step, metrics):
        assert metrics["l0"] == self.l0
        for target in trainer.targets:
            k = trainer.sparsifier.budget(target, self.l0)
            floor = 0
            if target.unit_rows is not None:
                n_units, fan = target.unit_rows(target.param).shape
                floor = n_units * min(4, fan)
                per_unit = target.unit_rows(target.param.detach() != 0).sum(1)
                assert int(per_unit.min()) >= 4, target.name
            expected = min(max(k, floor), self.before[target.name])
            assert int(torch.count_nonzero(target.param)) == expected, (step, target.name)
            self.checked += 1
        self.sparse_steps += self.l0 < 1.0


def test_every_step_projects_exactly(corpus, tmp_path):
    check = ProjectionCheck()
    run = tiny_run(corpus, "steps=12", "l0_target=0.05", "anneal_end=0.5", "eval_interval=100")
    train_from_config(run, tmp_path / "run", callbacks=[check], progress=False)
    assert check.sparse_steps == 12 and check.checked == 12 * 14  # 14 targets in one layer
    assert check.l0 == pytest.approx(0.05)


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, step, metrics):
        if step == self.step:
            trainer.request_stop()


def test_resume_is_bit_exact(corpus, tmp_path):
    overrides = ("steps=16", "checkpoint_interval=5", "eval_interval=4", "log_interval=2")
    straight = train_from_config(tiny_run(corpus, *overrides), tmp_path / "a", progress=False)
    assert straight.steps == 16

    first = train_from_config(
        tiny_run(corpus, *overrides), tmp_path / "b", callbacks=[StopAt(8)], progress=False
    )
    assert first.interrupted and first.steps == 8
    state = json.loads((tmp_path / "b" / "trainer_state.json").read_text())
    assert state["step"] == 8
    resumed = train_from_config(None, tmp_path / "b", resume=True, progress=False)
    assert resumed.steps == 16 and not resumed.interrupted

    a = SparseTransformer.from_pretrained(tmp_path / "a").state_dict()
    b = SparseTransformer.from_pretrained(tmp_path / "b").state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    assert resumed.heldout_loss == straight.heldout_loss
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    ]
    straight_steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()
    ]
    assert steps == straight_steps  # nothing logged twice or lost across the restart


class Poison(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, trainer, step, metrics):
        if step == self.step:
            with torch.no_grad():
                trainer.model.blocks[0].mlp.W_in.fill_(float("nan"))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(corpus, tmp_path):
    out = tmp_path / "run"
    run = tiny_run(corpus, "steps=10", "checkpoint_interval=2", "eval_interval=100")
    with pytest.raises(TrainingDiverged, match="step 5.*last good checkpoint \\(step 4\\)"):
        train_from_config(run, out, callbacks=[Poison(5)], progress=False)
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["step"] == 4
    model = SparseTransformer.from_pretrained(out)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_refuses_to_overwrite_a_run_without_resume(corpus, tmp_path):
    run = tiny_run(corpus, "steps=2", "eval_interval=100")
    train_from_config(run, tmp_path / "run", progress=False)
    with pytest.raises(SparseLensError, match="--resume"):
        train_from_config(run, tmp_path / "run", progress=False)


def test_dense_run_skips_projection(corpus, tmp_path):
    run = tiny_run(corpus, "steps=4", "l0_target=1.0", "eval_interval=100")
    train_from_config(run, tmp_path / "run", progress=False)
    model = SparseTransformer.from_pretrained(tmp_path / "run")
    w = model.blocks[0].attn.W_Q
    assert int(torch.count_nonzero(w)) == w.numel()
    info = json.loads((tmp_path / "run" / "training.json").read_text())
    assert info["dense"] is True


def test_sigterm_saves_and_resume_finishes(corpus, tmp_path, private_cache):
    out = tmp_path / "run"
    args = [
        sys.executable,
        "-m",
        "sparse_lens",
        "train",
        "--preset",
        "tiny",
        "--out",
        str(out),
        "--corpus",
        str(corpus),
        "--steps",
        "400",
        "--no-progress",
        "--set",
        "checkpoint_interval=5",
        "--set",
        "log_interval=1",
        "--set",
        "eval_interval=50",
    ]
    env = subprocess_env(private_cache)
    proc = subprocess.Popen(
        args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    metrics = out / "metrics.jsonl"
    deadline = time.monotonic() + 240
    seen = 0
    while time.monotonic() < deadline and proc.poll() is None:
        if metrics.is_file():
            lines = metrics.read_text().splitlines()
            steps = [json.loads(line)["step"] for line in lines if line.strip().endswith("}")]
            seen = max(steps, default=0)
            if seen >= 12:
                break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted at step" in stderr
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["step"] >= seen - 5  # at most one checkpoint interval lost (here: none)

    finish = subprocess.run(
        args[:-6]
        + [
            "--steps",
            str(state["step"] + 6),
            "--resume",
            "--set",
            "checkpoint_interval=5",
            "--set",
            "log_interval=1",
            "--set",
            "eval_interval=50",
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert finish.returncode == 0, finish.stderr
    info = json.loads((out / "training.json").read_text())
    assert info["finished"] and info["steps"] == state["step"] + 6


@pytest.mark.parametrize(
    "make_args,message",
    [
        (lambda c, t: ["--preset", "tiny", "--corpus", str(t / "missing")], "does not exist"),
        (lambda c, t: ["--preset", "tiny", "--corpus", str(t / "empty")], "empty"),
        (lambda c, t: ["--preset", "nope", "--corpus", str(c)], "unknown preset"),
        (lambda c, t: ["--preset", "tiny", "--corpus", str(c), "--set", "bogus=1"], "bogus"),
        (lambda c, t: ["--config", str(t / "bad.toml"), "--corpus", str(c)], "stepz"),
        (
            lambda c, t: ["--preset", "tiny", "--corpus", str(c), "--resume"],
            "no training checkpoint",
        ),
    ],
)
def test_cli_errors_exit_2_with_one_line(corpus, tmp_path, capsys, make_args, message):
    (tmp_path / "empty").mkdir()
    (tmp_path / "bad.toml").write_text("[train]\nstepz = 3\n")
    code = cli_main(
        ["train", "--out", str(tmp_path / "out"), "--no-progress", *make_args(corpus, tmp_path)]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("sparse-lens: error:")
    assert message in err


def test_cli_exit_code_in_a_real_process(tmp_path, private_cache):
    proc = subprocess.run(
        [sys.executable, "-m", "sparse_lens", "train", "--preset", "nope", "--out", str(tmp_path)],
        env=subprocess_env(private_cache),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert len(proc.stderr.strip().splitlines()) == 1 and "unknown preset" in proc.stderr


def test_resume_after_a_save_crashed_between_renames(corpus, tmp_path):
    """A save killed between its two renames leaves the old copy beside the out dir."""
    out = tmp_path / "run"
    run = tiny_run(corpus, "steps=4", "eval_interval=100")
    first = train_from_config(run, out, callbacks=[StopAt(2)], progress=False)
    assert first.interrupted
    os.replace(out, tmp_path / ".run.old-12345")
    result = train_from_config(None, out, resume=True, progress=False)
    assert result.steps == 4 and not result.interrupted
    assert json.loads((out / "trainer_state.json").read_text())["step"] == 4
    assert not list(tmp_path.glob(".run.ckpt-*")) + list(tmp_path.glob(".run.old-*"))


class BreakSaving(Callback):
    """After the first checkpoint, make every later save fail half-way through."""

    def __init__(self, monkeypatch):
        self.monkeypatch = monkeypatch

    def on_checkpoint(self, trainer, step):
        def fail(*args, **kwargs):
            raise OSError("disk full")

        self.monkeypatch.setattr("sparse_lens.train.checkpoint.save_optimizer_state", fail)


def test_failed_save_keeps_the_previous_checkpoint(corpus, tmp_path, monkeypatch):
    out = tmp_path / "run"
    run = tiny_run(corpus, "steps=4", "checkpoint_interval=2", "eval_interval=100")
    with pytest.raises(SparseLensError, match="disk full.*previous checkpoint \\(step 2\\) is kept"):
        train_from_config(run, out, callbacks=[BreakSaving(monkeypatch)], progress=False)
    assert json.loads((out / "trainer_state.json").read_text())["step"] == 2
    SparseTransformer.from_pretrained(out)
    # no half-written staging dir left behind
    assert not list(tmp_path.glob(".run.ckpt-*")) + list(tmp_path.glob(".run.old-*"))


def test_resume_uses_the_checkpoint_recipe_and_checks_architecture(corpus, tmp_path):
    out = tmp_path / "run"
    run = tiny_run(corpus, "steps=4", "lr=0.005", "eval_interval=100")
    train_from_config(run, out, callbacks=[StopAt(2)], progress=False)
    with pytest.raises(SparseLensError, match="architecture differs"):
        train_from_config(tiny_run(corpus, "d_model=48"), out, resume=True, progress=False)
    # The preset again without the original lr override: the checkpoint's lr is kept.
    train_from_config(tiny_run(corpus), out, resume=True, overrides=["steps=4"], progress=False)
    info = json.loads((out / "training.json").read_text())
    assert info["train_config"]["lr"] == 0.005 and info["steps"] == 4
