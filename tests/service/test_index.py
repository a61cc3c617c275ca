"""service.build_index, service.index, service.milvus_index and service.catalog: what is indexed, exactness,
filters, run-time changes that survive a crash, index types, and refusing a wrong bundle. What every backend
must do runs on both, the local folder (FAISS + SQLite) and Milvus (Milvus Lite, embedded); what only the local
one has (FAISS types, snapshots, memory mapping) on it alone."""

from __future__ import annotations

import io
import json
import shutil

import faiss
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from factories import CLASSES, SIZE, colour_images
from PIL import Image

from benchmarks.harness.images import png_bytes
from contract.bundle import load_bundle
from service.build_index import BuildOptions, build, main, recall_at
from service.catalog import Item
from service.index import COMPACT_AT, SearchIndex, SearchIndexError
from service.indexes import create_index, location_of, open_index
from service.model import Model

IMAGES, LABELS = colour_images(6, seed=0)
IDS = [f"train/{CLASSES[label]}/{i:04d}.png" for i, label in enumerate(LABELS)]  # index order: class by class


BACKENDS = pytest.mark.parametrize("backend", ["local", "milvus"])


@pytest.fixture(scope="module", params=["local", "milvus"])
def index(request, index_dir, bundle_dir, image_folder, tmp_path_factory):
    """The images of index_dir, in each backend (the local one memory-mapped: read-only, shared by tests)."""
    fingerprint = load_bundle(bundle_dir).fingerprint
    if request.param == "local":
        return SearchIndex(index_dir, fingerprint, mmap=True)
    where = f"milvus-lite:{tmp_path_factory.mktemp('milvus')}"
    build(str(bundle_dir), [str(image_folder)], where, BuildOptions(runtime="torch-fp32"))
    return open_index(location_of(where, fingerprint), fingerprint)


@pytest.fixture(scope="module")
def vectors(bundle_dir) -> np.ndarray:
    model = Model(load_bundle(bundle_dir))
    return F.normalize(model.infer(torch.from_numpy(IMAGES).permute(0, 3, 1, 2)).representation, dim=1).numpy()


