"""contract.preprocess: the one input normalisation, with the numbers the three copies it replaced computed."""

from __future__ import annotations

import torch

from contract.preprocess import CIFAR_MEAN, CIFAR_STD, Preprocess, normalize, preprocess, to_float


def test_normalize_uses_cifar_statistics():
    x = torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    assert normalize(x).abs().max() < 1e-6


def test_the_function_and_the_module_compute_the_service_s_numbers_bit_for_bit():
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8).contiguous(memory_format=torch.channels_last)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    expected = (images.float() / 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    assert torch.equal(preprocess(images, mean, std), expected)
    assert torch.equal(Preprocess(mean, std)(images), expected)
    assert torch.equal(preprocess(images), normalize(to_float(images), CIFAR_MEAN, CIFAR_STD))
    assert Preprocess(mean, std).state_dict() == {}  # the manifest holds mean and std, not the weights
