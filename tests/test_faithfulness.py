"""Faithfulness metrics: agreement, KL, gain fraction and pair-bootstrap intervals."""

import math

import pytest
import torch

from sparse_lens.circuits.faithfulness import (
    bootstrap_means,
    circuit_faithfulness,
    per_prompt,
    target_from_fraction,
)


def _batch(n_pairs: int, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    label = torch.tensor([0, 1] * n_pairs)
    correct_sign = torch.where(label == 0, 1.0, -1.0)[:, None] * torch.tensor([1.0, -1.0])
    logits = correct_sign + torch.randn(2 * n_pairs, 2, generator=generator) * 1.5  # a weak model
    pair_index = torch.arange(n_pairs).repeat_interleave(2)
    return logits, label, pair_index


def test_a_circuit_equal_to_its_model_is_perfectly_faithful():
    logits, label, pairs = _batch(64)
    empty = torch.zeros_like(logits)
    report = circuit_faithfulness(logits, logits.clone(), label, pairs, reference_logits=empty)
    assert report.agreement.value == 1.0 and report.agreement.low == 1.0
    assert report.kl.value == pytest.approx(0.0, abs=1e-12)
    assert report.circuit_loss.value == pytest.approx(report.full_loss.value)
    assert report.gain_fraction.value == pytest.approx(1.0)
    assert report.n_prompts == 128 and report.n_pairs == 64


def test_a_circuit_that_flips_every_answer_disagrees_and_has_large_kl():
    logits, label, pairs = _batch(64)
    report = circuit_faithfulness(logits, logits.flip(-1), label, pairs)
    ties = (logits[:, 0] == logits[:, 1]).sum()
    assert ties == 0
    assert report.agreement.value == 0.0
    assert report.kl.value > 0.5
    assert not report.meets(target_loss=10.0)


def test_kl_matches_the_closed_form_for_two_answers():
    full = torch.tensor([[2.0, 0.0]])
    circuit = torch.tensor([[0.0, 0.0]])
    values = per_prompt(full, circuit, torch.tensor([0]))
    p = 1 / (1 + math.exp(-2.0))
    expected = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    assert float(values["kl"][0]) == pytest.approx(expected, rel=1e-12)


def test_a_circuit_better_than_its_model_has_gain_fraction_above_one():
    logits, label, pairs = _batch(128)
    correct_sign = torch.where(label == 0, 1.0, -1.0)
    perfect = torch.stack([correct_sign * 20, -correct_sign * 20], dim=-1)
    report = circuit_faithfulness(
        logits, perfect, label, pairs, reference_logits=torch.zeros_like(logits)
    )
    assert report.full_loss.value > 0.3  # a weak model
    assert report.gain_fraction.value > 1.0 and report.gain_fraction.low > 1.0
    assert report.agreement.value < 0.9  # right where the model is wrong: disagrees


def test_bootstrap_keeps_pairs_together_and_is_seeded():
    # Each pair's two prompts carry opposite values, so every resample of whole pairs has mean
    # exactly 0; resampling prompts independently would not.
    n = 50
    value = torch.tensor([1.0, -1.0] * n) * torch.arange(n).repeat_interleave(2)
    pairs = torch.arange(n).repeat_interleave(2)
    means = bootstrap_means({"v": value}, pairs, n_resamples=200, seed=3)["v"]
    assert torch.allclose(means, torch.zeros_like(means), atol=1e-12)
    again = bootstrap_means({"v": value + 1}, pairs, n_resamples=200, seed=3)["v"]
    other = bootstrap_means({"v": value + 1}, pairs, n_resamples=200, seed=4)["v"]
    assert torch.equal(
        again, bootstrap_means({"v": value + 1}, pairs, n_resamples=200, seed=3)["v"]
    )
    assert torch.allclose(again, torch.ones_like(again))
    assert other.shape == again.shape


def test_bootstrap_interval_width_matches_the_standard_error():
    generator = torch.Generator().manual_seed(0)
    n_pairs = 400
    full, label, pairs = _batch(n_pairs)
    circuit = full + torch.randn(full.shape, generator=generator) * 2
    report = circuit_faithfulness(full, circuit, label, pairs, n_resamples=2000)
    agree = per_prompt(full, circuit, label)["agreement"].view(n_pairs, 2).mean(-1)
    standard_error = float(agree.std() / math.sqrt(n_pairs))
    width = report.agreement.high - report.agreement.low
    assert width == pytest.approx(2 * 1.96 * standard_error, rel=0.15)
    assert report.agreement.low <= report.agreement.value <= report.agreement.high


def test_target_from_fraction_and_shape_checks():
    assert target_from_fraction(full_loss=0.1, empty_loss=0.7, fraction=0.9) == pytest.approx(0.16)
    with pytest.raises(ValueError):
        target_from_fraction(0.1, 0.7, 0.0)
    logits, label, pairs = _batch(4)
    with pytest.raises((ValueError, TypeError)):  # TypeError: jaxtyping checks in the tests
        per_prompt(logits, logits[:-1], label)