def unit(n: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    return F.normalize(torch.randn(n, dim, generator=torch.Generator().manual_seed(seed)), dim=1).numpy()


def new_index(path, factory: str = "Flat", sample: np.ndarray | None = None, dim: int = 16, backend: str = "local"):
    """A new empty index in a folder at path, or in Milvus Lite there."""
    location = location_of(path if backend == "local" else f"milvus-lite:{path}?collection=test")
    return create_index(location, dim=dim, bundle="b" * 64, bundle_name="test", runtime="torch-fp32",
                        factory=factory, sample=sample)


def reopened(index):
    """The same index opened again: another connection, as another process has."""
    return open_index(index.path if isinstance(index, SearchIndex) else index.location)


def test_index_holds_the_images_their_metadata_and_the_bundle(index, bundle_dir, vectors):
    assert index.count == len(IMAGES) and index.dim == 512 and index.info.factory.upper() == "FLAT"
    assert index.classes == list(CLASSES)
    record = index.get(IDS[7])
    assert record.metadata == {"class": CLASSES[LABELS[7]], "split": "train"}
    thumbnail = np.asarray(Image.open(io.BytesIO(index.thumbnail(IDS[7]))))
    assert thumbnail.shape == IMAGES[7].shape and np.abs(thumbnail.astype(int) - IMAGES[7]).mean() < 12  # JPEG
    assert index.info.bundle == load_bundle(bundle_dir).fingerprint
    vector = index.vector(IDS[3])
    np.testing.assert_allclose(vector, vectors[3], atol=1e-5)
    assert index.get("nope") is None and index.thumbnail("nope") is None and index.vector("nope") is None


def test_search_is_exact_and_sorted(index, vectors):
    hits = index.search(vectors[:5], k=7)
    for query, row in zip(vectors[:5], hits):
        scores = vectors @ query
        expected = np.argsort(-scores, kind="stable")[:7]
        np.testing.assert_allclose([h.score for h in row], scores[expected], atol=1e-5)
        assert row[0].id == IDS[int(expected[0])] and row[0].score == pytest.approx(1, abs=1e-5)


def test_filters_pages_thresholds_and_exclusion(index, vectors):
    (row,) = index.search(vectors[:1], k=100, where={"class": ["grey"]})
    assert {h.metadata["class"] for h in row} == {"grey"} and len(row) == 6
    (row,) = index.search(vectors[:1], k=100, where={"class": ["grey", "red"], "split": ["train"]})
    assert {h.metadata["class"] for h in row} == {"grey", "red"} and len(row) == 12
    assert index.search(vectors[:1], k=5, where={"class": ["grey"], "split": ["test"]}) == [[]]
    (row,) = index.search(vectors[:1], k=3, exclude=[IDS[0]])
    assert IDS[0] not in [h.id for h in row] and len(row) == 3
    (everything,) = index.search(vectors[:1], k=24)
    (page,) = index.search(vectors[:1], k=5, offset=5)
    assert [h.id for h in page] == [h.id for h in everything[5:10]]
    (close,) = index.search(vectors[:1], k=24, min_score=everything[3].score)
    assert [h.id for h in close] == [h.id for h in everything[:4]]


@pytest.mark.parametrize("factory", ["Flat", "HNSW8", "IVF4,Flat", "OPQ4,IVF4,PQ4x4"])
def test_changes_survive_a_crash_in_every_index_type(tmp_path, factory):
    """Every change is in the catalog when add/remove return; a process killed before any snapshot (the index
    is never closed here) reopens holding exactly the acknowledged changes, and searches find them."""
    vectors = unit(300)
    index = new_index(tmp_path / "i", factory, sample=vectors)
    assert index.add([Item(f"v{i}", v, {"n": i % 3, "kind": "even" if i % 2 == 0 else "odd"})
                      for i, v in enumerate(vectors[:200])]) == (200, 0)
    index.snapshot()  # the snapshot holds 200; what follows is only in the catalog
    assert index.add([Item("v5", vectors[250], {"kind": "moved"}), Item("new", vectors[251], {})]) == (1, 1)
    assert index.remove(["v0", "v1", "absent"]) == 2
    del index  # a crash: no close, no snapshot

    reopened = SearchIndex(tmp_path / "i")
    assert reopened.count == 199 and reopened.get("v0") is None and reopened.get("v5").metadata == {"kind": "moved"}
    top = {q: reopened.search(vectors[q][None], 1)[0][0] for q in (250, 251, 7)}
    assert top[250].id == "v5" and top[251].id == "new" and top[7].id == "v7"
    found = {h.id for h in reopened.search(vectors[:2], k=50)[0] + reopened.search(vectors[:2], k=50)[1]}
    assert not found & {"v0", "v1"}  # removed vectors never come back, even where FAISS cannot remove them
    (odd,) = reopened.search(vectors[3][None], k=5, where={"kind": ["odd"], "n": [0]})
    assert odd[0].id == "v3" and all(h.metadata["kind"] == "odd" and h.metadata["n"] == 0 for h in odd)
    reopened.close()
    assert (tmp_path / "i" / "vectors.faiss").is_file() and SearchIndex(tmp_path / "i").count == 199


@pytest.mark.parametrize("factory", ["HNSW8", "HNSW8_PQ8"])
@pytest.mark.parametrize("removed", [5, 30])
def test_hnsw_is_rebuilt_without_its_removed_vectors_when_many(tmp_path, factory, removed):
    """HNSW cannot remove: an opening that finds more than COMPACT_AT of its vectors removed rebuilds it from the
    catalog, and the rebuilt one is the snapshot the next opening loads."""
    vectors = unit(300, seed=3)
    index = new_index(tmp_path / "i", factory, sample=vectors)
    index.add([Item(f"v{i}", v, {}) for i, v in enumerate(vectors[:100])])
    index.remove([f"v{i}" for i in range(removed)])
    index.close()
    reopened = SearchIndex(tmp_path / "i")
    assert reopened.count == 100 - removed
    assert reopened.faiss.ntotal == (100 if removed <= COMPACT_AT * 100 else 100 - removed)
    assert [hits[0].id for hits in reopened.search(vectors[40:60], 1)] == [f"v{i}" for i in range(40, 60)]
    assert reopened.search(vectors[:1], 1)[0][0].id != "v0"
    reopened.close()
    assert faiss.read_index(str(tmp_path / "i" / "vectors.faiss")).ntotal == reopened.faiss.ntotal


@pytest.mark.parametrize("factory", ["IVF4,PQ8", "HNSW8_PQ8"])
def test_compressed_types_rerank_with_the_exact_vectors(tmp_path, factory):
    vectors = unit(400, seed=1)
    index = new_index(tmp_path / "i", factory, sample=vectors)
    index.add([Item(f"v{i}", v, {"half": i % 2}) for i, v in enumerate(vectors)])
    queries = unit(20, seed=2)
    for where in (None, {"half": [1]}):
        allowed = np.arange(400) if where is None else np.arange(1, 400, 2)
        for query, hits in zip(queries, index.search(queries, 5, where)):
            exact = vectors[allowed] @ query
            # PQ scores are approximate (and misorder close ones): the catalog's exact vectors re-score them.
            np.testing.assert_allclose([h.score for h in hits], np.sort(exact)[::-1][:5], atol=1e-5)
            assert [h.id for h in hits] == [f"v{allowed[i]}" for i in np.argsort(-exact, kind="stable")[:5]]


@BACKENDS
def test_duplicate_ids_and_wrong_dimensions_change_nothing(tmp_path, backend):
    index = new_index(tmp_path / "i", backend=backend)
    vectors = unit(3)
    with pytest.raises(SearchIndexError, match="same id"):
        index.add([Item("a", vectors[0], {}), Item("a", vectors[1], {})])
    with pytest.raises(SearchIndexError, match="numbers"):
        index.add([Item("a", np.ones(8, dtype="float32"), {})])
    assert index.count == 0 and reopened(index).count == 0


@BACKENDS
def test_a_bulk_add_is_searched_through_the_approximate_index_at_once(tmp_path, backend):
    """2,000 vectors in one add (Milvus seals such an add at once), into HNSW: each finds itself first, with the
    search as broad as the local index's; a small add after it is searchable too."""
    vectors = unit(2_001, dim=32, seed=3)
    index = new_index(tmp_path / "i", factory="HNSW32" if backend == "local" else "HNSW", dim=32, backend=backend)
    flushed, breadth = [], []
    if backend == "milvus":  # sealed: unsealed rows are searched one by one (Milvus Lite: 0.9 s a query at 20,000)
        flush, search = index.client.flush, index.client.search
        index.client.flush = lambda collection, **kw: (flushed.append(collection), flush(collection, **kw))[1]
        # Milvus's default ef is k (recall@10 0.71 at 20,000 in benchmarks.backends): Milvus Lite searches such
        # small sets exactly whatever ef, so what is asked of it is checked.
        index.client.search = lambda *a, **kw: (breadth.append(kw["search_params"]["params"]), search(*a, **kw))[1]
    index.add([Item(f"v{i}", vectors[i], {}) for i in range(2_000)])
    index.add([Item("last", vectors[2_000], {})])
    assert flushed == ([index.location.collection] if backend == "milvus" else [])  # the bulk add, not the one
    queries = [*range(0, 2_000, 40), 2_000]
    found = [hits[0].id for hits in index.search(vectors[queries], 10)]
    assert found == [f"v{i}" for i in queries[:-1]] + ["last"]
    assert breadth == ([{"ef": 128}] if backend == "milvus" else [])
    assert reopened(index).count == 2_001


def test_a_memory_mapped_index_is_read_only(index_dir):
    index = SearchIndex(index_dir, mmap=True)
    with pytest.raises(SearchIndexError, match="read-only"):
        index.add([Item("x", np.ones(512, dtype="float32"), {})])
    with pytest.raises(SearchIndexError, match="read-only"):
        index.remove([IDS[0]])


@BACKENDS
def test_metadata_filters_match_numbers_and_strings_as_given(tmp_path, backend):
    index = new_index(tmp_path / "i", backend=backend)
    vectors = unit(4)
    index.add([Item("a", vectors[0], {"year": 2024, "tag": "x"}), Item("b", vectors[1], {"year": "2024"}),
               Item("c", vectors[2], {"year": 2023.5}), Item("d", vectors[3], {})])
    ids = lambda where: sorted(h.id for h in index.search(vectors[:1], 10, where=where)[0])  # noqa: E731
    assert ids({"year": [2024]}) == ["a"] and ids({"year": ["2024"]}) == ["b"]
    assert ids({"year": ["2024", 2024.0]}) == ["a", "b"] and ids({"year": [2023.5]}) == ["c"]
    assert ids({"year": [2024], "tag": ["x"]}) == ["a"] and ids({"missing": ["x"]}) == []
    assert ids({"year": {"gte": 2023.5}}) == ["a", "c"] and ids({"year": {"lt": 2024}}) == ["c"]  # not "2024"
    assert ids({"year": {"not": [2024]}}) == ["b", "c", "d"]  # d has no year: it passes
    assert ids({"year": {"in": ["2024", 2023.5], "not": ["2024"]}}) == ["c"]
    assert ids({"year": {"gt": 2023, "lt": 2024}}) == ["c"] and ids({"tag": {"in": []}}) == []
    index.remove(["a"])
    assert ids({"tag": ["x"]}) == []  # a removed image's metadata goes with it


@BACKENDS
def test_pages_list_every_image_once_and_removal_by_filter(tmp_path, backend):
    index = new_index(tmp_path / "i", backend=backend)
    vectors = unit(25)
    index.add([Item(f"p{i:02d}", v, {"n": i, "odd": i % 2}) for i, v in enumerate(vectors)])
    seen, after = [], None
    while True:
        records, after = index.page(after, 7)
        seen += [r.id for r in records]
        if after is None:
            break
    assert sorted(seen) == [f"p{i:02d}" for i in range(25)] and len(seen) == 25
    odd, after = index.page(None, 100, {"odd": [1]})
    assert sorted(r.id for r in odd) == [f"p{i:02d}" for i in range(1, 25, 2)] and after is None
    assert sorted(index.remove_matching({"n": {"gte": 20}})) == [f"p{i}" for i in range(20, 25)]
    assert index.count == 20 and index.remove(["p00", "p00", "nope"]) == 1 and index.count == 19
    assert index.add([Item("p01", vectors[0], {"n": 100})]) == (0, 1)  # replaced: one image under that id
    assert index.get("p01").metadata == {"n": 100} and index.count == 19
    np.testing.assert_allclose(index.vector("p01"), vectors[0], atol=1e-6)


def test_trained_index_types_need_vectors_and_bad_types_are_named(tmp_path):
    with pytest.raises(SearchIndexError, match="learns from the vectors"):
        new_index(tmp_path / "ivf", "IVF4,Flat")
    with pytest.raises(SearchIndexError, match="not a FAISS index factory string"):
        new_index(tmp_path / "bad", "Bogus")
    assert not (tmp_path / "ivf" / "index.json").exists()


def test_hnsw_index_reports_its_recall_and_filters_exactly(tmp_path, bundle_dir, image_folder, capsys):
    info = build(str(bundle_dir), [str(image_folder)], str(tmp_path / "hnsw"), BuildOptions(("train", "test"), "HNSW8"))
    assert "recall@10 against exact search" in capsys.readouterr().out
    assert info["recall_at_10"] == pytest.approx(1.0)  # 32 vectors: the graph reaches all of them
    index = SearchIndex(tmp_path / "hnsw")
    assert isinstance(faiss.downcast_index(index.faiss.index), faiss.IndexHNSW) and index.count == 32
    assert index.catalog.values("split") == ["test", "train"]
    vector = index.vector("train/blue/0000.png")
    (red,) = index.search(vector[None], 100, where={"class": ["red"]})
    assert {h.metadata["class"] for h in red} == {"red"} and len(red) == 8  # every one: the scan is exact


def test_recall_measures_misses(tmp_path):
    vectors = unit(200)
    ids = [str(i) for i in range(200)]
    full = new_index(tmp_path / "full")
    full.add([Item(id, v, {}) for id, v in zip(ids, vectors)])
    assert recall_at(full, ids, vectors, k=10) == 1.0
    half = new_index(tmp_path / "half")
    half.add([Item(id, v, {}) for id, v in zip(ids[:100], vectors[:100])])  # the other neighbours are missed
    assert 0.3 < recall_at(half, ids, vectors, k=10) < 0.7


def test_unlabelled_folders_are_indexed_by_path_with_a_metadata_file(tmp_path, bundle_dir):
    folder = tmp_path / "photos" / "holiday"
    folder.mkdir(parents=True)
    for i in range(3):
        (folder / f"{i}.jpg").write_bytes(png_bytes(IMAGES[i * 5], "JPEG"))
    (folder / "notes.txt").write_text("not an image")
    (tmp_path / "meta.csv").write_text("id,place\nholiday/1.jpg,beach\nelsewhere.jpg,x\n")
    build(str(bundle_dir), [str(tmp_path / "photos")], str(tmp_path / "index"),
          BuildOptions(metadata=tmp_path / "meta.csv", thumbnail_size=16))
    index = SearchIndex(tmp_path / "index")
    assert index.count == 3 and index.get("holiday/1.jpg").metadata == {"place": "beach"}
    assert index.get("holiday/0.jpg").metadata == {} and index.classes == []
    assert index.search(index.vector("holiday/2.jpg")[None], 1)[0][0].id == "holiday/2.jpg"


def test_the_cli_adds_to_an_existing_index(tmp_path, bundle_dir, image_folder):
    shutil.copytree(image_folder / "train" / "red", tmp_path / "more" / "red")
    (tmp_path / "meta.jsonl").write_text('{"id": "red/0020.png", "score": 0.5}\n')
    assert main(["--bundle", str(bundle_dir), "--data-dir", str(image_folder), "--out", str(tmp_path / "i")]) == 0
    served = SearchIndex(tmp_path / "i")  # as a running service holds it
    assert main(["--bundle", str(bundle_dir), "--data-dir", str(tmp_path / "more"), "--out", str(tmp_path / "i"),
                 "--metadata", str(tmp_path / "meta.jsonl")]) == 0
    for index in (SearchIndex(tmp_path / "i"), served):
        (hit,) = index.search(index.vector("red/0020.png")[None], 1, where={"score": [0.5]})[0]
        assert index.count == 30 and hit.id == "red/0020.png"
        assert index.get("red/0018.png").metadata == {}


@pytest.mark.parametrize("backend, factory", [("local", "Flat"), ("local", "HNSW8"), ("local", "IVF4,Flat"),
                                              ("milvus", "FLAT"), ("milvus", "HNSW")])
def test_an_open_index_catches_up_with_another_process_changes(tmp_path, backend, factory):
    """A service's index sees, at its next search or change, what another process (build_index adding a folder)
    added and removed, without a restart; and its own changes after them keep both."""
    vectors = unit(300)
    served = new_index(tmp_path / "i", factory, sample=vectors, backend=backend)
    served.add([Item(f"v{i}", v, {}) for i, v in enumerate(vectors[:100])])
    other = reopened(served)
    other.add([Item(f"w{i}", v, {"by": "other"}) for i, v in enumerate(vectors[100:200])])
    assert other.remove(["v0"]) == 1
    assert [h.id for h in served.search(vectors[150][None], 1)[0]] == ["w50"] and served.count == 199
    assert [h.id for h in served.search(vectors[120][None], 1, where={"by": ["other"]})[0]] == ["w20"]
    assert served.add([Item("x", vectors[250], {})]) == (1, 0) and served.count == 200
    other.remove(["w1"])
    assert served.remove(["w2"]) == 1 and served.count == 198
    assert other.add([Item("v5", vectors[260], {})]) == (0, 1)  # replaced: a new vector under an old id
    assert [h.id for h in served.search(vectors[260][None], 1)[0]] == ["v5"] and served.count == 198
    assert "v5" not in {h.id for h in served.search(vectors[5][None], 3)[0]}
    served.close()
    assert reopened(other).count == 198


def test_an_index_of_another_bundle_is_refused(index):
    with pytest.raises(SearchIndexError, match="built with another bundle"):
        open_index(index.path if isinstance(index, SearchIndex) else index.location, "0" * 64)


@pytest.mark.parametrize("file", ["vectors.faiss", "catalog.sqlite", "index.json"])
def test_a_damaged_index_is_refused(tmp_path, index_dir, file):
    shutil.copytree(index_dir, tmp_path / "index")
    damaged = tmp_path / "index" / file
    damaged.write_bytes(damaged.read_bytes()[:100])
    with pytest.raises(SearchIndexError, match="incomplete or corrupt|not valid JSON"):
        SearchIndex(tmp_path / "index")


def test_index_json_of_before_its_model_reads_and_a_malformed_one_is_refused(tmp_path, index_dir):
    """index.json as the service wrote it before IndexInfo (no search parameters, no sources) still opens, with
    the defaults; a field of the wrong type is refused in one line naming it."""
    shutil.copytree(index_dir, tmp_path / "index")
    file = tmp_path / "index" / "index.json"
    info = json.loads(file.read_text())
    old = {k: info[k] for k in ("format", "format_version", "bundle", "bundle_name", "factory", "dim", "runtime",
                                "thumbnail_size", "created")}
    file.write_text(json.dumps(old))
    opened = SearchIndex(tmp_path / "index")
    assert opened.count == 24 and (opened.info.ef_search, opened.info.nprobe, opened.info.sources) == (128, 32, [])
    opened.close()
    file.write_text(json.dumps({**old, "dim": "wide"}))
    with pytest.raises(SearchIndexError, match=r"index.json is malformed: dim: .*rebuild it") as caught:
        SearchIndex(tmp_path / "index")
    assert len(str(caught.value).splitlines()) == 1


def test_cli_builds_and_reports_errors_in_one_line(tmp_path, bundle_dir, image_folder, capsys):
    assert main(["--bundle", str(bundle_dir), "--data-dir", str(image_folder), "--out", str(tmp_path / "i")]) == 0
    assert SearchIndex(tmp_path / "i").count == 24
    (tmp_path / "file.txt").write_text("not a folder")
    (tmp_path / "bad.csv").write_text("name\nx\n")
    for args, message in [(["--bundle", str(tmp_path), "--data-dir", str(image_folder)], "is not a model bundle"),
                          (["--data-dir", str(tmp_path / "nowhere"), "--no-download"], "CIFAR-10 is not there"),
                          (["--data-dir", str(tmp_path / "file.txt")], "is not a directory"),
                          (["--data-dir", str(image_folder), "--index-type", "Bogus"], "not a FAISS index"),
                          (["--data-dir", str(image_folder), "--metadata", str(tmp_path / "bad.csv")], "no \"id\"")]:
        capsys.readouterr()
        bundle = [] if "--bundle" in args else ["--bundle", str(bundle_dir)]
        assert main([*bundle, *args, "--out", str(tmp_path / "j")]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1
        assert not (tmp_path / "j").exists() and not list(tmp_path.glob(".j.*"))


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
    info = build(bundle_dir, [str(tmp_path / "cifar")], tmp_path / "index",
                 BuildOptions(("train", "test"), download=False))
    index = SearchIndex(tmp_path / "index")
    assert info["count"] == 12 and index.classes == ["cat", "dog"]
    assert index.get("train/00000").metadata == {"class": "cat", "split": "train"}
    assert index.get("test/00001").metadata == {"class": "dog", "split": "test"}
    thumbnail = Image.open(io.BytesIO(index.thumbnail("train/00000")))
    assert thumbnail.size == (32, 32)  # CIFAR-10's own size: thumbnails are never enlarged
    assert SIZE != 32  # (the model's input is another size, so the thumbnail is not the model's input)


def test_export_writes_ids_vectors_and_metadata_as_parquet(tmp_path, capsys):
    import pyarrow.parquet as pq

    from service.export_vectors import main as export_main

    vectors = unit(30)
    index = new_index(tmp_path / "i", "HNSW8")  # approximate: the export reads the exact vectors kept beside it
    index.add([Item(f"v{i}", v, {"n": i, "tag": "even" if i % 2 == 0 else "odd"}) for i, v in enumerate(vectors)])
    index.remove(["v3"])
    index.close()
    assert export_main(["--index", str(tmp_path / "i"), "--out", str(tmp_path / "out.parquet")]) == 0
    assert "29 vectors written" in capsys.readouterr().out
    file = pq.read_table(tmp_path / "out.parquet")
    assert file.schema.metadata[b"simclr.bundle"] == b"b" * 64 and file.schema.metadata[b"simclr.runtime"] == \
        b"torch-fp32"
    table = file.to_pydict()
    assert list(table) == ["id", "vector", "$meta"]  # Milvus's bulk-import layout: fields, then dynamic fields
    assert table["id"] == [f"v{i}" for i in range(30) if i != 3]
    np.testing.assert_array_equal(np.array(table["vector"], dtype="float32"), np.delete(vectors, 3, axis=0))
    assert json.loads(table["$meta"][4]) == {"n": 5, "tag": "odd"}
    assert export_main(["--index", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.parquet")]) == 2
    assert "is not an index" in capsys.readouterr().err and not (tmp_path / "x.parquet").exists()


@pytest.mark.parametrize("backend, index_type", [("local", "HNSW8"), ("milvus", "HNSW")])
def test_an_export_loads_back_into_an_index_with_its_ids_vectors_and_metadata(tmp_path, capsys, backend, index_type):
    """build_index --from-parquet: the export's records in a new index (of another type, in either backend),
    searchable and filterable as before; added again to that index they replace themselves; a file that names
    no bundle, or an index of another bundle, is refused in one line."""
    from service.export_vectors import export

    vectors = unit(40, seed=3)
    index = new_index(tmp_path / "i")
    index.add([Item(f"v{i}", v, {"n": i, "tag": "even" if i % 2 == 0 else "odd"}) for i, v in enumerate(vectors)])
    index.close()
    export(tmp_path / "i", tmp_path / "out.parquet")
    out = str(tmp_path / "back") if backend == "local" else f"milvus-lite:{tmp_path / 'back'}?collection=back"
    args = ["--from-parquet", str(tmp_path / "out.parquet"), "--out", out, "--index-type", index_type]
    assert main(args) == 0
    back = open_index(location_of(out))
    assert back.count == 40 and back.info.factory == index_type and back.info.bundle == "b" * 64
    assert back.get("v7").metadata == {"n": 7, "tag": "odd"}
    (itself,) = back.search(vectors[7:8], k=1)
    assert itself[0].id == "v7" and itself[0].score == pytest.approx(1, abs=1e-5)  # the vector as exported
    (hits,) = back.search(vectors[12:13], k=3, where={"tag": ["even"]})
    assert hits[0].id == "v12" and {h.metadata["tag"] for h in hits} == {"even"}
    back.close()
    assert main(args) == 0 and open_index(location_of(out)).count == 40  # the same ids: replaced, not doubled

    import pyarrow.parquet as pq

    table = pq.read_table(tmp_path / "out.parquet")
    pq.write_table(table.replace_schema_metadata({}), tmp_path / "anonymous.parquet")
    other = new_index(tmp_path / "other")
    other.close()
    (tmp_path / "other" / "index.json").write_text((tmp_path / "other" / "index.json").read_text().replace(
        "b" * 64, "c" * 64))
    for file, out, message in [("anonymous.parquet", "a", "does not say which bundle"),
                               ("out.parquet", "other", "built with another bundle"),
                               ("missing.parquet", "m", "is not a Parquet file")]:
        capsys.readouterr()
        assert main(["--from-parquet", str(tmp_path / file), "--out", str(tmp_path / out)]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.splitlines()) == 1, err


def test_an_export_is_what_milvus_imports(tmp_path):
    """Milvus Lite (pymilvus's embedded server) as a user's Milvus would take the file: a collection of `id`
    (VARCHAR primary key) and `vector` (FLOAT_VECTOR, inner product) with the dynamic field on, filled row by
    row from the Parquet columns as the bulk import maps them ($meta's keys become dynamic fields). Every
    vector finds itself, and the metadata filter. (Bulk import proper needs Milvus's object storage, which
    Milvus Lite has not.)"""
    pytest.importorskip("milvus_lite")
    import pyarrow.parquet as pq
    from pymilvus import DataType, MilvusClient

    from service.export_vectors import export

    vectors = unit(25, seed=5)
    index = new_index(tmp_path / "i")
    index.add([Item(f"photos/{i}.jpg", v, {"n": i, "tag": "even" if i % 2 == 0 else "odd"})
               for i, v in enumerate(vectors)])
    index.close()
    export(tmp_path / "i", tmp_path / "out.parquet")
    columns = pq.read_table(tmp_path / "out.parquet").to_pydict()

    client = MilvusClient(str(tmp_path / "milvus.db"))
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=True)
    schema.add_field("id", DataType.VARCHAR, is_primary=True, max_length=512)
    schema.add_field("vector", DataType.FLOAT_VECTOR, dim=16)
    params = client.prepare_index_params()
    params.add_index("vector", index_type="FLAT", metric_type="IP")
    client.create_collection("photos", schema=schema, index_params=params)
    rows = [{"id": id, "vector": vector, **json.loads(meta)}
            for id, vector, meta in zip(columns["id"], columns["vector"], columns["$meta"])]
    assert client.insert("photos", rows)["insert_count"] == 25
    client.load_collection("photos")
    found = client.search("photos", data=vectors.tolist(), limit=1, output_fields=["n", "tag"])
    assert [hits[0]["id"] for hits in found] == [f"photos/{i}.jpg" for i in range(25)]
    assert [hits[0]["entity"]["n"] for hits in found] == list(range(25))
    odd = client.search("photos", data=[vectors[4].tolist()], limit=30, filter='tag == "odd"', output_fields=["n"])
    assert len(odd[0]) == 12 and all(hit["entity"]["n"] % 2 == 1 for hit in odd[0])
    client.close()
