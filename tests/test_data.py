import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import PATTERNS
from trainer.data import DeviceLoader, balanced_subset, load_split
from trainer.errors import UserError


def test_image_folder_splits_labels_and_cache(pattern_folder, tmp_path):
    train = load_split(pattern_folder, "train", 16, cache_dir=tmp_path / "cache")
    test = load_split(pattern_folder, "test", 16, cache_dir=tmp_path / "cache")
    assert train.images.shape == (64, 3, 16, 16) and train.images.dtype == torch.uint8
    assert train.classes == list(sorted(PATTERNS)) and train.labelled
    assert torch.bincount(train.labels).tolist() == [16] * 4 and len(test) == 32
    assert len(list((tmp_path / "cache").glob("*.npz"))) == 2
    again = load_split(pattern_folder, "train", 16, cache_dir=tmp_path / "cache")
    assert torch.equal(again.images, train.images) and again.classes == train.classes


def test_pixels_survive_decoding(tmp_path):
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    (tmp_path / "train" / "a").mkdir(parents=True)
    Image.fromarray(image).save(tmp_path / "train" / "a" / "0.png")
    data = load_split(tmp_path, "train")
    assert np.array_equal(data.images[0].permute(1, 2, 0).numpy(), image)
    assert load_split(tmp_path, "test") is None


def test_unlabelled_folder_of_any_size_and_mode(tmp_path):
    Image.new("L", (96, 64), 128).save(tmp_path / "gray.jpg")
    (tmp_path / "nested").mkdir()
    Image.new("RGBA", (20, 20), (255, 0, 0, 128)).save(tmp_path / "nested" / "rgba.png")
    data = load_split(tmp_path, "train", 32)
    assert data.images.shape == (2, 3, 32, 32) and data.labels.tolist() == [-1, -1] and not data.labelled
    assert load_split(tmp_path, "test") is None


def test_balanced_subset_is_balanced_and_reproducible(pattern_folder):
    data = load_split(pattern_folder, "train", 16)
    a, b = balanced_subset(data, 10, seed=3), balanced_subset(data, 10, seed=3)
    assert torch.equal(a.images, b.images)
    assert sorted(torch.bincount(a.labels).tolist()) == [2, 2, 3, 3]
    assert not torch.equal(balanced_subset(data, 10, seed=4).images, a.images)
    with pytest.raises(UserError, match="only 64"):
        balanced_subset(data, 65)


def test_bad_data_dirs(tmp_path):
    with pytest.raises(UserError, match="CIFAR-10 is not there.*image folder"):
        load_split(tmp_path / "missing", "train", download=False)
    (tmp_path / "train" / "cat").mkdir(parents=True)
    (tmp_path / "train" / "dog").mkdir(parents=True)
    Image.new("RGB", (32, 32)).save(tmp_path / "train" / "cat" / "0.png")
    with pytest.raises(UserError, match="class folder .*dog has no images"):
        load_split(tmp_path, "train")
    (tmp_path / "train" / "dog" / "broken.jpg").write_bytes(b"this is no jpeg")
    with pytest.raises(UserError, match="cannot read image .*broken.jpg"):
        load_split(tmp_path, "train")


def test_test_split_with_unknown_class(tmp_path):
    for split, cls in [("train", "cat"), ("test", "cat"), ("test", "emu")]:
        (tmp_path / split / cls).mkdir(parents=True)
        Image.new("RGB", (32, 32)).save(tmp_path / split / cls / "0.png")
    with pytest.raises(UserError, match="emu"):
        load_split(tmp_path, "test")


def test_folder_without_images(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(UserError, match="holds no images"):
        load_split(tmp_path, "train")


def test_device_loader_covers_each_epoch_and_splits_over_ranks():
    loader = DeviceLoader(100, 32, seed=0)
    batches = list(loader)
    assert len(batches) == 3 and all(len(b) == 32 for b in batches)
    assert len(torch.cat(batches).unique()) == 96  # no repeats; the last 4 are dropped
    ranks = [DeviceLoader(100, 32, seed=0, rank=r, world_size=2) for r in (0, 1)]
    for whole, half0, half1 in zip(DeviceLoader(100, 32, seed=0), *ranks):
        assert torch.equal(torch.cat([half0, half1]), whole)
    with pytest.raises(UserError, match="larger than the data set"):
        DeviceLoader(10, 32, seed=0)
