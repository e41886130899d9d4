"""Bridges: hybrid forwards, the loss and the post-hoc fit, files, steering, the joint route, CLI."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import MODEL_VARIANTS, random_tokens, tiny_model, tiny_model_with_tokenizer

from sparse_lens.bridges import (
    Bridges,
    FitConfig,
    LossWeights,
    bridge_loss,
    evaluate_bridges,
    fit_bridges,
    load_bridges,
    residuals_at_sites,
    run_from_site,
    save_bridges,
    steer,
    steering_hook,
    steering_node,
)
from sparse_lens.bridges.task_steering import partner_values
from sparse_lens.cli import main
from sparse_lens.errors import SparseLensError

pytestmark = pytest.mark.usefixtures("one_thread")


def identity_bridges(model) -> Bridges:
    width = model.cfg.d_model
    bridges = Bridges(model.cfg.n_layers, width, width, encoder_frac=None)
    with torch.no_grad():
        for linear in [*bridges.encoders, *bridges.decoders]:
            linear.weight.copy_(torch.eye(width))
            linear.bias.zero_()
    return bridges


def token_batches(model, n: int, seed: int = 0, batch: int = 4, n_pos: int = 16):
    return [random_tokens(model, batch, n_pos, seed=seed + i) for i in range(n)]


@pytest.mark.parametrize("variant", sorted(MODEL_VARIANTS))
def test_identity_bridges_between_a_model_and_itself_reproduce_its_logits(variant):
    model = tiny_model(seed=3, **MODEL_VARIANTS[variant]).requires_grad_(False)
    bridges = identity_bridges(model)
    tokens = random_tokens(model, 2, 12)
    logits, resid = residuals_at_sites(model, tokens, bridges.sites)
    torch.testing.assert_close(logits, model(tokens))
    assert len(bridges.sites) == 2 * model.cfg.n_layers
    for site in bridges.sites:
        for mapped in (
            bridges.encode(site.index, resid[site.index]),
            bridges.decode(site.index, resid[site.index]),
        ):
            torch.testing.assert_close(
                run_from_site(model, mapped, site, tokens), logits, atol=1e-5, rtol=1e-5
            )
    terms = bridge_loss(model, model, bridges, tokens, LossWeights(ce=0.0))
    assert float(terms.total.detach()) == pytest.approx(0.0, abs=1e-6)


def test_a_site_switch_changes_the_hybrid():
    """Guards the identity test: a wrong residual at a site must change the logits."""
    model = tiny_model(seed=3).requires_grad_(False)
    tokens = random_tokens(model, 2, 12)
    _, resid = residuals_at_sites(model, tokens, Bridges(2, 32, 32).sites)
    site = Bridges(2, 32, 32).sites[1]
    moved = run_from_site(model, resid[site.index] + 1.0, site, tokens)
    assert not torch.allclose(moved, model(tokens), atol=1e-3)


def sharp(model, scale: float = 40.0):
    """Random tiny models predict near-uniform tokens, where every hybrid's KL is tiny; a larger
    unembedding gives them confident predictions for the KL terms to compare."""
    with torch.no_grad():
        model.unembed.W_U.mul_(scale)
    return model.requires_grad_(False)


def test_post_hoc_fit_lowers_the_loss():
    dense = sharp(tiny_model(seed=0))
    sparse = sharp(tiny_model(seed=1, d_model=48, d_head=16))
    data = token_batches(dense, 40)
    config = FitConfig(
        steps=30, lr=3e-3, ridge_batches=4, encoder_frac=0.5, weights=LossWeights(ce=0.0)
    )
    result = fit_bridges(dense, sparse, lambda step: data[step % len(data)], config)
    losses = [h["loss"] for h in result.history]
    assert result.steps == 30 and len(losses) == 30
    assert sum(losses[-5:]) / 5 < 0.95 * losses[0]  # Adam improves on the ridge solution
    # both models stay frozen: only the bridges learn
    assert all(not p.requires_grad for m in (dense, sparse) for p in m.parameters())


def test_fitted_bridges_beat_untrained_ones_on_every_site():
    """A model bridged to itself: the fit should find (nearly) the identity, untrained bridges
    cannot, so every hybrid's KL and every reconstruction is far better after fitting."""
    model = sharp(tiny_model(seed=0))
    data = token_batches(model, 8)
    config = FitConfig(steps=0, ridge_batches=8, encoder_frac=None)
    fitted = fit_bridges(model, model, lambda step: data[step], config).bridges
    held_out = token_batches(model, 2, seed=100)
    ours = evaluate_bridges(model, model, fitted, held_out)
    theirs = evaluate_bridges(model, model, Bridges.for_pair(model, model, None), held_out)
    assert ours["kl_sparse"] == pytest.approx(0.0, abs=1e-6)
    for fit_site, random_site in zip(ours["sites"], theirs["sites"], strict=True):
        for metric in ("kl_enc", "kl_dec", "kl_roundtrip", "nmse_enc", "nmse_dec"):
            assert fit_site[metric] < 0.1 * random_site[metric], (fit_site["site"], metric)
        assert random_site["kl_enc"] > 0.05


