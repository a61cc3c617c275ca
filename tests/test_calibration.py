"""Temperature scaling, the expected calibration error and the familiarity score, on data whose answers are known."""

import pytest
import torch
import torch.nn.functional as F

from contract.familiarity import familiarity
from trainer.calibration import acceptance_threshold, expected_calibration_error, fit_temperature, reliability


def sampled(n: int, temperature: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits whose labels are drawn from softmax(logits / temperature): calibrated at that temperature."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, 10, generator=g) * 4
    labels = torch.multinomial(F.softmax(logits / temperature, dim=1), 1, generator=g).squeeze(1)
    return logits, labels


@pytest.mark.parametrize("true", [0.5, 1.0, 2.5])
def test_the_fitted_temperature_is_the_one_that_drew_the_labels(true):
    logits, labels = sampled(20_000, true)
    assert fit_temperature(logits, labels) == pytest.approx(true, rel=0.05)


def test_calibrated_probabilities_have_a_small_ece_and_overconfident_ones_a_large_one():
    logits, labels = sampled(20_000, 2.0, seed=1)
    calibrated = F.softmax(logits / 2.0, dim=1)
    overconfident = F.softmax(logits, dim=1)
    assert expected_calibration_error(calibrated, labels) < 0.02
    assert expected_calibration_error(overconfident, labels) > 0.1
    # Temperature scaling moves no prediction, only the confidence.
    assert torch.equal(calibrated.argmax(dim=1), overconfident.argmax(dim=1))


def test_reliability_bins_are_shares_and_means_of_their_images():
    probabilities = torch.tensor([[0.95, 0.05], [0.55, 0.45], [0.6, 0.4], [0.05, 0.95]])
    labels = torch.tensor([0, 1, 0, 0])
    r = reliability(probabilities, labels, bins=10)
    assert sum(r["share"]) == pytest.approx(1.0)
    assert r["share"][9] == 0.5 and r["accuracy"][9] == 0.5 and r["confidence"][9] == pytest.approx(0.95)
    assert r["share"][5] == 0.25 and r["accuracy"][5] == 0.0  # 0.55: predicted 0, label 1
    assert expected_calibration_error(probabilities, labels, bins=10) == pytest.approx(
        0.5 * 0.45 + 0.25 * 0.55 + 0.25 * 0.4)


def test_the_threshold_accepts_the_share_asked_for():
    scores = torch.linspace(0, 1, 1001)
    threshold = acceptance_threshold(scores, accepted=0.95)
    assert (scores >= threshold).float().mean().item() == pytest.approx(0.95, abs=0.002)


def test_familiarity_is_the_similarity_to_the_kth_nearest_bank_row():
    bank = F.normalize(torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]]), dim=1)
    query = torch.tensor([[1.0, 0.0]])
    assert familiarity(query, bank, 1).item() == pytest.approx(1.0)
    assert familiarity(query, bank, 2).item() == pytest.approx(0.8)
    assert familiarity(query, bank, 3).item() == pytest.approx(0.0)
    assert familiarity(query, bank, 10).item() == pytest.approx(-1.0)  # k beyond the bank: its last
