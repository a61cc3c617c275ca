"""Temperature scaling, the expected calibration error and the familiarity score, on data whose answers are known."""

import pytest
import torch
import torch.nn.functional as F

from contract.familiarity import distance, gaussian
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
    distances = torch.linspace(0, 1, 1001)[torch.randperm(1001)]
    threshold = acceptance_threshold(distances, accepted=0.95)
    assert (distances <= threshold).float().mean().item() == pytest.approx(0.95, abs=0.002)


def test_the_distance_is_mahalanobis_to_the_nearest_class_mean():
    g = torch.Generator().manual_seed(0)
    means = F.normalize(torch.randn(3, 4, generator=g), dim=1)
    a = torch.randn(4, 4, generator=g)
    precision = a @ a.T + torch.eye(4)  # any symmetric positive definite matrix
    x = F.normalize(torch.randn(6, 4, generator=g), dim=1)
    explicit = torch.stack([torch.stack([((v - m) @ precision @ (v - m)).sqrt() for m in means]) for v in x])
    torch.testing.assert_close(distance(x, means, precision), explicit.min(dim=1).values, rtol=1e-4, atol=1e-4)


def test_the_gaussian_of_the_training_representations_and_an_outlier_far_from_it():
    g = torch.Generator().manual_seed(1)
    centres = torch.eye(8)[:4] * 10
    labels = torch.arange(4).repeat_interleave(200)
    x = centres[labels] + torch.randn(800, 8, generator=g)  # normalised, each class a tight cap on the sphere
    means, precision = gaussian(x, labels, 4)
    torch.testing.assert_close(means, F.normalize(F.normalize(x, dim=1).view(4, 200, 8).mean(dim=1), dim=1) *
                               means.norm(dim=1, keepdim=True), rtol=1e-4, atol=1e-5)
    assert means.dtype == precision.dtype == torch.float32 and precision.shape == (8, 8)
    inliers = distance(F.normalize(centres[labels[:40]] + torch.randn(40, 8, generator=g), dim=1), means, precision)
    outlier = distance(F.normalize(-torch.ones(1, 8), dim=1), means, precision)
    assert outlier.item() > 3 * inliers.max().item()
