"""The OpenAI circuit_sparsity importer: every released config variant, scaled down but with every
switch kept, imports with logits (and activations) equal to an independent reference forward."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import regex
import torch
from openai_reference import reference_forward

from sparse_lens import SparseLensError, SparseTransformer
from sparse_lens.cli import main
from sparse_lens.io.openai import (
    OPENAI_FLAT_HEAD_HOOKS,
    OPENAI_HOOK_NAMES,
    TRAINING_ONLY_KEYS,
    convert_openai_config,
    import_openai,
    openai_hook_name,
    tokenizer_from_gpt2_bpe,
)

FIXTURES = Path(__file__).parent / "fixtures" / "openai_circuit_sparsity"  # copies of OpenAI's files
FIXTURE_NAMES = sorted(
    p.name.removesuffix(".beeg_config.json") for p in FIXTURES.glob("*.beeg_config.json")
)
SCALES = [  # (n_head, d_head, d_model, vocab): varied so head-major flattening is exercised
    (2, 16, 32, 96),
    (4, 8, 32, 64),
    (3, 16, 48, 128),
]
N_CTX = 32


def scaled_fixture(name: str, index: int = 0) -> dict:
    """The fixture's beeg_config.json, shrunk in width and depth, every switch and key kept."""
    beeg = json.loads((FIXTURES / f"{name}.beeg_config.json").read_text())
    n_head, d_head, d_model, vocab = SCALES[index % len(SCALES)]
    beeg.update(n_layer=2, n_head=n_head, d_head=d_head, d_model=d_model, d_mlp=4 * d_model)
    beeg.update(vocab_size=vocab, block_size=N_CTX)
    if beeg.get("d_pos_emb") is not None:
        beeg["d_pos_emb"] = 8
    return beeg


