"""service.client and its command line against a real server."""

from __future__ import annotations

import json

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
        assert len(found.neighbours) == 3 and {n.class_name for n in found.neighbours} == {"red"}
        by_id = client.search_by_id(found.neighbours[0].id, k=2).results[0].neighbours
        assert found.neighbours[0].id not in [n.id for n in by_id]
        vector = client.embed([png_bytes(IMAGES[1])]).embeddings[0].representation
        (again,) = client.search_embeddings([vector], k=2, class_name="red", offset=1).results
        assert [n.id for n in again.neighbours] == [n.id for n in found.neighbours[1:3]]
        assert client.image(by_id[0].id).startswith(b"\x89PNG")


def test_problems_are_exceptions_with_their_status(live_server):
    with Client(live_server.url, KEY) as client:
        with pytest.raises(ServiceError, match="not an image") as caught:
            client.embed([b"plain text"])
        assert caught.value.status == 415
        with pytest.raises(ServiceError) as caught:
            client.search_by_id(10**6)
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
    assert capsys.readouterr().out.count("#") == 4
    assert main([*args, "embed", str(tmp_path / "missing.png")]) == 2
    assert "neither a file nor a folder" in capsys.readouterr().err
    assert main(["--url", "http://127.0.0.1:9", "embed", str(folder)]) == 2
    assert capsys.readouterr().err.startswith("error: http://127.0.0.1:9")
