import torch
from torch import nn

import trainer.features as features
from trainer.features import cached_features, extract_features


def test_extract_features_is_normalised_eval_mode_and_restores_mode():
    encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten())
    encoder.train()
    before = encoder[1].running_mean.clone()
    feats = extract_features(encoder, torch.randint(0, 256, (10, 3, 6, 6), dtype=torch.uint8), batch_size=4)
    assert feats.shape == (10, 64)
    torch.testing.assert_close(feats.norm(dim=1), torch.ones(10))
    assert torch.equal(encoder[1].running_mean, before) and encoder.training


def test_the_cache_is_keyed_by_weights_images_and_flips_and_survives_damage(tmp_path, monkeypatch):
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten())
    images = torch.randint(0, 256, (6, 3, 5, 5), dtype=torch.uint8)
    first = cached_features(tmp_path, "train", encoder, images)
    calls = []
    real = features.extract_features
    monkeypatch.setattr(features, "extract_features", lambda *a, **k: calls.append(1) or real(*a, **k))

    assert torch.equal(cached_features(tmp_path, "train", encoder, images), first) and not calls  # read back
    cached_features(tmp_path, "train", encoder, images, flip_average=True)
    assert len(calls) == 2  # the image and its mirror image
    cached_features(tmp_path, "train", encoder, images[:3])
    with torch.no_grad():
        encoder[0].weight.add_(1)
    cached_features(tmp_path, "train", encoder, images)
    assert len(calls) == 4 and len(list(tmp_path.glob("train-*.npz"))) == 4

    for path in tmp_path.glob("train-*.npz"):
        path.write_bytes(b"damaged")
    again = cached_features(tmp_path, "train", encoder, images)
    assert len(calls) == 5 and torch.equal(again, extract_features(encoder, images, l2_normalize=False))