def random_openai_state(beeg: dict, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict in OpenAI's key layout: weights with many exact zeros, nonzero sink
    logits, bigram table and final_logits_bias, so every path changes the logits."""
    g = torch.Generator().manual_seed(seed)
    d, V, H = beeg["d_model"], beeg["vocab_size"], beeg["n_head"]
    dh = beeg.get("d_head") or d // H
    d_mlp = beeg.get("d_mlp") or beeg.get("n_mlp") or 4 * d
    d_pos = beeg.get("d_pos_emb")
    d_in = d + (d_pos or 0)
    bias = beeg.get("bias", True)

    def sparse(*shape: int, fan_in: int | None = None) -> torch.Tensor:
        w = torch.randn(shape, generator=g) / math.sqrt(fan_in or shape[-1])
        return w * (torch.rand(shape, generator=g) > 0.6)  # ~60% exact zeros

    def norm(width: int) -> torch.Tensor:
        w = 1 + 0.2 * torch.randn(width, generator=g)
        w[0] = 0.0  # a zero norm weight keeps its meaning
        return w

    sd = {
        "transformer.wte.weight": sparse(V, d, fan_in=1),
        "transformer.wpe.weight": sparse(N_CTX, d_pos or d, fan_in=1),
        "transformer.ln_f.weight": norm(d),
    }
    # token 0 at position 0 reads a tiny residual (mean square ~1e-8, below the norm's eps of
    # 1.2e-7), so the logits depend on RMSNorm's eps being exactly finfo(float32).eps
    sd["transformer.wte.weight"][0] = 1e-4 * torch.randn(d, generator=g)
    sd["transformer.wpe.weight"][0] = 1e-4 * torch.randn(d_pos or d, generator=g)
    for i in range(beeg["n_layer"]):
        p = f"transformer.h.{i}."
        sd[p + "ln_1.weight"] = norm(d)
        sd[p + "ln_2.weight"] = norm(d)
        if d_pos:
            sd[p + "ln_p1.weight"] = norm(d_pos)
            sd[p + "ln_p2.weight"] = norm(d_pos)
        sd[p + "attn.c_attn.weight"] = sparse(3 * H * dh, d_in)
        sd[p + "attn.c_proj.weight"] = sparse(d, H * dh)
        sd[p + "mlp.c_fc.weight"] = sparse(d_mlp, d_in)
        sd[p + "mlp.c_proj.weight"] = sparse(d, d_mlp)
        if bias:
            sd[p + "attn.c_attn.bias"] = sparse(3 * H * dh, fan_in=4)
            sd[p + "attn.c_proj.bias"] = sparse(d, fan_in=4)
            sd[p + "mlp.c_fc.bias"] = sparse(d_mlp, fan_in=4)
            sd[p + "mlp.c_proj.bias"] = sparse(d, fan_in=4)
        if beeg.get("sink", False) and beeg.get("flash", True):
            sd[p + "attn.attn_imp.sink_logit"] = torch.randn(H, generator=g) + 1.0
        if not beeg.get("flash", True):
            sd[p + "attn.bias"] = torch.ones(N_CTX, N_CTX).tril().view(1, 1, N_CTX, N_CTX)
    if beeg.get("tied_unembed", True):
        sd["lm_head.weight"] = sd["transformer.wte.weight"]  # tied: both keys, one tensor
    else:
        sd["lm_head.weight"] = sparse(V, d)
    sd["final_logits_bias"] = torch.randn(V, generator=g)
    if beeg.get("enable_bigram_table", False):
        sd["bigram_table"] = torch.randn(V, V, generator=g)
    return sd


def write_openai_dir(directory: Path, beeg: dict, sd: dict[str, torch.Tensor]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "beeg_config.json").write_text(json.dumps(beeg))
    torch.save(sd, directory / "final_model.pt")
    return directory


def tokens_for(beeg: dict, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, beeg["vocab_size"], (2, N_CTX), generator=g)
    tokens[:, 0] = 0  # the near-zero residual: see random_openai_state
    return tokens


def assert_same_as_reference(
    model: SparseTransformer, beeg: dict, sd: dict, tokens: torch.Tensor
) -> None:
    their_hooks: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        expected = reference_forward(beeg, sd, tokens, their_hooks)
        logits, cache = model.run_with_cache(tokens)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    # the hook table: every one of their activations is one of ours, flat over (head, d_head)
    assert len(their_hooks) == 11 * beeg["n_layer"] + 1
    for name, theirs in their_hooks.items():
        ours = cache[openai_hook_name(name, model.cfg.n_layers)]
        if name.split(".", 1)[-1] in {t.split(".", 1)[1] for t in OPENAI_FLAT_HEAD_HOOKS}:
            assert ours.shape == (*theirs.shape[:2], model.cfg.n_heads, model.cfg.d_head)
            ours = ours.flatten(-2)
        torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5, msg=name)


# ------------------------------------------------------------------ the six released variants
def test_fixtures_present():
    assert len(FIXTURE_NAMES) == 6


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_full_size_fixture_configs_convert(name):
    beeg = json.loads((FIXTURES / f"{name}.beeg_config.json").read_text())
    cfg = convert_openai_config(beeg)
    assert (cfg.n_layers, cfg.d_model, cfg.n_heads, cfg.d_head) == (
        beeg["n_layer"],
        beeg["d_model"],
        beeg["n_head"],
        beeg["d_head"],
    )
    assert (cfg.d_mlp, cfg.n_ctx, cfg.d_vocab) == (
        beeg["d_mlp"],
        beeg["block_size"],
        beeg["vocab_size"],
    )
    assert cfg.d_in == beeg["d_model"] + (beeg.get("d_pos_emb") or 0)


@pytest.mark.parametrize("index,name", list(enumerate(FIXTURE_NAMES)))
def test_fixture_variant_imports_with_equal_logits(tmp_path, index, name):
    beeg = scaled_fixture(name, index)
    sd = random_openai_state(beeg, seed=index)
    src = write_openai_dir(tmp_path / name, beeg, sd)
    model = import_openai(src)

    cfg = model.cfg
    assert cfg.eps == torch.finfo(torch.float32).eps
    assert (cfg.n_layers, cfg.n_heads, cfg.d_head, cfg.d_model) == (
        2,
        beeg["n_head"],
        beeg["d_head"],
        beeg["d_model"],
    )
    assert (cfg.d_mlp, cfg.n_ctx, cfg.d_vocab) == (beeg["d_mlp"], N_CTX, beeg["vocab_size"])
    assert cfg.afrac == beeg["afrac"]
    if beeg["afrac"] is not None:
        assert set(cfg.afrac_locations) == set(beeg["afrac_loctypes"].split(","))
    assert cfg.bigram_table == ("learnable" if beeg["learnable_bigram_table"] else "fixed")
    assert cfg.positional_embedding_type == ("concat" if beeg.get("d_pos_emb") else "standard")
    assert cfg.attn_sink == beeg.get("sink", False)
    assert model.tokenizer is None

    # weights carried over exactly, zeros included (q/k/v head-major slices of c_attn)
    c_attn = sd["transformer.h.1.attn.c_attn.weight"]
    H, dh = cfg.n_heads, cfg.d_head
    for j, W in enumerate(
        (model.blocks[1].attn.W_Q, model.blocks[1].attn.W_K, model.blocks[1].attn.W_V)
    ):
        for h in range(H):
            assert torch.equal(W[h].T, c_attn[(j * H + h) * dh : (j * H + h + 1) * dh])
    assert int(torch.count_nonzero(model.blocks[0].mlp.W_in)) == int(
        torch.count_nonzero(sd["transformer.h.0.mlp.c_fc.weight"])
    )

    assert_same_as_reference(model, beeg, sd, tokens_for(beeg, seed=index))


@pytest.mark.parametrize("index,name", list(enumerate(FIXTURE_NAMES)))
def test_imported_checkpoint_round_trips(tmp_path, index, name):
    beeg = scaled_fixture(name, index)
    src = write_openai_dir(tmp_path / "src", beeg, random_openai_state(beeg, seed=10 + index))
    model = import_openai(src, tmp_path / "dst")
    assert {"config.json", "model.safetensors", "openai_source.json"} <= {
        p.name for p in (tmp_path / "dst").iterdir()
    }
    source = json.loads((tmp_path / "dst" / "openai_source.json").read_text())
    assert source["beeg_config"] == beeg
    loaded = SparseTransformer.from_pretrained(tmp_path / "dst")
    assert loaded.cfg == model.cfg
    tokens = tokens_for(beeg)
    with torch.no_grad():
        assert torch.equal(loaded(tokens), model(tokens))


# ------------------------------------------------------------------ switches the fixtures leave out
EXTRA_VARIANTS = {
    # tied unembedding, no biases, ReLU MLP and residual, residual AbsTopK, sink, no bigram
    "tied+nobias+relu+resid-topk+sink": dict(
        tied_unembed=True,
        bias=False,
        activation_type="relu",
        residual_activation_type="relu",
        afrac=0.5,
        afrac_loctypes="attn_in,attn_q,mlp_neuron,resid_post_attn,resid_post_mlp",
        enable_bigram_table=False,
        sink=True,
    ),
    # their non-flash attention: no sink module (so the sink switch is inert), a mask buffer
    "no-flash+sink-inert+concat": dict(flash=False, sink=True, d_pos_emb=8, afrac=0.25),
}


@pytest.mark.parametrize("variant", sorted(EXTRA_VARIANTS))
def test_extra_switches_import_with_equal_logits(tmp_path, variant):
    beeg = {**scaled_fixture("csp_yolo2", 1), **EXTRA_VARIANTS[variant]}
    sd = random_openai_state(beeg, seed=3)
    model = import_openai(write_openai_dir(tmp_path / "src", beeg, sd))
    assert model.cfg.attn_sink == (beeg["sink"] and beeg.get("flash", True))
    assert_same_as_reference(model, beeg, sd, tokens_for(beeg))
    model.save_pretrained(tmp_path / "dst")
    with torch.no_grad():
        assert torch.equal(
            SparseTransformer.from_pretrained(tmp_path / "dst")(tokens_for(beeg)),
            model(tokens_for(beeg)),
        )


def test_missing_final_logits_bias_means_zeros(tmp_path):
    beeg = scaled_fixture("csp_sweep1_1x_0.9Mnonzero_afrac0.125")
    sd = random_openai_state(beeg)
    del sd["final_logits_bias"]
    model = import_openai(write_openai_dir(tmp_path / "src", beeg, sd))
    assert torch.equal(model.unembed.b_U, torch.zeros(beeg["vocab_size"]))
    assert_same_as_reference(model, beeg, sd, tokens_for(beeg))


def test_old_n_mlp_name_is_accepted(tmp_path):
    beeg = scaled_fixture("csp_bridges1")
    beeg["n_mlp"] = beeg.pop("d_mlp")
    sd = random_openai_state(beeg)
    model = import_openai(write_openai_dir(tmp_path / "src", beeg, sd))
    assert model.cfg.d_mlp == beeg["n_mlp"]
    assert_same_as_reference(model, beeg, sd, tokens_for(beeg))


# ------------------------------------------------------------------ errors a user can cause
def test_missing_weights_file_is_named_and_cli_exits_2(tmp_path, capsys):
    src = tmp_path / "src"
    src.mkdir()
    (src / "beeg_config.json").write_text(json.dumps(scaled_fixture("csp_yolo2")))
    with pytest.raises(SparseLensError, match="final_model.pt"):
        import_openai(src)
    assert main(["import-openai", str(src), str(tmp_path / "dst")]) == 2
    err = capsys.readouterr().err
    assert (
        err.count("\n") == 1 and "final_model.pt" in err and err.startswith("sparse-lens: error:")
    )
    assert not (tmp_path / "dst").exists()


def test_cli_imports_and_prints_one_line(tmp_path, capsys):
    beeg = scaled_fixture("csp_yolo2")
    src = write_openai_dir(tmp_path / "src", beeg, random_openai_state(beeg))
    assert main(["import-openai", str(src), str(tmp_path / "dst")]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and "imported" in out
    assert SparseTransformer.from_pretrained(tmp_path / "dst").cfg.attn_sink


def test_unknown_architecture_key_is_named(tmp_path):
    beeg = {**scaled_fixture("csp_bridges2"), "mup_scaling": True}
    src = write_openai_dir(
        tmp_path / "src", beeg, random_openai_state(scaled_fixture("csp_bridges2"))
    )
    with pytest.raises(SparseLensError, match="mup_scaling") as info:
        import_openai(src)
    assert info.value.field == "mup_scaling"
    # training-only keys (the explicit list, and any debug_* flag) are tolerated
    convert_openai_config(
        {
            **scaled_fixture("csp_bridges2"),
            "debug_something_new": 1,
            **dict.fromkeys(TRAINING_ONLY_KEYS, 0),
        }
    )


@pytest.mark.parametrize(
    "change,field",
    [
        (dict(rms_norm=False), "rms_norm"),
        (dict(bigram_table_rank=64), "bigram_table_rank"),
        (dict(activation_type="swiglu"), "activation_type"),
        (dict(afrac_loctypes="attn_in,attn_y"), "afrac_loctypes"),
        (dict(n_embd=999), "n_embd"),
        (dict(n_mlp=7), "n_mlp"),
        (dict(afrac=1.5), None),
    ],
)
def test_unsupported_config_values_are_named(change, field):
    beeg = {**scaled_fixture("csp_bridges1"), **change}
    with pytest.raises(SparseLensError) as info:
        convert_openai_config(beeg, source="beeg_config.json")
    assert "beeg_config.json" in str(info.value)
    if field is not None:
        assert info.value.field == field and field in str(info.value)
    if "rms_norm" in change:
        assert "LayerNorm" in str(info.value)


def test_missing_rms_norm_key_means_layernorm_and_is_refused():
    beeg = scaled_fixture("dense1_4x")
    del beeg["rms_norm"]  # their GPTConfig default is LayerNorm
    with pytest.raises(SparseLensError, match="LayerNorm"):
        convert_openai_config(beeg)


def test_weights_that_do_not_match_the_config_are_named(tmp_path):
    beeg = scaled_fixture("csp_sweep1_2x_1.9Mnonzero_afrac0.125")
    sd = random_openai_state(beeg)
    sd["transformer.h.1.mlp.c_fc.weight"] = sd["transformer.h.1.mlp.c_fc.weight"][:-1]
    with pytest.raises(SparseLensError, match=r"transformer\.h\.1\.mlp\.c_fc\.weight"):
        import_openai(write_openai_dir(tmp_path / "a", beeg, sd))
    sd = random_openai_state(beeg)
    del sd["bigram_table"]
    with pytest.raises(SparseLensError, match="bigram_table"):
        import_openai(write_openai_dir(tmp_path / "b", beeg, sd))
    sd = random_openai_state(beeg)
    sd["transformer.h.0.attn.attn_imp.sink_logit"] = torch.zeros(beeg["n_head"])  # sink is off
    with pytest.raises(SparseLensError, match="sink_logit"):
        import_openai(write_openai_dir(tmp_path / "c", beeg, sd))


class NotATensor:
    def __reduce__(self):  # would run code if the file were fully unpickled
        return (print, ("unpickled!",))


def test_weights_are_loaded_with_weights_only(tmp_path, capsys):
    beeg = scaled_fixture("csp_bridges1")
    src = write_openai_dir(tmp_path / "src", beeg, {"transformer.wte.weight": torch.zeros(1)})
    torch.save({"transformer.wte.weight": NotATensor()}, src / "final_model.pt")
    with pytest.raises(SparseLensError, match="weights_only"):
        import_openai(src)
    assert "unpickled!" not in capsys.readouterr().out


def test_hook_name_mapping():
    assert openai_hook_name("0.resid_in", 2) == "blocks.0.hook_resid_pre"
    assert openai_hook_name("1.attn.q", 2) == "blocks.1.attn.hook_q"
    assert openai_hook_name("1.mlp.post_act", 2) == "blocks.1.mlp.hook_post"
    assert openai_hook_name("final_resid", 2) == "blocks.1.hook_resid_post"
    assert len(OPENAI_HOOK_NAMES) == 12
    for bad in ("2.attn.q", "0.attn.pattern", "resid_in"):
        with pytest.raises(SparseLensError):
            openai_hook_name(bad, 2)


# ------------------------------------------------------------------ tokenizer (GPT-2 format)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable unicode map (encoder.py)."""
    keep = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    chars, extra = {}, 0
    for b in range(256):
        if b in keep:
            chars[b] = chr(b)
        else:
            chars[b] = chr(256 + extra)
            extra += 1
    return chars


MERGES = [
    "h e",
    "l l",
    "he ll",
    "hell o",
    "Ġ w",
    "o r",
    "Ġw or",
    "l d",
    "Ġwor ld",
    "Ġ Ġ",
    "ĠĠ ĠĠ",
    "e t",
    "r et",
]


def write_gpt2_tokenizer(directory: Path, with_eot: bool = True) -> dict[str, int]:
    """A tiny synthetic vocab.bpe + encoder.json in GPT-2's format (ids: bytes, then merges)."""
    encoder = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    for merge in MERGES:
        encoder["".join(merge.split())] = len(encoder)
    if with_eot:
        encoder["<|endoftext|>"] = len(encoder)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "encoder.json").write_text(json.dumps(encoder))
    (directory / "vocab.bpe").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    return encoder


