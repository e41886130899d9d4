"""Load-time verification (sparse_lens/io/verify.py): a corrupt checkpoint is one clear error.

Each case mutates a saved tiny model the way a damaged disk, a bad copy or a hand edit would,
then loads it through the CLI (``sparse-lens info DIR``) and asserts exit code 2 with one line
naming the file and the tensor or field. Before verification existed every one of these loaded
without a word (flipped bytes and wrapped indices as other weights, NaN weights as ``nan``
losses, int32 weights cast, another tokenizer of the same size accepted).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
import torch
from helpers import random_tokens, tiny_model, tiny_tokenizer
from safetensors.torch import load_file, safe_open, save_file

from sparse_lens import SparseLensError, SparseTransformer
from sparse_lens.cli import main
from sparse_lens.data.tokenizer import tokenizer_hash
from sparse_lens.io.checkpoint import encode_tensors, load_pretrained
from sparse_lens.io.verify import checksum_metadata

SPARSE = "blocks.0.mlp.W_in"  # stored as indices + values at density 0.25
DENSE = "blocks.0.ln1.w"  # stored dense


def _saved(tmp_path: Path, **overrides) -> Path:
    model = tiny_model(density=0.25, **overrides)
    model.save_pretrained(tmp_path / "ckpt")
    return tmp_path / "ckpt"


def _entries(directory: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = directory / "model.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    return load_file(str(path)), metadata


def _rewrite(directory: Path, tensors, metadata, *, rechecksum: bool = True) -> None:
    """Write the entries back; with ``rechecksum`` the digests match the (bad) content, so the
    content checks, not the checksums, have to catch it."""
    metadata = dict(metadata)
    if rechecksum:
        metadata.update(checksum_metadata(tensors))
    save_file(tensors, str(directory / "model.safetensors"), metadata=metadata)


def _cli_error(directory: Path, capsys) -> str:
    assert main(["info", str(directory)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("sparse-lens: error:"), err
    return err


def test_save_records_a_checksum_for_every_stored_tensor(tmp_path):
    tensors, metadata = _entries(_saved(tmp_path))
    digests = json.loads(metadata["sha256"])
    assert set(digests) == set(tensors)
    assert f"{SPARSE}::indices" in digests and DENSE in digests


def test_flipped_data_byte_fails_its_checksum(tmp_path, capsys):
    directory = _saved(tmp_path)
    path = directory / "model.safetensors"
    data = bytearray(path.read_bytes())
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + header_len])
    start, _ = header[DENSE]["data_offsets"]
    data[8 + header_len + start] ^= 0x40  # one bit of the first element
    path.write_bytes(bytes(data))
    err = _cli_error(directory, capsys)
    assert "model.safetensors" in err and DENSE in err and "checksum" in err
    # verify=False skips the checksums: the flipped bit then loads (finite, just different)
    model = load_pretrained(directory, verify=False)
    assert not torch.equal(model.state_dict()[DENSE], tiny_model(density=0.25).state_dict()[DENSE])


def test_tampered_checksum_record_is_refused(tmp_path, capsys):
    directory = _saved(tmp_path)
    tensors, metadata = _entries(directory)
    digests = json.loads(metadata["sha256"])
    del digests[DENSE]
    _rewrite(directory, tensors, {**metadata, "sha256": json.dumps(digests)}, rechecksum=False)
    assert "do not match its checksums" in _cli_error(directory, capsys)
    _rewrite(directory, tensors, {**metadata, "sha256": "[1, 2"}, rechecksum=False)
    assert "field 'sha256'" in _cli_error(directory, capsys)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(tmp_path, capsys, bad):
    model = tiny_model()
    with torch.no_grad():
        model.blocks[0].ln1.w[3] = bad
    model.save_pretrained(tmp_path / "ckpt")  # checksums are of the bad values: they pass
    err = _cli_error(tmp_path / "ckpt", capsys)
    assert f"field '{DENSE}'" in err and "NaN or infinite" in err


def test_non_finite_sparse_values_are_refused(tmp_path, capsys):
    directory = _saved(tmp_path)
    tensors, metadata = _entries(directory)
    tensors[f"{SPARSE}::values"][0] = float("nan")
    _rewrite(directory, tensors, metadata)
    assert f"'{SPARSE}::values'" in _cli_error(directory, capsys)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64, torch.bool])
def test_integer_weights_are_not_cast_silently(tmp_path, capsys, dtype):
    directory = _saved(tmp_path)
    tensors, metadata = _entries(directory)
    tensors[DENSE] = tensors[DENSE].to(dtype)
    _rewrite(directory, tensors, metadata)
    err = _cli_error(directory, capsys)
    assert f"field '{DENSE}'" in err and str(dtype) in err


@pytest.mark.parametrize(
    "edit, problem",
    [
        (lambda i, n: i.__setitem__(0, -1), "index -1 is outside"),
        (lambda i, n: i.__setitem__(-1, n), "is outside its"),
        (lambda i, n: i.__setitem__(1, i[0]), "not strictly increasing"),
        (lambda i, n: i.copy_(i.flip(0)), "not strictly increasing"),
    ],
)
def test_sparse_indices_out_of_range_or_repeated_are_refused(tmp_path, capsys, edit, problem):
    directory = _saved(tmp_path)
    tensors, metadata = _entries(directory)
    numel = tiny_model().state_dict()[SPARSE].numel()
    edit(tensors[f"{SPARSE}::indices"], numel)
    _rewrite(directory, tensors, metadata)
    err = _cli_error(directory, capsys)
    assert f"sparse tensor '{SPARSE}'" in err and problem in err


def test_sparse_index_count_must_match_values(tmp_path, capsys):
    directory = _saved(tmp_path)
    tensors, metadata = _entries(directory)
    tensors[f"{SPARSE}::indices"] = tensors[f"{SPARSE}::indices"][:-1].clone()
    _rewrite(directory, tensors, metadata)
    assert "indices for" in _cli_error(directory, capsys)


@pytest.mark.parametrize(
    "shapes, problem",
    [
        ("[64, 32]", "expected an object"),
        (json.dumps({SPARSE: [32.0, 64]}), "non-negative integers"),
        (json.dumps({SPARSE: ["32", 64]}), "non-negative integers"),
        (json.dumps({SPARSE: [-32, -64]}), "non-negative integers"),
        (json.dumps({SPARSE: 2048}), "non-negative integers"),
        (json.dumps({SPARSE: [10**6, 10**6]}), "more than"),
        (json.dumps({"no.such.tensor": [2, 2]}), "lacks its"),
        ("{not json", "not valid JSON"),
    ],
)
def test_malformed_sparse_shapes_metadata_is_refused(tmp_path, capsys, shapes, problem):
    directory = _saved(tmp_path)
    tensors, metadata = _entries(directory)
    _rewrite(directory, tensors, {**metadata, "sparse_shapes": shapes})
    err = _cli_error(directory, capsys)
    assert "model.safetensors" in err and problem in err


def test_files_without_checksums_still_load_and_round_trip(tmp_path):
    """Files written before checksums existed (the shipped models among them) load as before."""
    model = tiny_model(density=0.25)
    directory = _saved(tmp_path)
    tensors, metadata = encode_tensors(model.state_dict())
    del metadata["sha256"]
    save_file(tensors, str(directory / "model.safetensors"), metadata=metadata)
    tokens = random_tokens(model)
    assert torch.equal(SparseTransformer.from_pretrained(directory)(tokens), model(tokens))


def _with_tokenizer_and_provenance(tmp_path: Path) -> tuple[Path, object]:
    tokenizer = tiny_tokenizer()
    model = tiny_model(d_vocab=tokenizer.get_vocab_size())
    model.set_tokenizer(tokenizer)
    directory = tmp_path / "ckpt"
    model.save_pretrained(directory)
    provenance = {"tokenizer_hash": tokenizer_hash(tokenizer), "steps": 1}
    (directory / "training.json").write_text(json.dumps(provenance))
    return directory, tokenizer


def test_same_size_tokenizer_with_other_content_is_refused(tmp_path, capsys):
    directory, tokenizer = _with_tokenizer_and_provenance(tmp_path)
    SparseTransformer.from_pretrained(directory)  # the recorded tokenizer loads
    data = json.loads((directory / "tokenizer.json").read_text())
    vocab = data["model"]["vocab"]
    a, b = sorted(vocab, key=vocab.get)[300 - 60 : 300 - 58]  # two merged tokens swap ids
    vocab[a], vocab[b] = vocab[b], vocab[a]
    (directory / "tokenizer.json").write_text(json.dumps(data))
    err = _cli_error(directory, capsys)
    assert "tokenizer.json" in err and "field 'tokenizer_hash'" in err


def test_missing_tokenizer_is_named_when_training_recorded_one(tmp_path, capsys):
    directory, _ = _with_tokenizer_and_provenance(tmp_path)
    (directory / "tokenizer.json").unlink()
    err = _cli_error(directory, capsys)
    assert "tokenizer.json" in err and "missing" in err


@pytest.mark.parametrize(
    "field, value",
    [("d_vocab", 10**9), ("n_layers", 10**6), ("d_mlp", 2**21), ("n_ctx", 2**30)],
)
def test_huge_config_sizes_are_refused_before_allocating(tmp_path, capsys, field, value):
    directory = _saved(tmp_path)
    config = json.loads((directory / "config.json").read_text())
    config[field] = value
    (directory / "config.json").write_text(json.dumps(config))
    err = _cli_error(directory, capsys)  # returns at once: nothing of that size is built
    assert "config.json" in err and f"field '{field}'" in err and "sparse_lens.limits" in err


def test_total_weight_limit_names_the_largest_term():
    from sparse_lens import SparseConfig

    with pytest.raises(SparseLensError, match="field 'd_vocab'.*weights, over the limit"):
        SparseConfig(d_vocab=200_000)  # within MAX_VOCAB, but the bigram table is 4e10 weights
    assert SparseConfig(d_vocab=200_000, bigram_table="off").weight_count() < 2**33


def test_d_model_not_a_multiple_of_d_head_is_a_clear_error():
    from sparse_lens import SparseConfig

    with pytest.raises(SparseLensError, match="field 'd_head'"):
        SparseConfig(d_model=256, d_head=7)
