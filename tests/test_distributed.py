"""Data-parallel training: `torchrun --nproc_per_node 2` (gloo, CPU) matches one process.

Both runs see the same global batch (each rank takes half), DDP averages the gradients, and the
projection runs identically on each rank (the trainer checks ranks agree at every checkpoint).
The final weights must match the single-process run to float tolerance, with the same nonzero
pattern.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import torch
from test_trainer import private_cache, subprocess_env, write_corpus  # noqa: F401 (fixture)

from sparse_lens.model import SparseTransformer


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_two_process_gloo_matches_one_process(tmp_path, private_cache):  # noqa: F811
    corpus = write_corpus(tmp_path / "corpus")
    env = subprocess_env(private_cache)
    common = [
        "-m",
        "sparse_lens",
        "train",
        "--preset",
        "tiny",
        "--corpus",
        str(corpus),
        "--steps",
        "8",
        "--no-progress",
        "--set",
        "eval_interval=4",
        "--set",
        "checkpoint_interval=4",
        "--set",
        "batch_size=8",
    ]
    single = subprocess.run(
        [sys.executable, *common, "--out", str(tmp_path / "one")],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert single.returncode == 0, single.stderr
    double = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--nnodes",
            "1",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            str(free_port()),
            *common,
            "--out",
            str(tmp_path / "two"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert double.returncode == 0, double.stderr
    assert double.stdout.count("trained 8 steps") == 1  # only rank 0 reports

    one = SparseTransformer.from_pretrained(tmp_path / "one").state_dict()
    two = SparseTransformer.from_pretrained(tmp_path / "two").state_dict()
    for name in one:
        assert torch.allclose(one[name], two[name], atol=1e-5, rtol=1e-4), name
        assert torch.equal(one[name] != 0, two[name] != 0), name
    info_one = json.loads((tmp_path / "one" / "training.json").read_text())
    info_two = json.loads((tmp_path / "two" / "training.json").read_text())
    assert info_two["world_size"] == 2 and info_one["world_size"] == 1
    assert info_two["tokens_seen"] == info_one["tokens_seen"] == 8 * 8 * 64
    assert abs(info_two["final_heldout_loss"] - info_one["final_heldout_loss"]) < 1e-4
    assert abs(info_two["final_train_loss"] - info_one["final_train_loss"]) < 1e-4