def gpt2_encode(text: str, encoder: dict[str, int]) -> list[int]:
    """GPT-2's BPE (regex split, byte map, lowest-rank merge first; whole words in the
    vocabulary taken directly, as tiktoken does)."""
    pattern = regex.compile(
        r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
    )
    ranks = {tuple(m.split()): r for r, m in enumerate(MERGES)}
    byte_map = bytes_to_unicode()
    ids = []
    for piece in pattern.findall(text):
        parts = [byte_map[b] for b in piece.encode("utf-8")]
        if "".join(parts) in encoder:
            ids.append(encoder["".join(parts)])
            continue
        while len(parts) > 1:
            rank, at = min(
                (ranks.get(pair, math.inf), i)
                for i, pair in enumerate(zip(parts, parts[1:], strict=False))
            )
            if rank == math.inf:
                break
            parts[at : at + 2] = [parts[at] + parts[at + 1]]
        ids.extend(encoder[p] for p in parts)
    return ids


TEXTS = [
    "hello world",
    "def hello():\n    return 'world'  \n\tret",
    "héllo ✓ wörld 123 hell o",
    "  worldworld",
]


def test_gpt2_bpe_files_become_a_tokenizers_bpe(tmp_path):
    encoder = write_gpt2_tokenizer(tmp_path)
    tokenizer = tokenizer_from_gpt2_bpe(tmp_path / "vocab.bpe", tmp_path / "encoder.json")
    assert tokenizer.get_vocab_size() == len(encoder)
    assert tokenizer.encode("hello world").ids == [encoder["hello"], encoder["Ġworld"]]
    for text in TEXTS:
        assert tokenizer.encode(text).ids == gpt2_encode(text, encoder), text
        assert tokenizer.decode(tokenizer.encode(text).ids) == text
    assert tokenizer.encode("a<|endoftext|>b").ids == [
        encoder["a"],
        encoder["<|endoftext|>"],
        encoder["b"],
    ]


