"""Corpus, tokenizer, token files and batches, on tiny corpora written into tmp_path."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from sparse_lens.cli import main as cli_main
from sparse_lens.data import tokenizer as tokenizer_module
from sparse_lens.data import tokens as tokens_module
from sparse_lens.data.corpus import load_corpus, stdlib_dir
from sparse_lens.data.tokenizer import (
    EOT,
    REQUIRED_TOKENS,
    default_tokenizer,
    load_tokenizer,
    save_tokenizer,
    tokenizer_hash,
    train_tokenizer,
)
from sparse_lens.data.tokens import (
    check_token_ids,
    eval_batches,
    get_batch,
    split_tokens,
    token_file_path,
)
from sparse_lens.errors import SparseLensError


def _code(i: int) -> str:
    """A small, varied Python file (quotes, `in`, `else`, `==`, `+=`) that BPE can learn from."""
    return (
        f"def handler_{i}(items, total=0):\n"
        f'    """Count matches for case {i}."""\n'
        f"    for item in items:\n"
        f"        if item == {i}:\n"
        f'            print("match", item)\n'
        f"        else:\n"
        f"            total += item\n"
        f"    return {{'key_{i}': total}}, print('done')\n"
    )


def _write_tree(root, n: int = 30) -> None:
    for i in range(n):
        path = root / f"pkg{i % 3}" / f"mod_{i}.py"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(_code(i))


@pytest.fixture
def code_dir(tmp_path):
    root = tmp_path / "src"
    _write_tree(root)
    return root


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return train_tokenizer([_code(i) for i in range(40)], vocab_size=360)


# ---------------------------------------------------------------- corpus


def test_manifest_and_split_are_deterministic_and_by_file(code_dir):
    a = load_corpus([code_dir], heldout_fraction=0.3)
    b = load_corpus([str(code_dir)], heldout_fraction=0.3)
    assert a.manifest_hash == b.manifest_hash
    assert [d.name for d in a.documents] == sorted(d.name for d in a.documents)
    assert [d.name for d in a.heldout] == [d.name for d in b.heldout]
    train, heldout = {d.name for d in a.train}, {d.name for d in a.heldout}
    assert train and heldout and not train & heldout
    assert train | heldout == {d.name for d in a.documents} and len(a.documents) == 30
    assert "pkg0/mod_0.py" in train | heldout  # names are relative to the source root

    (code_dir / "pkg0" / "mod_0.py").write_text(_code(0) + "# edited\n")
    assert load_corpus([code_dir], heldout_fraction=0.3).manifest_hash != a.manifest_hash

    # Adding files never moves an existing file to the other split.
    for i in range(30, 60):
        (code_dir / f"extra_{i}.py").write_text(_code(i))
    grown = load_corpus([code_dir], heldout_fraction=0.3)
    assert heldout <= {d.name for d in grown.heldout}
    assert train <= {d.name for d in grown.train}


def test_tiny_corpus_keeps_both_splits_nonempty(tmp_path):
    for i in range(2):
        (tmp_path / f"m{i}.py").write_text(_code(i))
    corpus = load_corpus([tmp_path])  # 2% of two files would otherwise be nothing
    assert len(corpus.train) == 1 and len(corpus.heldout) == 1
    single = load_corpus(str(tmp_path / "m0.py"), heldout_fraction=0.9)  # a bare path works too
    assert [d.name for d in single.train] == ["m0.py"] and single.heldout == []


def test_excluded_dirs_large_empty_and_non_utf8_files_are_skipped_and_counted(code_dir):
    for excluded in ("site-packages", "__pycache__", ".venv"):
        (code_dir / excluded).mkdir()
        (code_dir / excluded / "third_party.py").write_text("x = 1\n")
    (code_dir / "latin1.py").write_bytes(b"# caf\xe9\nx = 1\n")
    (code_dir / "huge.py").write_text("x = 1\n" * 100)
    (code_dir / "empty.py").write_text("")
    corpus = load_corpus([code_dir], max_file_bytes=500)
    names = {d.name for d in corpus.documents}
    assert not any("third_party" in n for n in names)
    assert {"latin1.py", "huge.py", "empty.py"}.isdisjoint(names)
    assert corpus.skipped == {"empty": 1, "not utf-8": 1, "too large": 1}
    assert "not utf-8: 1" in corpus.describe()


def test_empty_corpus_and_missing_path_raise(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(SparseLensError, match="empty"):
        load_corpus([tmp_path / "empty"])
    missing = tmp_path / "nowhere"
    with pytest.raises(SparseLensError, match="does not exist") as info:
        load_corpus([missing])
    assert str(missing) in str(info.value)
    with pytest.raises(SparseLensError, match="matches no"):
        load_corpus([str(tmp_path / "*.py")])


def test_txt_jsonl_and_glob_sources(tmp_path, code_dir):
    (tmp_path / "notes.txt").write_text("one document\r\nwith CRLF\n")
    rows = [{"text": "a = 1\n"}, {"text": ""}, {"text": "b = 2\n", "meta": 3}]
    (tmp_path / "rows.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    corpus = load_corpus(
        [tmp_path / "notes.txt", tmp_path / "rows.jsonl", str(code_dir / "pkg1" / "*.py")]
    )
    texts = {d.name: d.text for d in corpus.documents}
    assert texts["notes.txt"] == "one document\r\nwith CRLF\n"  # bytes kept exactly
    assert texts["rows.jsonl:1"] == "a = 1\n" and texts["rows.jsonl:3"] == "b = 2\n"
    assert corpus.skipped == {"empty": 1}
    assert sum(name.startswith("mod_") for name in texts) == 10

    (tmp_path / "bad.jsonl").write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(SparseLensError, match="line 2"):
        load_corpus([tmp_path / "bad.jsonl"])


def test_saved_hf_dataset_source(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"text": [_code(i) for i in range(5)]}).save_to_disk(
        str(tmp_path / "ds")
    )
    corpus = load_corpus([tmp_path / "ds"])
    assert sorted(d.text for d in corpus.documents) == sorted(_code(i) for i in range(5))
    datasets.Dataset.from_dict({"code": ["x"]}).save_to_disk(str(tmp_path / "nocol"))
    with pytest.raises(SparseLensError, match="no 'text' column"):
        load_corpus([tmp_path / "nocol"])


def test_default_corpus_is_the_stdlib_without_site_packages():
    corpus = load_corpus()
    names = [d.name for d in corpus.documents]
    assert len(names) > 500 and names == sorted(names)
    assert "os.py" in names and "json/decoder.py" in names
    assert not any("site-packages" in n or "__pycache__" in n for n in names)
    assert 0 < len(corpus.heldout) < 0.05 * len(names)
    assert corpus.sources == [str(stdlib_dir())]


# ---------------------------------------------------------------- tokenizer


def test_tokenizer_training_is_deterministic_across_threads(monkeypatch, tmp_path):
    texts = [_code(i) for i in range(40)]
    parallel = train_tokenizer(texts, vocab_size=320)
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")
    serial = train_tokenizer(texts, vocab_size=320)
    assert parallel.to_str() == serial.to_str()
    assert tokenizer_hash(parallel) == tokenizer_hash(serial)
    a = save_tokenizer(parallel, tmp_path / "a" / "tokenizer.json")
    b = save_tokenizer(serial, tmp_path / "b" / "tokenizer.json")
    assert a.read_bytes() == b.read_bytes()
    assert [p.name for p in a.parent.iterdir()] == ["tokenizer.json"]  # no temp file left
    assert tokenizer_hash(load_tokenizer(a)) == tokenizer_hash(parallel)
    other = train_tokenizer(texts[:20], vocab_size=320)
    assert tokenizer_hash(other) != tokenizer_hash(parallel)


def test_eot_last_quotes_single_and_round_trip(tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok.get_vocab_size() == 360
    assert tok.token_to_id(EOT) == tok.get_vocab_size() - 1
    for quote in REQUIRED_TOKENS:
        assert len(tok.encode(quote).ids) == 1, quote
    for word in (" in", " else", " ==", " +="):  # leading-space tokens, GPT-2 style
        assert len(tok.encode(word).ids) == 1, word
    text = 'x = f("ünïcode ✓")\r\n\tif a in b:  # 🐍\n' + _code(99) + "<|endoftext|>"
    assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text


def test_quote_tokens_are_added_when_the_corpus_does_not_teach_them():
    texts = [f"for item_{i} in range({i}):\n    total = total + item_{i}\n" for i in range(50)]
    tok = train_tokenizer(texts, vocab_size=300)
    assert tok.get_vocab_size() == 300 and tok.token_to_id(EOT) == 299
    for quote in REQUIRED_TOKENS:
        assert len(tok.encode(quote).ids) == 1, quote
    text = "print(\"a\") + print('b')\n" + texts[0]
    assert tok.decode(tok.encode(text).ids) == text


def test_bad_vocab_size_and_bad_tokenizer_files(tmp_path, tiny_tokenizer):
    with pytest.raises(SparseLensError, match="vocab_size"):
        train_tokenizer(["x = 1\n"], vocab_size=100)
    with pytest.raises(SparseLensError, match="not found") as info:
        load_tokenizer(tmp_path / "missing.json")
    assert "missing.json" in str(info.value)
    (tmp_path / "corrupt.json").write_text("{not json")
    with pytest.raises(SparseLensError, match="corrupt.json"):
        load_tokenizer(tmp_path / "corrupt.json")
    data = json.loads(tiny_tokenizer.to_str())
    data["added_tokens"] = []
    (tmp_path / "no_eot.json").write_text(json.dumps(data))
    with pytest.raises(SparseLensError, match="last id"):
        load_tokenizer(tmp_path / "no_eot.json")


def test_default_tokenizer_is_trained_once_and_cached(monkeypatch, tmp_path, code_dir):
    monkeypatch.setenv("SPARSE_LENS_CACHE", str(tmp_path / "cache"))
    tiny = load_corpus([code_dir])
    monkeypatch.setattr(tokenizer_module, "load_corpus", lambda: tiny)
    tokenizer_module._default_manifest_hash.cache_clear()
    calls = []

    def counting_train(texts, vocab_size):
        calls.append(vocab_size)
        return train_tokenizer(texts, vocab_size)

    monkeypatch.setattr(tokenizer_module, "train_tokenizer", counting_train)
    try:
        first, second = default_tokenizer(300), default_tokenizer(300)
    finally:
        tokenizer_module._default_manifest_hash.cache_clear()
    assert calls == [300]
    assert tokenizer_hash(first) == tokenizer_hash(second)
    assert len(list((tmp_path / "cache" / "tokenizers").glob("*.json"))) == 1


# ---------------------------------------------------------------- token files and batches


def test_split_tokens_layout_and_cache_reuse(tmp_path, code_dir, tiny_tokenizer, monkeypatch):
    corpus = load_corpus([code_dir], heldout_fraction=0.3)
    tokens = split_tokens(corpus, "train", tiny_tokenizer, directory=tmp_path, progress=False)
    assert tokens.dtype == np.uint16 and isinstance(tokens, np.memmap)
    eot = tiny_tokenizer.token_to_id(EOT)
    ends = np.flatnonzero(tokens == eot)
    assert len(ends) == len(corpus.train) and ends[-1] == len(tokens) - 1
    first = tiny_tokenizer.decode(tokens[: ends[0]].tolist())
    assert first == corpus.train[0].text

    def no_retokenizing(*args, **kwargs):
        raise AssertionError("the cached token file should have been reused")

    monkeypatch.setattr(tokens_module, "encode_documents", no_retokenizing)
    again = split_tokens(corpus, "train", tiny_tokenizer, directory=tmp_path, progress=False)
    np.testing.assert_array_equal(again, tokens)
    held = token_file_path(corpus, "heldout", tiny_tokenizer, tmp_path)
    assert held != token_file_path(corpus, "train", tiny_tokenizer, tmp_path)
    with pytest.raises(SparseLensError, match="split"):
        token_file_path(corpus, "validation", tiny_tokenizer, tmp_path)


def test_literal_eot_text_in_a_document_is_not_a_separator(tmp_path, tiny_tokenizer):
    (tmp_path / "a.py").write_text('SEP = "<|endoftext|>"\n')
    (tmp_path / "b.py").write_text("x = 1\n")
    corpus = load_corpus([tmp_path], heldout_fraction=0.0)
    tokens = tokens_module.encode_documents(corpus.train, tiny_tokenizer, progress=False)
    assert int((tokens == tiny_tokenizer.token_to_id(EOT)).sum()) == 2


def test_get_batch_is_a_pure_function_of_seed_and_step():
    tokens = np.arange(5000, dtype=np.uint16)
    batch = get_batch(tokens, step=3, batch_size=8, n_ctx=16, seed=1)
    assert batch.shape == (8, 16) and batch.dtype == torch.long
    assert torch.equal(batch, get_batch(tokens, step=3, batch_size=8, n_ctx=16, seed=1))
    assert not torch.equal(batch, get_batch(tokens, step=4, batch_size=8, n_ctx=16, seed=1))
    assert not torch.equal(batch, get_batch(tokens, step=3, batch_size=8, n_ctx=16, seed=2))
    assert torch.all(batch[:, 1:] - batch[:, :-1] == 1)  # each row is one contiguous window
    for world_size in (2, 4):
        slices = [
            get_batch(tokens, 3, 8, 16, seed=1, rank=r, world_size=world_size)
            for r in range(world_size)
        ]
        assert torch.equal(torch.cat(slices), batch)
    with pytest.raises(SparseLensError, match="batch_size"):
        get_batch(tokens, 3, 6, 16, seed=1, rank=0, world_size=4)
    with pytest.raises(SparseLensError, match="n_ctx"):
        get_batch(tokens[:10], 0, 2, 16, seed=1)


def test_eval_batches_are_fixed_and_cover_windows_once_across_ranks():
    tokens = np.arange(100, dtype=np.uint16)
    batches = list(eval_batches(tokens, batch_size=4, n_ctx=10))
    assert [b.shape[0] for b in batches] == [4, 4, 2]
    starts = torch.cat(batches)[:, 0].tolist()
    assert starts == list(range(0, 100, 10))
    limited = torch.cat(list(eval_batches(tokens, 4, 10, max_windows=5)))
    assert limited[:, 0].tolist() == [0, 10, 20, 30, 40]
    per_rank = [
        torch.cat(list(eval_batches(tokens, 4, 10, rank=r, world_size=3))) for r in range(3)
    ]
    assert sorted(torch.cat(per_rank)[:, 0].tolist()) == starts


def test_check_token_ids_names_the_offending_id():
    check_token_ids(np.array([0, 5, 9], dtype=np.uint16), d_vocab=10)
    with pytest.raises(SparseLensError, match="token id 12 at position 2"):
        check_token_ids(np.array([0, 5, 12, 40], dtype=np.uint16), d_vocab=10)
    with pytest.raises(SparseLensError, match="token id -1"):
        check_token_ids(torch.tensor([[3, -1]]), d_vocab=10)


# ---------------------------------------------------------------- CLI


def test_cli_missing_corpus_exits_2_with_one_line(tmp_path, capsys):
    missing = tmp_path / "nope"
    code = cli_main(
        ["tokenizer", "train", "--corpus", str(missing), "--out", str(tmp_path / "t.json")]
    )
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and str(missing) in err and err.startswith("sparse-lens: error:")


def test_cli_trains_and_writes_a_loadable_tokenizer(tmp_path, code_dir, capsys):
    out = tmp_path / "tok" / "tokenizer.json"
    code = cli_main(
        ["tokenizer", "train", "--corpus", str(code_dir), "--vocab-size", "300", "--out", str(out)]
    )
    stdout = capsys.readouterr().out
    assert code == 0 and "vocab 300" in stdout and str(out) in stdout
    assert load_tokenizer(out).get_vocab_size() == 300
