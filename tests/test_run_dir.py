"""A training run's directory: resume-time checks, one trainer per folder, unwritable folders.

Every case goes through the CLI (``sparse_lens.cli.main``) and asserts exit code 2 with one
line naming the file and field, and that the checkpoint on disk is untouched. Before these
checks a moment one element short resumed with other losses (exit 0), a misshapen bigram
moment segfaulted, a damaged trainer_state.json or RNG file gave a traceback, two trainers on
one folder both ran, and a read-only or full disk failed with a traceback at the first save.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from test_trainer import write_corpus

from sparse_lens.cli import main
from sparse_lens.io.verify import checksum_metadata
from sparse_lens.train.config import apply_overrides, load_preset
from sparse_lens.train.run_dir import claim_run_dir, holder_path
from sparse_lens.train.runner import train_from_config

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    path = tmp_path_factory.mktemp("sparse-lens-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SPARSE_LENS_CACHE", str(path))
        yield path


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, cache) -> Path:
    return write_corpus(tmp_path_factory.mktemp("corpus") / "src", n_files=12)


def _run(corpus: Path, *overrides: str):
    return apply_overrides(
        load_preset("tiny"), [f'corpus=["{corpus}"]', "eval_interval=100", *overrides]
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, corpus) -> Path:
    """A finished 2-step run (its Adam state holds every parameter)."""
    out = tmp_path_factory.mktemp("trained") / "run"
    train_from_config(_run(corpus, "steps=2"), out, progress=False)
    return out


@pytest.fixture
def run_copy(trained, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.is_file()}


def _resume_error(out: Path, capsys) -> str:
    before = _snapshot(out)
    code = main(["train", "--resume", "--out", str(out), "--steps", "3", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("sparse-lens: error:"), err
    assert _snapshot(out) == before  # nothing lost or rewritten
    return err


def _edit_optimizer(out: Path, edit) -> None:
    path = out / "optimizer.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata=checksum_metadata(tensors))  # valid checksums


# ------------------------------------------------------------------------- optimizer state


def test_adam_moment_one_element_short_is_refused(run_copy, capsys):
    key = "blocks.0.attn.W_Q::exp_avg"
    _edit_optimizer(run_copy, lambda t: t.__setitem__(key, t[key].flatten()[:-1].clone()))
    err = _resume_error(run_copy, capsys)
    assert "optimizer.safetensors" in err and f"field '{key}'" in err and "parameter is" in err


def test_misshapen_bigram_moment_is_an_error_not_a_crash(run_copy, capsys):
    key = "bigram.W_bigram::exp_avg_sq"
    _edit_optimizer(run_copy, lambda t: t.__setitem__(key, torch.zeros(7, 3)))
    assert f"field '{key}'" in _resume_error(run_copy, capsys)


@pytest.mark.parametrize(
    "key, edit, problem",
    [
        ("embed.W_E::exp_avg_sq", lambda t, k: t.pop(k), "is missing"),
        ("embed.W_E::exp_avg", lambda t, k: t[k].view(-1)[0].fill_(float("nan")), "NaN"),
        ("embed.W_E::exp_avg_sq", lambda t, k: t[k].view(-1)[0].fill_(-1.0), "negative"),
        ("embed.W_E::step", lambda t, k: t.__setitem__(k, torch.tensor([1.0, 2.0])), "step"),
        ("embed.W_E::exp_avg", lambda t, k: t.__setitem__(k, t[k].double()), "float64"),
        ("embed.W_E::momentum", lambda t, k: t.__setitem__(k, torch.zeros(1)), "not an Adam"),
    ],
)
def test_bad_adam_entries_are_named(run_copy, capsys, key, edit, problem):
    _edit_optimizer(run_copy, lambda t: edit(t, key))
    err = _resume_error(run_copy, capsys)
    assert f"field '{key}'" in err and problem in err


def test_parameter_without_adam_state_is_named(run_copy, capsys):
    def drop(tensors):
        for key in [k for k in tensors if k.startswith("unembed.W_U::")]:
            del tensors[key]

    _edit_optimizer(run_copy, drop)
    assert "no Adam state for parameter 'unembed.W_U'" in _resume_error(run_copy, capsys)


def test_corrupt_optimizer_bytes_fail_the_checksum(run_copy, capsys):
    path = run_copy / "optimizer.safetensors"
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    err = _resume_error(run_copy, capsys)
    assert "optimizer.safetensors" in err and "checksum" in err


# ------------------------------------------------------------------------- trainer and RNG state


@pytest.mark.parametrize(
    "field, value",
    [
        ("model_config", None),
        ("train_config", None),
        ("tokens_seen", "many"),
        ("tokens_seen", -5),
        ("step", 2.5),
        ("recent_losses", ["x"]),
    ],
)
def test_bad_trainer_state_fields_are_named(run_copy, capsys, field, value):
    path = run_copy / "trainer_state.json"
    state = json.loads(path.read_text())
    if value is None:
        del state[field]
    else:
        state[field] = value
    path.write_text(json.dumps(state))
    err = _resume_error(run_copy, capsys)
    assert "trainer_state.json" in err and f"field '{field}'" in err


def test_damaged_model_config_in_trainer_state_is_named(run_copy, capsys):
    path = run_copy / "trainer_state.json"
    state = json.loads(path.read_text())
    state["model_config"]["n_layers"] = 10**6
    path.write_text(json.dumps(state))
    err = _resume_error(run_copy, capsys)
    assert "trainer_state.json" in err and "n_layers" in err


@pytest.mark.parametrize("make", [lambda s: s[:-1].clone(), lambda s: s.float(), None])
def test_wrong_rng_state_is_named(run_copy, capsys, make):
    path = run_copy / "rng_state.safetensors"
    tensors = load_file(str(path))
    if make is None:
        tensors = {"something_else": tensors["torch_cpu"]}
    else:
        tensors["torch_cpu"] = make(tensors["torch_cpu"])
    save_file(tensors, str(path), metadata=checksum_metadata(tensors))
    err = _resume_error(run_copy, capsys)
    assert "rng_state.safetensors" in err and "field 'torch_cpu'" in err


# ------------------------------------------------------------------------- one trainer per folder

HOLD = """
import sys, time
from sparse_lens.train.run_dir import claim_run_dir
with claim_run_dir(sys.argv[1]):
    print("held", flush=True)
    time.sleep(300)
