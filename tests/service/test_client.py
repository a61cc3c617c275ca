"""service.client and its command line against a real server."""

from __future__ import annotations

import json
import re

import pytest
from conftest import KEY
from factories import CLASSES, colour_images, write_folder

from benchmarks.harness.images import png_bytes
from service.client import Client, ServiceError, main

IMAGES, LABELS = colour_images(2, seed=5)


def test_typed_answers(live_server):
    with Client(live_server.url, KEY) as client:
        assert client.readiness().ready
        embedded = client.embed([png_bytes(IMAGES[0])], projection=True).embeddings[0]
        assert len(embedded.representation) == 512 and len(embedded.projection) == 32
        (classified,) = client.classify([png_bytes(IMAGES[0])], k=2).classifications
        assert len(classified.predictions) == 2 and classified.predictions[0].class_name in CLASSES
        (found,) = client.search([png_bytes(IMAGES[1])], k=3, class_name="red").results
        assert len(found.neighbours) == 3 and {n.metadata["class"] for n in found.neighbours} == {"red"}
        by_id = client.search_by_id(found.neighbours[0].id, k=2).results[0].neighbours
        assert found.neighbours[0].id not in [n.id for n in by_id]
        vector = client.embed([png_bytes(IMAGES[1])]).embeddings[0].representation
        (again,) = client.search_embeddings([vector], k=2, class_name="red", offset=1).results
        assert [n.id for n in again.neighbours] == [n.id for n in found.neighbours[1:3]]
        assert client.thumbnail(by_id[0].id).startswith(b"\xff\xd8")  # JPEG
        (filtered,) = client.search_embeddings([vector], k=20, filter={"class": "red", "split": "train"}).results
        assert [n.id for n in filtered.neighbours] == [n.id for n in client.search_embeddings(
            [vector], k=20, class_name="red").results[0].neighbours]


def test_problems_are_exceptions_with_their_status(live_server):
    with Client(live_server.url, KEY) as client:
        with pytest.raises(ServiceError, match="not an image") as caught:
            client.embed([b"plain text"])
        assert caught.value.status == 415
        with pytest.raises(ServiceError) as caught:
            client.search_by_id("no/such/image.png")
        assert caught.value.status == 404 and "no indexed image" in caught.value.detail
    with Client(live_server.url, "wrong") as client, pytest.raises(ServiceError) as caught:
        client.classify([png_bytes(IMAGES[0])])
    assert caught.value.status == 401