def test_ridge_solves_a_linear_map_exactly():
    from sparse_lens.bridges.fit import ridge_solve

    generator = torch.Generator().manual_seed(0)
    x = torch.randn(500, 6, generator=generator)
    weight, bias = torch.randn(4, 6, generator=generator), torch.randn(4, generator=generator)
    fitted_weight, fitted_bias = ridge_solve(x, x @ weight.T + bias, ridge=0.0)
    torch.testing.assert_close(fitted_weight, weight, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fitted_bias, bias, atol=1e-4, rtol=1e-4)


def test_save_load_round_trip(tmp_path):
    dense, sparse = tiny_model(seed=0), tiny_model(seed=1, d_model=48, d_head=16)
    bridges = Bridges.for_pair(dense, sparse, 0.25, seed=4)
    out = save_bridges(bridges, tmp_path / "b", "dense-ref", "/abs/sparse", {"route": "test"})
    loaded, info = load_bridges(out)
    assert info["dense"] == "dense-ref" and info["route"] == "test"
    assert info["bridges"] == {"n_layers": 2, "d_dense": 32, "d_sparse": 48, "encoder_frac": 0.25}
    for key, value in bridges.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[key], value, rtol=0, atol=0)
    h = torch.randn(3, 32)
    torch.testing.assert_close(loaded.encode(1, h), bridges.encode(1, h))
    save_bridges(loaded, out, "again", "again")  # overwrite in place, atomically
    assert load_bridges(out)[1]["dense"] == "again"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no staging left behind


def test_load_rejects_a_mismatched_or_broken_directory(tmp_path):
    bridges = Bridges(2, 32, 48)
    out = save_bridges(bridges, tmp_path / "b", "d", "s")
    record = json.loads((out / "bridges.json").read_text())
    record["bridges"]["d_sparse"] = 64
    (out / "bridges.json").write_text(json.dumps(record))
    with pytest.raises(SparseLensError, match="do not match"):
        load_bridges(out)
    with pytest.raises(SparseLensError, match="bridges.json"):
        load_bridges(tmp_path / "missing")
    with pytest.raises(SparseLensError, match="width"):
        bridges.check_models(tiny_model(seed=0), tiny_model(seed=1))


def test_pairs_need_one_vocabulary_and_layer_count():
    with pytest.raises(SparseLensError, match="d_vocab"):
        Bridges.for_pair(tiny_model(seed=0), tiny_model(seed=1, d_vocab=80))
    with pytest.raises(SparseLensError, match="layer"):
        Bridges.for_pair(tiny_model(seed=0), tiny_model(seed=1, n_layers=1))


def steering_setup():
    dense = tiny_model(seed=0).requires_grad_(False)
    sparse = tiny_model(seed=1, d_model=48, d_head=16).requires_grad_(False)
    bridges = Bridges.for_pair(dense, sparse, None, seed=2)
    return dense, sparse, bridges, random_tokens(dense, 3, 10)