"""


def test_second_trainer_on_a_folder_exits_2_naming_the_holder(run_copy, cache, capsys):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(run_copy)], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        err = _resume_error(run_copy, capsys)
        assert "another trainer is using this directory" in err and f"pid {holder.pid}" in err
        assert holder.poll() is None  # refused while the first one still runs
    finally:
        holder.kill()  # kill -9: the kernel drops its lock
        holder.wait()
    assert holder_path(run_copy).is_file()  # the dead holder's record is left behind...
    code = main(["train", "--resume", "--out", str(run_copy), "--steps", "3", "--no-progress"])
    assert code == 0  # ...and its stale lock is taken over
    assert json.loads((run_copy / "trainer_state.json").read_text())["step"] == 3
    assert not holder_path(run_copy).exists()


def test_claims_are_reentrant_in_one_process(tmp_path):
    out = tmp_path / "run"
    with claim_run_dir(out), claim_run_dir(out):
        assert holder_path(out).is_file()
    assert not holder_path(out).exists()


# ------------------------------------------------------------------------- unwritable folders


def _train_error(out: Path, corpus: Path, capsys) -> str:
    code = main(
        [
            "train",
            "--preset",
            "tiny",
            "--corpus",
            str(corpus),
            "--out",
            str(out),
            "--steps",
            "2",
            "--no-progress",
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("sparse-lens: error:"), err
    return err


def test_out_that_is_a_file_is_refused(tmp_path, corpus, capsys):
    (tmp_path / "file").write_text("keep me")
    assert "is a file" in _train_error(tmp_path / "file", corpus, capsys)
    assert "cannot write here" in _train_error(tmp_path / "file" / "run", corpus, capsys)
    assert (tmp_path / "file").read_text() == "keep me"


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_folder_is_refused_before_training(tmp_path, corpus, capsys):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        err = _train_error(folder / "run", corpus, capsys)
    finally:
        folder.chmod(0o700)
    assert "cannot write here" in err and str(folder) in err


def test_read_only_file_system_is_refused_before_training(tmp_path, corpus, capsys, monkeypatch):
    def read_only(*args, **kwargs):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr("sparse_lens.train.run_dir.tempfile.TemporaryFile", read_only)
    err = _train_error(tmp_path / "run", corpus, capsys)
    assert "Read-only file system" in err and "--out" in err
    assert not (tmp_path / "run").exists()


def test_full_disk_is_refused_before_the_first_step(tmp_path, corpus, capsys, monkeypatch):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(
        "sparse_lens.train.run_dir.shutil.disk_usage", lambda path: usage(10**9, 10**9, 4096)
    )
    err = _train_error(tmp_path / "run", corpus, capsys)
    assert "MiB free but a checkpoint needs about" in err
    assert not (tmp_path / "run" / "trainer_state.json").exists()
