"""`sparse-lens info` and sparse_lens.info: architecture summary and per-tensor nonzeros."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import tiny_model

from sparse_lens.cli import main
from sparse_lens.info import example_sparse_model, model_info, weight_stats
from sparse_lens.model import sparse_targets


def test_weight_stats_count_every_stored_tensor():
    model = tiny_model(
        density=0.25, bigram_table="fixed", tied_unembed=True, use_bias=False, attn_sink=True
    )
    stats = {s.name: s for s in weight_stats(model)}
    state = model.state_dict()
    assert list(stats) == list(state)  # buffers like the fixed bigram table included
    assert "unembed.W_U" not in stats  # tied: a view of embed.W_E, counted once
    assert "blocks.0.attn.b_Q" not in stats  # bias-free: zero non-persistent buffers
    for name, tensor in state.items():
        assert stats[name].nonzeros == int((tensor != 0).sum()), name
        assert stats[name].params == tensor.numel()
        assert stats[name].shape == tuple(tensor.shape)
    assert stats["blocks.1.mlp.W_in"].kind == "matrix" and stats["blocks.1.mlp.W_in"].sparsified
    assert stats["embed.W_E"].kind == "embedding"
    assert stats["blocks.0.ln1.w"].kind == "norm" and not stats["blocks.0.ln1.w"].sparsified
    assert stats["blocks.0.attn.sink_logit"].kind == "sink"
    assert stats["bigram.W_bigram"].kind == "bigram"
    assert stats["unembed.b_U"].kind == "logit-bias"
    assert {s.kind for s in stats.values() if s.sparsified} <= {"matrix", "embedding", "bias"}


def test_totals_add_up():
    info = model_info(tiny_model(density=0.25))
    matrices = [t for t in info.tensors if t.kind == "matrix"]
    assert info.matrices.params == sum(t.params for t in matrices)
    assert info.matrices.nonzeros == sum(t.nonzeros for t in matrices)
    assert info.total.nonzeros == sum(t.nonzeros for t in info.tensors)
    assert info.total.density == pytest.approx(info.total.nonzeros / info.total.params)
    assert sum(t.params for t in info.by_kind().values()) == info.total.params
    assert 0.2 < info.matrices.density <= 0.25  # tiny_model keeps ~1/4 of each matrix


def test_example_model_is_one_sixteenth_dense():
    model = example_sparse_model(seed=3)
    for target in sparse_targets(model):
        if target.kind in ("matrix", "embedding"):
            assert int(torch.count_nonzero(target.param)) == max(1, target.param.numel() // 16), (
                target.name
            )
    assert model_info(model).matrices.density == pytest.approx(1 / 16)
    assert torch.equal(example_sparse_model(seed=3).W_in, model.W_in)  # seeded
    assert not torch.equal(example_sparse_model(seed=4).W_in, model.W_in)


def test_info_cli_text_and_json(tmp_path, capsys):
    model = tiny_model(
        density=0.25, positional_embedding_type="concat", d_pos_emb=8, attn_sink=True
    )
    model.save_pretrained(tmp_path / "m")
    assert main(["info", str(tmp_path / "m")]) == 0
    text = capsys.readouterr().out
    for expected in (
        "blocks.1.mlp.W_out",
        "concat (d_pos_emb 8",
        "attention sink       yes",
        "matrices",
        "AbsTopK",
    ):
        assert expected in text, expected

    assert main(["info", str(tmp_path / "m"), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    expected = model_info(model).to_dict()  # loading keeps every tensor and every zero
    assert report["tensors"] == expected["tensors"]
    assert report["totals"] == expected["totals"]
    assert report["config"] == model.cfg.to_dict()


def test_info_cli_example(capsys):
    assert main(["info", "--example", "--json", "--seed", "1"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["totals"]["matrices"]["density"] == pytest.approx(1 / 16)
    assert report["config"]["n_layers"] == 2


def test_info_cli_errors_exit_2_with_one_line(tmp_path, capsys):
    assert main(["info", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "missing" in err

    tiny_model().save_pretrained(tmp_path / "corrupt")
    weights = tmp_path / "corrupt" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    assert main(["info", str(tmp_path / "corrupt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "model.safetensors" in err

    for argv in (["info"], ["info", str(tmp_path / "corrupt"), "--example"]):
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
