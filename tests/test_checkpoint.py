"""Checkpoints: exact round trips, sparse storage, atomic saves and clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import random_tokens, tiny_model, tiny_tokenizer
from safetensors.torch import save_file

from sparse_lens import SparseConfig, SparseLensError, SparseTransformer
from sparse_lens.cli import main
from sparse_lens.io import checkpoint

VARIANTS = [
    {},
    dict(attn_sink=True, positional_embedding_type="concat", d_pos_emb=8, bigram_table="fixed"),
    dict(positional_embedding_type="standard", tied_unembed=True, final_logits_bias=False),
    dict(afrac=None, use_bias=False, bigram_table="off", residual_activation="relu"),
]


@pytest.mark.parametrize("overrides", VARIANTS)
def test_round_trip_gives_identical_logits(tmp_path, overrides):
    model = tiny_model(density=0.1, **overrides)
    model.save_pretrained(tmp_path / "ckpt")
    loaded = SparseTransformer.from_pretrained(tmp_path / "ckpt")
    tokens = random_tokens(model)
    assert loaded.cfg == model.cfg
    assert torch.equal(loaded(tokens), model(tokens))
    for name, tensor in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name


def test_narrow_storage_dtype_round_trips_to_the_rounded_table(tmp_path):
    model = tiny_model(density=0.1, bigram_table="learnable")
    with torch.no_grad():
        model.bigram.W_bigram.normal_()
    model.save_pretrained(tmp_path / "ckpt", storage_dtypes={"bigram.W_bigram": torch.float16})
    loaded = SparseTransformer.from_pretrained(tmp_path / "ckpt")
    table = loaded.bigram.W_bigram
    assert table.dtype == torch.float32
    assert torch.equal(table, model.bigram.W_bigram.half().float())
    assert not torch.equal(table, model.bigram.W_bigram)  # it really was stored narrower
    for name, tensor in model.state_dict().items():
        if name != "bigram.W_bigram":
            assert torch.equal(loaded.state_dict()[name], tensor), name
    with pytest.raises(KeyError, match="no_such"):
        model.save_pretrained(tmp_path / "bad", storage_dtypes={"no_such": torch.float16})


def test_config_json_round_trip_is_exact(tmp_path):
    cfg = SparseConfig(
        n_layers=3, d_model=48, n_heads=3, afrac=0.125, afrac_locations=("attn_v", "mlp_in"),
        positional_embedding_type="concat", d_pos_emb=4, attn_sink=True, eps=1.1920928955078125e-07,
    )
    cfg.to_json(tmp_path / "config.json")
    again = SparseConfig.from_json(tmp_path / "config.json")
    assert again == cfg
    assert again.to_dict() == json.loads((tmp_path / "config.json").read_text())


def test_sparse_model_file_grows_with_nonzeros(tmp_path):
    dense_cfg = dict(d_model=64, d_mlp=256, n_heads=4, d_vocab=256, bigram_table="off")
    dense = tiny_model(**dense_cfg)
    sparse = tiny_model(density=1 / 64, **dense_cfg)
    with torch.no_grad():  # embeddings and biases sparse too, as after training
        for name, param in sparse.named_parameters():
            if param.ndim == 1 and name.rsplit(".", 1)[-1].startswith("b_"):
                param.zero_()
    dense.save_pretrained(tmp_path / "dense")
    sparse.save_pretrained(tmp_path / "sparse")
    dense_size = (tmp_path / "dense" / "model.safetensors").stat().st_size
    sparse_size = (tmp_path / "sparse" / "model.safetensors").stat().st_size
    assert sparse_size < dense_size / 8, (sparse_size, dense_size)


def test_save_keeps_tokenizer_and_foreign_files(tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_model(d_vocab=tokenizer.get_vocab_size())
    model.set_tokenizer(tokenizer)
    target = tmp_path / "ckpt"
    model.save_pretrained(target)
    (target / "metrics.jsonl").write_text('{"step": 1}\n')
    model.save_pretrained(target)
    assert (target / "metrics.jsonl").read_text() == '{"step": 1}\n'
    loaded = SparseTransformer.from_pretrained(target)
    assert loaded.tokenizer.to_str() == tokenizer.to_str()


def test_interrupted_save_leaves_previous_checkpoint_intact(tmp_path, monkeypatch):
    model = tiny_model(seed=0)
    target = tmp_path / "ckpt"
    model.save_pretrained(target)
    before = (target / "model.safetensors").read_bytes()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint, "save_file", crash)
    with pytest.raises(KeyboardInterrupt):
        tiny_model(seed=1).save_pretrained(target)
    assert (target / "model.safetensors").read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt"]  # no staging debris
    SparseTransformer.from_pretrained(target)


def test_crash_between_renames_is_recovered(tmp_path):
    model = tiny_model()
    target = tmp_path / "ckpt"
    model.save_pretrained(target)
    target.rename(tmp_path / ".ckpt.old-123")  # the state after the first of the two renames
    loaded = SparseTransformer.from_pretrained(target)
    tokens = random_tokens(model)
    assert torch.equal(loaded(tokens), model(tokens))


def _saved(tmp_path):
    tiny_model().save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def test_missing_weights_is_a_clear_error(tmp_path):
    directory = _saved(tmp_path)
    (directory / "model.safetensors").unlink()
    with pytest.raises(SparseLensError, match="model.safetensors"):
        SparseTransformer.from_pretrained(directory)


def test_corrupt_weights_is_a_clear_error(tmp_path):
    directory = _saved(tmp_path)
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(SparseLensError, match="corrupt"):
        SparseTransformer.from_pretrained(directory)


def test_weights_not_matching_config_name_the_tensor(tmp_path):
    directory = _saved(tmp_path)
    save_file({"embed.W_E": torch.zeros(3, 3)}, str(directory / "model.safetensors"))
    with pytest.raises(SparseLensError, match="missing"):
        SparseTransformer.from_pretrained(directory)


@pytest.mark.parametrize(
    "edit, field",
    [({"d_modle": 32}, "d_modle"), ({"d_model": "32"}, "d_model"), ({"afrac_locations": ["mlp_nueron"]}, "afrac_locations"),
     ({"bigram_table": "yes"}, "bigram_table"), ({"n_layers": 2.5}, "n_layers")],
)
def test_bad_config_field_is_named(tmp_path, edit, field):
    directory = _saved(tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config.update(edit)
    (directory / "config.json").write_text(json.dumps(config))
    with pytest.raises(SparseLensError, match=f"field '{field}'") as error:
        SparseTransformer.from_pretrained(directory)
    assert "config.json" in str(error.value)


def test_malformed_config_json(tmp_path):
    directory = _saved(tmp_path)
    (directory / "config.json").write_text("{not json")
    with pytest.raises(SparseLensError, match="not valid JSON"):
        SparseTransformer.from_pretrained(directory)


def test_tokenizer_vocab_mismatch(tmp_path):
    tokenizer = tiny_tokenizer()
    model = tiny_model(d_vocab=tokenizer.get_vocab_size() + 1)
    with pytest.raises(SparseLensError, match="d_vocab"):
        model.set_tokenizer(tokenizer)
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save(str(tmp_path / "ckpt" / "tokenizer.json"))
    with pytest.raises(SparseLensError, match="tokenizer.json"):
        SparseTransformer.from_pretrained(tmp_path / "ckpt")


def test_unknown_model_name_lists_what_exists(tmp_path):
    with pytest.raises(SparseLensError, match="neither a model directory nor a shipped model"):
        SparseTransformer.from_pretrained("no-such-model")
    with pytest.raises(SparseLensError, match="no such model directory"):
        SparseTransformer.from_pretrained(tmp_path / "missing")


def test_cli_reports_bad_checkpoint_in_one_line(tmp_path, capsys):
    directory = _saved(tmp_path)
    (directory / "model.safetensors").write_bytes(b"garbage")
    assert main(["info", str(directory)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.safetensors" in err
