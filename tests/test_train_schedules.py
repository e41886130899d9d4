"""L0 annealing, the sharkfin LR, the optimizer recipe and the training config."""

from __future__ import annotations

import math

import pytest
import torch

from sparse_lens.errors import SparseLensError
from sparse_lens.train.config import (
    TrainConfig,
    apply_overrides,
    config_from_dict,
    load_preset,
    parse_value,
    preset_names,
)
from sparse_lens.train.optim import (
    apply_weight_decay_,
    build_optimizer,
    load_optimizer_state,
    normalize_grad_rms_,
    save_optimizer_state,
)
from sparse_lens.train.schedules import Schedule


def test_l0_anneals_linearly_between_start_and_end():
    s = Schedule(total_steps=1000, lr=1.0, l0_target=1 / 16, anneal_start=0.01, anneal_end=0.5)
    assert s.l0(0) == 1.0
    assert s.l0(9) == 1.0  # 10 steps done = 1%: still dense
    assert s.l0(499) == pytest.approx(1 / 16)  # 500 steps done = 50%: at target
    assert s.l0(999) == 1 / 16
    mid = s.l0(254)  # 255 done: halfway between 10 and 500
    assert mid == pytest.approx(1 + 0.5 * (1 / 16 - 1))
    values = [s.l0(t) for t in range(1000)]
    assert all(a >= b for a, b in zip(values, values[1:], strict=False))
    steps = [a - b for a, b in zip(values[10:499], values[11:500], strict=True)]
    assert max(steps) == pytest.approx(min(steps))  # linear


def test_anneal_end_is_configurable():
    s = Schedule(total_steps=100, lr=1.0, l0_target=0.01, anneal_end=0.8)
    assert s.l0(49) > 0.01
    assert s.l0(79) == pytest.approx(0.01)


def test_sharkfin_lr():
    s = Schedule(total_steps=1000, lr=0.1, l0_target=1 / 16, warmup_frac=0.01)
    # warmup: linear over the first 10 steps
    assert s.learning_rate(0) == pytest.approx(0.1 * 0.1 * s.l0_factor(0))
    assert s.warmup(9) == 1.0
    # L0 factor: <= 1, exactly sqrt(target) while dense, 1 once annealed
    assert s.l0_factor(0) == pytest.approx(0.25)
    assert all(s.l0_factor(t) <= 1.0 for t in range(1000))
    assert s.l0_factor(600) == 1.0
    # decays linearly to ~0
    assert s.learning_rate(999) == pytest.approx(0.1 / 1000)
    assert s.learning_rate(600) == pytest.approx(0.1 * 0.4)
    lrs = [s.learning_rate(t) for t in range(1000)]
    peak = max(range(1000), key=lambda t: lrs[t])
    assert 10 < peak <= 500  # rises while sparsifying, a shark fin, not a warmup spike


def test_dense_schedule_is_warmup_plus_linear_decay():
    s = Schedule(total_steps=200, lr=0.01, l0_target=1.0, warmup_frac=0.05)
    for t in range(200):
        assert s.l0(t) == 1.0
        expected = 0.01 * min(1.0, (t + 1) / 10) * (1 - t / 200)
        assert s.learning_rate(t) == pytest.approx(expected)


def test_schedule_validation():
    with pytest.raises(ValueError, match="l0_target"):
        Schedule(total_steps=10, lr=1.0, l0_target=0.0)
    with pytest.raises(ValueError, match="anneal"):
        Schedule(total_steps=10, lr=1.0, anneal_start=0.6, anneal_end=0.5)


def test_grad_rms_normalisation():
    a = torch.nn.Parameter(torch.zeros(10))
    b = torch.nn.Parameter(torch.zeros(3, 5))
    a.grad = torch.full((10,), 3.0)
    b.grad = torch.full((3, 5), -3.0)
    rms = normalize_grad_rms_([a, b])
    assert rms == pytest.approx(3.0)
    total = torch.cat([a.grad.reshape(-1), b.grad.reshape(-1)])
    assert float(total.pow(2).mean().sqrt()) == pytest.approx(1.0)
    g = torch.randn(7, generator=torch.Generator().manual_seed(0))
    c = torch.nn.Parameter(torch.zeros(7))
    c.grad = g.clone()
    normalize_grad_rms_([c])
    assert torch.allclose(c.grad, g / g.pow(2).mean().sqrt())


def test_weight_decay_keeps_zeros():
    w = torch.tensor([0.0, 1.0, -2.0])
    apply_weight_decay_([w], lr=0.5, weight_decay=0.1)
    assert torch.equal(w, torch.tensor([0.0, 0.95, -1.9]))


