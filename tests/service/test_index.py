"""service.build_index and service.index: what is indexed, exactness, filters, and refusing a wrong bundle."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from factories import CLASSES, SIZE, colour_images

from benchmarks.harness.images import png_bytes
from contract.bundle import load_bundle
from service.build_index import build, main, recall_at
from service.index import SearchIndex, SearchIndexError
from service.model import Model

IMAGES, LABELS = colour_images(6, seed=0)


@pytest.fixture(scope="module")
def index(index_dir, bundle_dir) -> SearchIndex:
    return SearchIndex(index_dir, load_bundle(bundle_dir).fingerprint)


@pytest.fixture(scope="module")
def vectors(bundle_dir) -> np.ndarray:
    model = Model(load_bundle(bundle_dir))
    return F.normalize(model.infer(torch.from_numpy(IMAGES).permute(0, 3, 1, 2)).representation, dim=1).numpy()


def test_index_holds_the_images_their_labels_and_the_bundle(index, bundle_dir):
    assert index.count == len(IMAGES) and index.dim == 512
    assert index.classes == list(CLASSES)
    assert index.labels == LABELS.tolist() and set(index.splits) == {"train"}
    assert index.sources[7] == f"train/{CLASSES[LABELS[7]]}/0007.png"
    np.testing.assert_array_equal(index.images[7], IMAGES[7])
    assert index.info["bundle"] == load_bundle(bundle_dir).fingerprint
    np.testing.assert_allclose(np.linalg.norm(index.vector(3)), 1, atol=1e-5)


def test_search_is_exact_and_sorted(index, vectors):
    hits = index.search(vectors[:5], k=7)
    for query, row in zip(vectors[:5], hits):
        expected = np.argsort(-(vectors @ query), kind="stable")[:7]
        assert [h.id for h in row] == expected.tolist() or \
            np.allclose([h.score for h in row], (vectors @ query)[expected], atol=1e-5)
        assert row[0].score == pytest.approx(1, abs=1e-5)


def test_class_filter_and_exclusion(index, vectors):
    (row,) = index.search(vectors[:1], k=100, class_name="grey")
    assert {h.class_name for h in row} == {"grey"} and len(row) == 6
    (row,) = index.search(vectors[:1], k=3, exclude=[0])
    assert 0 not in [h.id for h in row] and len(row) == 3


def test_hnsw_index_reports_its_recall(tmp_path, bundle_dir, image_folder, capsys):
    info = build(str(bundle_dir), [str(image_folder)], str(tmp_path / "hnsw"), ["train", "test"], "hnsw")
    assert "recall@10 against exact search" in capsys.readouterr().out
    assert info["recall_at_10"] == pytest.approx(1.0)  # 32 vectors: the graph reaches all of them
    index = SearchIndex(tmp_path / "hnsw")
    assert isinstance(index.faiss, faiss.IndexHNSW) and index.count == 32
    assert sorted(set(index.splits)) == ["test", "train"]
    assert {h.class_name for h in index.search(index.vector(0)[None], 5, class_name="red")[0]} == {"red"}


def test_recall_measures_misses():
    vectors = F.normalize(torch.randn(200, 16), dim=1).numpy()
    flat = faiss.IndexFlatIP(16)
    flat.add(vectors)
    assert recall_at(flat, vectors, k=10) == 1.0
    half = faiss.IndexFlatIP(16)
    half.add(vectors[:100])  # ids 0..99 only: the queries' other neighbours are missed
    assert 0.3 < recall_at(half, vectors, k=10) < 0.7


def test_unlabelled_folders_are_indexed_too(tmp_path, bundle_dir):
    folder = tmp_path / "photos" / "holiday"
    folder.mkdir(parents=True)
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(png_bytes(IMAGES[i * 5], "JPEG"))
    (folder / "notes.txt").write_text("not an image")
    build(str(bundle_dir), [str(tmp_path / "photos")], str(tmp_path / "index"), ["train"])
    index = SearchIndex(tmp_path / "index")
    assert index.labels == [-1, -1, -1] and index.splits == ["photos"] * 3
    assert index.search(index.vector(1)[None], 1)[0][0].class_name is None


def test_an_index_of_another_bundle_is_refused(index_dir):
    with pytest.raises(SearchIndexError, match="built with another bundle"):
        SearchIndex(index_dir, "0" * 64)


def test_a_truncated_index_is_refused(tmp_path, index_dir):
    import shutil

    shutil.copytree(index_dir, tmp_path / "index")
    vectors = tmp_path / "index" / "vectors.faiss"
    vectors.write_bytes(vectors.read_bytes()[:100])
    with pytest.raises(SearchIndexError, match="incomplete or corrupt"):
        SearchIndex(tmp_path / "index")


def test_cli_builds_and_reports_errors_in_one_line(tmp_path, bundle_dir, image_folder, capsys):
    assert main(["--bundle", str(bundle_dir), "--data-dir", str(image_folder), "--out", str(tmp_path / "i")]) == 0
    assert json.loads((tmp_path / "i" / "index.json").read_text())["count"] == 24
    (tmp_path / "file.txt").write_text("not a folder")
    for args, message in [(["--bundle", str(tmp_path), "--data-dir", str(image_folder)], "is not a model bundle"),
                          (["--data-dir", str(tmp_path / "nowhere"), "--no-download"], "CIFAR-10 is not there"),
                          (["--data-dir", str(tmp_path / "file.txt")], "is not a directory")]:
        capsys.readouterr()
        bundle = [] if "--bundle" in args else ["--bundle", str(bundle_dir)]
        assert main([*bundle, *args, "--out", str(tmp_path / "j")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
        assert not (tmp_path / "j" / "index.json").exists()


def test_cifar10_in_torchvisions_layout_is_indexed_with_its_classes(tmp_path, bundle_dir, monkeypatch):
    """The batches torchvision downloads (here written by hand, a few images each) are read as arrays."""
    import pickle

    folder = tmp_path / "cifar" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    rng = np.random.default_rng(0)
    for name in ["data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch"]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": rng.integers(0, 256, (2, 3072), dtype=np.uint8), "labels": [3, 5]}, f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": names}, f)
    monkeypatch.setattr("torchvision.datasets.CIFAR10._check_integrity", lambda self: True)  # made-up files
    monkeypatch.setattr("torchvision.datasets.cifar.check_integrity", lambda path, md5: True)
    info = build(bundle_dir, [str(tmp_path / "cifar")], tmp_path / "index", ["train", "test"], download=False)
    index = SearchIndex(tmp_path / "index")
    assert info["count"] == 12 and index.splits == ["train"] * 10 + ["test"] * 2
    assert [index.classes[label] for label in index.labels] == ["cat", "dog"] * 6
    assert index.sources[:2] == ["cifar-10-batches-py/train/0", "cifar-10-batches-py/train/1"]
    assert index.images.shape == (12, SIZE, SIZE, 3)  # resized to the bundle's input, as uploads are