def test_steering_at_strength_zero_is_a_no_op_and_the_edit_is_linear_in_strength():
    dense, sparse, bridges, tokens = steering_setup()
    node = steering_node(sparse, "blocks.1.attn.hook_read[5]")
    clean = dense(tokens)
    outputs = {}
    for strength in (0.0, 0.5, 1.0):
        hook = steering_hook(sparse, bridges, node, 2.0, strength, rms_sparse=1.3)
        with dense.hooks(fwd_hooks=[hook]):
            outputs[strength] = residuals_at_sites(dense, tokens, bridges.sites)[1][node.site.index]
            logits = dense(tokens)
        if strength == 0.0:
            torch.testing.assert_close(logits, clean, rtol=0, atol=0)
        else:
            assert not torch.allclose(logits, clean, atol=1e-4)
    half = outputs[0.5] - outputs[0.0]
    torch.testing.assert_close(outputs[1.0] - outputs[0.0], 2 * half, atol=1e-5, rtol=1e-4)
    row = bridges.decoders[node.site.index].weight[:, node.channel]
    cosine = torch.nn.functional.cosine_similarity(half.reshape(-1, 32), row[None], dim=-1)
    moved = half.reshape(-1, 32).norm(dim=-1) > 1e-6
    assert moved.any() and torch.allclose(
        cosine[moved].abs(), torch.ones(int(moved.sum())), atol=1e-4
    )


def test_steer_curve_starts_at_the_clean_logit_difference():
    dense, sparse, bridges, tokens = steering_setup()
    position = torch.full((3,), 9)
    a, b = torch.tensor([1, 2, 3]), torch.tensor([4, 5, 6])
    curve = steer(
        dense,
        sparse,
        bridges,
        "blocks.0.mlp.hook_read[3]",
        tokens,
        (position, a, b),
        1.5,
        [0.0, 1.0],
    )
    clean = dense(tokens)[torch.arange(3), position]
    assert curve.logit_diff[0] == pytest.approx(
        float((clean[torch.arange(3), a] - clean[torch.arange(3), b]).mean()), abs=1e-5
    )
    assert curve.logit_diff[1] != pytest.approx(curve.logit_diff[0], abs=1e-6)
    assert curve.rms_dense > 0 and curve.rms_sparse > 0


@pytest.mark.parametrize(
    "node, message",
    [
        ("blocks.0.mlp.hook_post[3]", "not a residual read node"),
        ("blocks.0.attn.hook_read[999]", "out of range"),
        ("blocks.9.attn.hook_read[1]", "not a node site"),
        ("nonsense", "not a node name"),
    ],
)
def test_steering_rejects_nodes_it_cannot_steer(node, message):
    with pytest.raises(SparseLensError, match=message):
        steering_node(tiny_model(seed=1), node)


def test_partner_values_swap_pairs_and_refuse_unequal_lengths():
    from types import SimpleNamespace

    values = torch.arange(8.0).reshape(4, 2)
    swapped = partner_values(values, SimpleNamespace(last_pos=torch.tensor([1, 1, 0, 0])))
    torch.testing.assert_close(swapped, values[[1, 0, 3, 2]])
    with pytest.raises(SparseLensError, match="different token lengths"):
        partner_values(values, SimpleNamespace(last_pos=torch.tensor([1, 0, 1, 1])))


# ------------------------------------------------------------------------------ CLI


@pytest.fixture
def model_dirs(tmp_path):
    dense = tiny_model_with_tokenizer(seed=0)
    sparse = tiny_model_with_tokenizer(seed=1, d_model=48, d_head=16)
    dense.save_pretrained(tmp_path / "dense")
    sparse.save_pretrained(tmp_path / "sparse")
    other_vocab = tiny_model(seed=2, n_ctx=64)
    other_vocab.save_pretrained(tmp_path / "other")
    return tmp_path


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    return code, capsys.readouterr()


@pytest.mark.parametrize(
    "argv, message",
    [
        (["bridge", "fit", "{t}/dense", "{t}/other", "--out", "{t}/b"], "d_vocab"),
        (
            ["bridge", "fit", "{t}/dense", "{t}/missing", "--out", "{t}/b"],
            "no such model directory",
        ),
        (
            ["bridge", "fit", "{t}/dense", "{t}/sparse", "--out", "{t}/b", "--weights", "kl=1"],
            "weights",
        ),
        (
            ["bridge", "fit", "{t}/dense", "{t}/sparse", "--out", "{t}/b", "--encoder-frac", "2"],
            "encoder_frac",
        ),
        (["bridge", "fit", "{t}/dense", "{t}/sparse", "--out", "{t}/b", "--n-ctx", "999"], "n-ctx"),
        (["bridge", "eval", "{t}/dense"], "bridges.json"),
    ],
)
def test_cli_bad_input_exits_2(model_dirs, capsys, argv, message):
    code, out = run_cli([a.format(t=model_dirs) for a in argv], capsys)
    assert code == 2
    assert message in out.err and out.err.startswith("sparse-lens: error:")