def test_gpt2_bpe_without_eot_gets_it_appended(tmp_path):
    encoder = write_gpt2_tokenizer(tmp_path, with_eot=False)
    tokenizer = tokenizer_from_gpt2_bpe(tmp_path / "vocab.bpe", tmp_path / "encoder.json")
    assert tokenizer.token_to_id("<|endoftext|>") == len(encoder) == tokenizer.get_vocab_size() - 1


def test_import_with_tokenizer_files(tmp_path):
    encoder = write_gpt2_tokenizer(tmp_path / "src")
    beeg = {**scaled_fixture("csp_yolo2"), "vocab_size": len(encoder)}
    sd = random_openai_state(beeg)
    model = import_openai(write_openai_dir(tmp_path / "src", beeg, sd), tmp_path / "dst")
    assert model.tokenizer is not None
    tokens = model.to_tokens("hello world", prepend_bos=False)
    assert tokens[0].tolist() == [encoder["hello"], encoder["Ġworld"]]
    with torch.no_grad():
        torch.testing.assert_close(
            model(tokens), reference_forward(beeg, sd, tokens), atol=1e-5, rtol=1e-5
        )
    loaded = SparseTransformer.from_pretrained(tmp_path / "dst")
    assert loaded.to_string(tokens[0]) == "hello world"

    # the tokenizer can live elsewhere; a vocabulary that does not fit the model is named
    small = tmp_path / "small_tok"
    write_gpt2_tokenizer(small, with_eot=False)
    (small / "encoder.json").write_text(json.dumps({**encoder, "extra": len(encoder)}))
    with pytest.raises(SparseLensError, match="encoder.json"):
        import_openai(tmp_path / "src", tokenizer_dir=small)
    with pytest.raises(SparseLensError, match="vocab.bpe"):
        import_openai(tmp_path / "src", tokenizer_dir=tmp_path / "nowhere")
