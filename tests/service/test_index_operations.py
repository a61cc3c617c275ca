"""The index operations vector-database users expect, through the ASGI test client: vectors added without
their images, many images removed at once (by id or by filter), metadata changed without the image. Each on
both backends: the local folder, and Milvus (Milvus Lite, the collection made and filled by the service)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from factories import CLASSES, colour_images

from benchmarks.harness.images import png_bytes

IMAGES, LABELS = colour_images(6, seed=0)  # what the module's index holds (conftest's image_folder)
IDS = [f"train/{CLASSES[label]}/{i:04d}.png" for i, label in enumerate(LABELS)]


@pytest.fixture(scope="module")
def client(index_client):
    return index_client


def embedding(client, image: np.ndarray) -> list[float]:
    answer = client.post("/embed", files=[("images", ("x.png", png_bytes(image), "image/png"))])
    return answer.json()["embeddings"][0]["representation"]


def assert_problem(response, status: int, words: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json" and words in response.json()["detail"]


def test_vectors_embedded_elsewhere_are_indexed_and_found(client):
    vector = embedding(client, colour_images(1, seed=9)[0][0])
    scaled = [3 * x for x in vector]  # any scale: it is normalised
    added = client.post("/index/vectors", json={"vectors": [
        {"id": "vectors/a", "vector": scaled, "metadata": {"source": "elsewhere", "n": 1}}]})
    assert added.status_code == 200, added.text
    assert added.json()["added"] == 1 and added.json()["ids"] == ["vectors/a"]
    hits = client.post("/search", json={"embeddings": [vector], "k": 1}).json()["results"][0]["neighbours"]
    assert hits[0]["id"] == "vectors/a" and hits[0]["score"] == pytest.approx(1, abs=1e-5)
    assert hits[0]["metadata"] == {"source": "elsewhere", "n": 1}
    assert client.get("/thumbnails/vectors/a").status_code == 404  # none was sent
    again = client.post("/index/vectors", json={"vectors": [{"id": "vectors/a", "vector": vector}]}).json()
    assert (again["added"], again["replaced"]) == (0, 1)


@pytest.mark.parametrize("vectors, words", [
    ([{"id": "short", "vector": [1.0, 2.0]}], "vectors[0] has 2 numbers: this index holds 512-d"),
    ([{"id": "zero", "vector": [0.0] * 512}], "no direction"),
    ([{"id": "twice", "vector": [1.0] * 512}, {"id": "twice", "vector": [2.0] * 512}], "the same id"),
])
def test_bad_vectors_are_refused(client, vectors, words):
    assert_problem(client.post("/index/vectors", json={"vectors": vectors}), 422, words)


def test_many_images_are_removed_at_once_by_id_or_by_filter(client):
    rows = [{"id": f"batch/{i}", "vector": [float(i == j) + 0.1 for j in range(512)],
             "metadata": {"batch": "b1" if i < 3 else "b2", "n": i}} for i in range(5)]
    assert client.post("/index/vectors", json={"vectors": rows}).json()["added"] == 5
    count = client.get("/index").json()["count"]

    by_id = client.post("/index/delete", json={"ids": ["batch/0", "batch/1", "never/indexed"]}).json()
    assert by_id["removed"] == 2 and by_id["count"] == count - 2
    assert client.get("/index/images/batch/0").status_code == 404

    by_filter = client.post("/index/delete", json={"filter": {"batch": "b2"}}).json()
    assert by_filter["removed"] == 2 and sorted(by_filter["ids"]) == ["batch/3", "batch/4"]
    assert client.get("/index/images/batch/2").json()["metadata"] == {"batch": "b1", "n": 2}  # b1: kept
    nothing = client.post("/index/delete", json={"filter": {"batch": ["b9"]}}).json()
    assert (nothing["removed"], nothing["ids"]) == (0, [])
    for body, words in [({"ids": ["a"], "filter": {"batch": "b1"}}, "either ids or filter"),
                        ({}, "either ids or filter"), ({"ids": []}, "at least 1")]:
        assert_problem(client.post("/index/delete", json=body), 422, words)


def listing(client) -> list[str]:
    return [image["id"] for image in client.get("/index/images", params={"limit": 1000}).json()["images"]]


def test_metadata_changes_without_the_image(client):
    record, order = client.get(f"/index/images/{IDS[0]}").json(), listing(client)
    before, thumbnail = record["metadata"], client.get(f"/thumbnails/{IDS[0]}").content
    patched = client.patch(f"/index/images/{IDS[0]}", json={"metadata": {"album": "holidays", "split": None}})
    assert patched.status_code == 200, patched.text
    assert patched.json()["metadata"] == {**{k: v for k, v in before.items() if k != "split"}, "album": "holidays"}
    # Only the metadata changed: when it was added, its place in the listing (a client paging through it sees it
    # once) and its thumbnail stay, and the tag removed no longer matches.
    assert patched.json()["added"] == record["added"] and listing(client) == order
    assert client.get(f"/thumbnails/{IDS[0]}").content == thumbnail
    split = client.get("/index/images", params={"filter": f"split:{before['split']}", "limit": 1000}).json()
    assert split["images"] and IDS[0] not in [image["id"] for image in split["images"]]
    assert "mauve" not in client.get("/index").json()["classes"]  # the classes read (Milvus caches them)
    renamed = client.patch(f"/index/images/{IDS[0]}", json={"metadata": {"class": "mauve"}})
    assert renamed.status_code == 200 and "mauve" in client.get("/index").json()["classes"]
    hits = client.post("/search", json={"embeddings": [embedding(client, IMAGES[0])], "k": 1,
                                        "filter": {"album": "holidays"}}).json()["results"][0]["neighbours"]
    assert [h["id"] for h in hits] == [IDS[0]]  # the same vector, found by the new metadata
    assert client.get(f"/thumbnails/{IDS[0]}").headers["content-type"] == "image/jpeg"  # the thumbnail stays
    assert_problem(client.patch("/index/images/never/indexed", json={"metadata": {"a": 1}}), 404, "no indexed")
    too_many = {f"k{i}": i for i in range(40)}
    assert_problem(client.patch(f"/index/images/{IDS[1]}", json={"metadata": too_many}), 422, "metadata")


def test_filters_beyond_equality_on_search_listing_and_removal(client):
    rows = [{"id": f"f/{i}", "vector": [float(j == i) + 0.05 for j in range(512)],
             "metadata": {"n": i, "tag": "odd" if i % 2 else "even", **({"year": "1999"} if i == 1 else {})}}
            for i in range(6)]
    client.post("/index/vectors", json={"vectors": rows})
    query = [float(j == 0) + 0.05 for j in range(512)]

    def searched(**body) -> list[str]:
        answer = client.post("/search", json={"embeddings": [query], "k": 100, **body})
        assert answer.status_code == 200, answer.text
        return sorted(h["id"] for h in answer.json()["results"][0]["neighbours"] if h["id"].startswith("f/"))

    assert searched(filter={"n": {"gte": 2, "lt": 4}}) == ["f/2", "f/3"]
    assert searched(filter={"n": {"in": [0, 5]}, "tag": {"not": ["even"]}}) == ["f/5"]
    assert searched(filter={"year": {"gt": 0}}) == []  # a text value never passes a numeric bound
    in_query = client.post("/search?k=100&filter=n>=4&filter=tag!=odd", json={"embeddings": [query]})
    assert sorted(h["id"] for h in in_query.json()["results"][0]["neighbours"]) == ["f/4"]
    # NOT keeps the images without the key: all the others in the index, and the f/ ones but f/1.
    assert "f/0" in searched(filter={"year": {"not": ["1999"]}}) and "f/1" not in searched(
        filter={"year": {"not": ["1999"]}})

    listed = client.get("/index/images", params={"filter": ["tag:even", "n<3"], "limit": 1}).json()
    assert [i["id"] for i in listed["images"]] == ["f/0"] and listed["next"] is not None
    rest = client.get("/index/images", params={"filter": ["tag:even", "n<3"], "after": listed["next"]}).json()
    assert [i["id"] for i in rest["images"]] == ["f/2"] and rest["next"] is None

    removed = client.post("/index/delete", json={"filter": {"n": {"gte": 3}, "tag": "odd"}}).json()
    assert sorted(removed["ids"]) == ["f/3", "f/5"] and removed["removed"] == 2

    assert_problem(client.post("/search?filter=n>=many", json={"embeddings": [query]}), 422, "is not a number")
    assert_problem(client.post("/search", json={"embeddings": [query], "filter": {"n": {"about": 3}}}), 422,
                   "Extra inputs")
    assert_problem(client.post("/search", json={"embeddings": [query], "filter": {"n": {}}}), 422, "at least one")


def test_the_index_size_in_answers_is_read_off_the_event_loop(client, monkeypatch):
    """On Milvus the size is a call to the server: read where the index's other calls are, in the search thread,
    never on the event loop that every request shares."""
    index = client.app.state.service.index
    size = type(index).count
    threads = []

    def recorded(self) -> int:
        threads.append(threading.current_thread().name)
        return size.fget(self)

    monkeypatch.setattr(type(index), "count", property(recorded))
    vector = embedding(client, IMAGES[1])
    searched = client.post("/search", json={"embeddings": [vector], "k": 1})
    added = client.post("/index/vectors", json={"vectors": [{"id": "off-the-loop", "vector": vector}]})
    deleted = client.post("/index/delete", json={"ids": ["off-the-loop"]})
    assert [r.status_code for r in (searched, added, deleted)] == [200, 200, 200]
    assert added.json()["count"] == searched.json()["index_size"] + 1 == deleted.json()["count"] + 1
    assert len(threads) >= 3 and all(name.startswith("search") for name in threads), threads