def test_cli_fit_eval_and_steer(model_dirs, capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSE_LENS_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    import inspect

    for i, module in enumerate((json, inspect, pytest)):
        (corpus / f"m{i}.py").write_text(inspect.getsource(module))
    out = tmp_path / "bridges"
    common = ["--corpus", corpus, "--no-progress", "--n-ctx", 32]
    code, printed = run_cli(
        [
            "bridge",
            "fit",
            tmp_path / "dense",
            tmp_path / "sparse",
            "--out",
            out,
            "--steps",
            3,
            "--ridge-batches",
            2,
            "--eval-batches",
            1,
            *common,
        ],
        capsys,
    )
    assert code == 0, printed.err
    assert "L1.mlp" in printed.out and "ctl_kl_enc" in printed.out
    info = json.loads((out / "bridges.json").read_text())
    assert (
        info["route"] == "post hoc" and info["steps_done"] == 3 and len(info["eval"]["sites"]) == 4
    )
    code, printed = run_cli(
        ["bridge", "eval", out, "--batches", 1, "--json", tmp_path / "e.json", *common], capsys
    )
    assert code == 0, printed.err
    assert len(json.loads((tmp_path / "e.json").read_text())["bridges"]["sites"]) == 4
    code, printed = run_cli(
        ["bridge", "eval", out, "--sparse", tmp_path / "dense", *common], capsys
    )
    assert code == 2 and "width" in printed.err
    code, printed = run_cli(["bridge", "steer", out, "--node", "blocks.0.mlp.hook_post[1]"], capsys)
    assert code == 2 and "not a residual read node" in printed.err
    code, printed = run_cli(
        ["bridge", "steer", out, "--node", "blocks.0.attn.hook_read[1]", "--strengths", "0,2"],
        capsys,
    )
    assert code == 2 and "strengths" in printed.err


# ------------------------------------------------------------------------------ joint route


def test_joint_route_trains_resumes_and_writes_a_plain_sparse_checkpoint(tmp_path, monkeypatch):
    from test_trainer import write_corpus

    from sparse_lens.bridges.joint import train_joint
    from sparse_lens.model import SparseTransformer
    from sparse_lens.train.checkpoint import read_state
    from sparse_lens.train.config import load_preset

    monkeypatch.setenv("SPARSE_LENS_CACHE", str(tmp_path / "cache"))
    corpus = write_corpus(tmp_path / "src")
    dense = tiny_model_with_tokenizer(seed=0, n_layers=1)
    dense.save_pretrained(tmp_path / "dense")
    out = tmp_path / "joint"
    overrides = [f'corpus=["{corpus}"]', "eval_interval=100", "checkpoint_interval=100"]
    first = train_joint(
        str(tmp_path / "dense"),
        load_preset("tiny"),
        out,
        overrides=[*overrides, "steps=4"],
        progress=False,
    )
    assert first.steps == 4 and first.heldout_loss is not None
    sparse = SparseTransformer.from_pretrained(out)  # a plain sparse model
    # the sparsifier found the wrapped model's weights: they are being projected to top-k
    assert float((sparse.blocks[0].attn.W_Q == 0).float().mean()) > 0.05
    assert json.loads((out / "training.json").read_text())["nonzero_fraction"]
    bridges, info = load_bridges(out / "bridges")
    assert info["route"] == "joint" and info["sparse"] == str(out.resolve())
    bridges.check_models(dense, sparse)
    assert any(bool(p.ne(0).any()) for p in bridges.parameters())
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    logged = [m for m in metrics if "bridge_sites" in m]
    assert logged and len(logged[-1]["bridge_sites"]) == 2
    before = {k: v.clone() for k, v in bridges.state_dict().items()}
    second = train_joint(
        str(tmp_path / "dense"), None, out, resume=True, overrides=["steps=6"], progress=False
    )
    assert second.steps == 6 and read_state(out)["step"] == 6
    after, _ = load_bridges(out / "bridges")
    assert any(not torch.equal(before[k], v) for k, v in after.state_dict().items())