def test_command_line_over_a_folder(live_server, tmp_path, capsys):
    folder = write_folder(tmp_path / "photos", "train", IMAGES, LABELS)
    args = ["--url", live_server.url, "--api-key", KEY, "--batch", "3"]
    assert main([*args, "--json", "classify", str(folder), "-k", "2"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == len(IMAGES) and all(len(line["predictions"]) == 2 for line in lines)
    assert main([*args, "search", str(next(folder.rglob("*.png"))), "-k", "4"]) == 0
    assert len(re.findall(r"\((blue|green|grey|red)\) -?\d\.\d{3}", capsys.readouterr().out)) == 4
    assert main([*args, "--json", "search", str(next(folder.rglob("*.png"))), "-k", "4"]) == 0
    assert len(json.loads(capsys.readouterr().out)["neighbours"]) == 4
    assert main([*args, "embed", str(tmp_path / "missing.png")]) == 2
    assert "neither a file nor a folder" in capsys.readouterr().err
    assert main(["--url", "http://127.0.0.1:9", "embed", str(folder)]) == 2
    assert capsys.readouterr().err.startswith("error: http://127.0.0.1:9")


def test_index_changes_through_the_client_and_its_command_line(live_server, tmp_path, capsys):
    folder = write_folder(tmp_path / "mine", "extra", IMAGES, LABELS)  # ids extra/...: new to the index
    with Client(live_server.url, KEY) as client:
        before = client.index_summary().count
        change = client.index_add([png_bytes(IMAGES[0]), png_bytes(IMAGES[1])], ids=["a/0", "a/1"],
                                  metadata=[{"owner": "me"}, {"owner": "you", "n": 2}])
        assert (change.added, change.replaced, change.count) == (2, 0, before + 2)
        assert client.index_get("a/1").metadata == {"owner": "you", "n": 2}
        (found,) = client.search([png_bytes(IMAGES[1])], k=1, filter={"owner": "you"}).results
        assert found.neighbours[0].id == "a/1" and found.neighbours[0].score > 0.999
        assert client.index_add([png_bytes(IMAGES[1])], ids=["a/1"]).replaced == 1
        assert client.index_get("a/1").metadata == {}
        for id in ("a/0", "a/1"):
            client.index_remove(id)
        with pytest.raises(ServiceError) as caught:
            client.index_get("a/0")
        assert caught.value.status == 404
        assert client.index_summary().count == before

    args = ["--url", live_server.url, "--api-key", KEY, "--batch", "3"]
    assert main([*args, "index", "add", str(folder), "--metadata", '{"owner": "cli"}']) == 0
    assert f"added {len(IMAGES)} images: {before + len(IMAGES)} in the index" in capsys.readouterr().err
    with Client(live_server.url, KEY) as client:
        ids = sorted(f.relative_to(folder).as_posix() for f in folder.rglob("*.png"))
        assert client.index_get(ids[0]).metadata == {"owner": "cli"}
        assert main([*args, "index", "update", ids[0], '{"album": "x", "owner": null}']) == 0
        assert json.loads(capsys.readouterr().out.splitlines()[-1])["metadata"] == {"album": "x"}
        assert main([*args, "index", "remove", "--filter", "owner=cli"]) == 0  # all but the one updated
        assert f"removed {len(ids) - 1} images" in capsys.readouterr().out
        assert main([*args, "index", "remove", ids[0]]) == 0
        assert client.index_summary().count == before
    capsys.readouterr()
    assert main([*args, "index", "info"]) == 0
    assert json.loads(capsys.readouterr().out)["count"] == before
    assert main([*args, "index", "remove", "a", "--filter", "owner=cli"]) == 2
    assert "not both" in capsys.readouterr().err


def test_vectors_bulk_removal_metadata_and_paging_through_the_client(live_server):
    with Client(live_server.url, KEY) as client:
        before = client.index_summary().count
        vectors = client.embed([png_bytes(image) for image in IMAGES[:3]]).embeddings
        change = client.index_add_vectors(["v/0", "v/1", "v/2"], [e.representation for e in vectors],
                                          [{"n": 0}, {"n": 1}, {"n": 2}])
        assert (change.added, change.count) == (3, before + 3)
        (ranged,) = client.search_embeddings([vectors[0].representation], k=10, filter={"n": {"gte": 1}}).results
        assert sorted(n.id for n in ranged.neighbours) == ["v/1", "v/2"]  # conditions go as n>=1 in the query
        assert [i.id for i in client.index_images(filter={"n": {"lt": 1}})] == ["v/0"]
        assert client.index_update("v/1", {"n": None, "tag": "odd"}).metadata == {"tag": "odd"}
        listed = list(client.index_images(page_size=2))  # pages of 2: every image, once, in order
        assert len(listed) == before + 3 and len({i.id for i in listed}) == before + 3
        assert [i.id for i in listed[-3:]] == ["v/0", "v/1", "v/2"]  # an update keeps an image's place
        assert client.index_delete(filter={"tag": "odd"}).removed == 1
        assert client.index_delete(ids=["v/0", "v/2"]).count == before


def test_a_503_with_retry_after_is_retried_a_bounded_number_of_times():
    import httpx2

    answers, waits = [], []

    def handler(request: httpx2.Request) -> httpx2.Response:
        answers.append(request.url.path)
        if len(answers) <= 2:
            return httpx2.Response(503, headers={"Retry-After": "120"}, json={"detail": "still loading"})
        return httpx2.Response(200, json={"type": "Flat", "count": 1, "dim": 4, "classes": [], "runtime": "onnx-int8",
                                          "thumbnail_size": 128, "read_only": False})

    client = Client("http://service", retries=3, max_wait=5, sleep=waits.append)
    client.http = httpx2.Client(base_url="http://service", transport=httpx2.MockTransport(handler))
    assert client.index_summary().count == 1 and waits == [5, 5]  # as asked, but never over max_wait
    answers.clear()
    waits.clear()
    client.retries = 1

    def always(request: httpx2.Request) -> httpx2.Response:
        answers.append(request.url.path)
        return httpx2.Response(503, headers={"Retry-After": "1"}, json={"detail": "overloaded"})

    client.http = httpx2.Client(base_url="http://service", transport=httpx2.MockTransport(always))
    with pytest.raises(ServiceError) as caught:
        client.index_summary()
    assert caught.value.status == 503 and caught.value.retry_after == 1 and len(answers) == 2 and waits == [1]