def test_optimizer_recipe_and_state_roundtrip(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    names = [n for n, _ in model.named_parameters()]
    opt = build_optimizer(model, lr=0.01)
    group = opt.param_groups[0]
    assert group["betas"] == (0.9, 0.95) and group["eps"] == 0.1 and group["weight_decay"] == 0
    for _ in range(3):
        model(torch.randn(5, 4)).pow(2).sum().backward()
        opt.step()
    save_optimizer_state(opt, names, tmp_path / "opt.safetensors")
    fresh = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2))
    fresh.load_state_dict(model.state_dict())
    opt2 = build_optimizer(fresh, lr=0.01)
    load_optimizer_state(opt2, names, tmp_path / "opt.safetensors")
    x = torch.randn(5, 4)
    for m, o in ((model, opt), (fresh, opt2)):
        o.zero_grad()
        m(x).pow(2).sum().backward()
        o.step()
    for p, q in zip(model.parameters(), fresh.parameters(), strict=True):
        assert torch.equal(p, q)
    with pytest.raises(SparseLensError, match="different architecture"):
        load_optimizer_state(opt2, ["x", "y", "z", "w"], tmp_path / "opt.safetensors")


# ------------------------------------------------------------------------------- config


def test_presets_registry_loads():
    assert {"tiny", "cpu", "paper"} <= set(preset_names())
    for name in preset_names():
        run = load_preset(name)
        run.model_config(d_vocab=run.train.vocab_size)  # a valid architecture
    paper = load_preset("paper")
    assert paper.model["n_layers"] == 8 and paper.model["d_model"] == 2048
    assert paper.train.l0_target <= 1 / 500
    cpu = load_preset("cpu")
    assert cpu.train.l0_target <= 1 / 16
    assert cpu.model["afrac"] == 0.25 and cpu.model["bigram_table"] != "off"


def test_unknown_preset():
    with pytest.raises(SparseLensError, match="unknown preset"):
        load_preset("nope")


def test_overrides_are_typed_by_field():
    run = load_preset("tiny")
    run = apply_overrides(
        run,
        [
            "steps=7",
            "l0_target=1/32",
            "grad_rms_norm=false",
            "corpus=a,b",
            "d_model=48",
            "model.afrac=none",
            "train.tokenizer=x.json",
            "afrac_locations=attn_in,mlp_in",
        ],
    )
    assert run.train.steps == 7 and isinstance(run.train.steps, int)
    assert run.train.l0_target == 1 / 32
    assert run.train.grad_rms_norm is False
    assert run.train.corpus == ["a", "b"]
    assert run.train.tokenizer == "x.json"
    assert run.model["d_model"] == 48 and run.model["afrac"] is None
    assert run.model["afrac_locations"] == ("attn_in", "mlp_in")


@pytest.mark.parametrize(
    "override,field",
    [
        ("bogus=1", "bogus"),
        ("train.d_model=3", "train.d_model"),
        ("steps=ten", "steps"),
        ("steps=1.5", "steps"),
        ("novalue", "novalue"),
        ("lr=-1", "lr"),
    ],
)
def test_bad_overrides(override, field):
    with pytest.raises(SparseLensError) as info:
        apply_overrides(load_preset("tiny"), [override])
    assert info.value.field == field


def test_config_file_refuses_unknown_keys():
    with pytest.raises(SparseLensError, match="unknown training field"):
        config_from_dict({"train": {"stepz": 3}})
    with pytest.raises(SparseLensError, match="unknown config field"):
        config_from_dict({"model": {"n_layer": 3}})
    with pytest.raises(SparseLensError, match="expected int"):
        config_from_dict({"train": {"steps": "3"}})
    with pytest.raises(SparseLensError, match="unknown table"):
        config_from_dict({"optim": {}})
    assert config_from_dict({"train": {"lr": 1}}).train.lr == 1.0


def test_parse_value_edge_cases():
    assert parse_value("3e2", int, "k") == 300
    assert parse_value('"quoted"', str, "k") == "quoted"
    assert parse_value("[1, 2]", list[str], "k") == ["1", "2"]
    assert math.isclose(parse_value("0.5", float, "k"), 0.5)


def test_train_config_validation():
    with pytest.raises(SparseLensError) as info:
        TrainConfig(anneal_start=0.6, anneal_end=0.5)
    assert info.value.field == "anneal_start"
    assert TrainConfig(l0_target=1.0).dense
