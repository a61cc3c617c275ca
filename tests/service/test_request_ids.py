"""X-Request-ID: on every answer, the caller's own when usable and a new one otherwise, in problems' bodies and in
the log line of an unexpected error, and what the Python client's ServiceError carries."""

from __future__ import annotations

import logging
import re

import httpx2
import pytest
from conftest import KEY
from factories import colour_images
from fastapi.testclient import TestClient

from benchmarks.harness.images import png_bytes
from service.app import create_app
from service.client import Client, ServiceError
from service.settings import Settings

NEW = re.compile(r"[0-9a-f]{32}")
UPLOAD = [("images", ("0.png", png_bytes(colour_images(1, seed=3)[0][0]), "image/png"))]


def test_each_answer_has_an_id_the_callers_when_usable(client):
    first, second = client.get("/healthz"), client.get("/healthz")
    assert NEW.fullmatch(first.headers["x-request-id"]) and NEW.fullmatch(second.headers["x-request-id"])
    assert first.headers["x-request-id"] != second.headers["x-request-id"]
    assert client.get("/healthz", headers={"X-Request-ID": "lb-7f3a.1:2"}).headers["x-request-id"] == "lb-7f3a.1:2"
    for unusable in ("two words", "x" * 129, "forged\r\nINFO: line", "caf\u00e9"):
        given = client.get("/healthz", headers={"X-Request-ID": unusable.encode()})
        assert given.status_code == 200 and NEW.fullmatch(given.headers["x-request-id"]), unusable


def test_a_problem_carries_its_requests_id(client):
    missing = client.get("/index/images/no-such-id", headers={"X-Request-ID": "trace-1"})
    assert missing.status_code == 404 and missing.json()["request_id"] == "trace-1"
    assert missing.headers["x-request-id"] == "trace-1"
    invalid = client.post("/classify?k=0", files=UPLOAD)
    assert invalid.status_code == 422 and invalid.json()["request_id"] == invalid.headers["x-request-id"]


def test_an_unexpected_error_is_logged_under_the_id_it_answers_with(client, monkeypatch, caplog):
    async def broken(images):
        raise RuntimeError("a bug")

    monkeypatch.setattr(client.app.state.service.batcher, "submit", broken)
    unraised = TestClient(client.app, raise_server_exceptions=False)  # the same app, answering as a server does
    with caplog.at_level(logging.ERROR, logger="service"):
        response = unraised.post("/embed", files=UPLOAD, headers={"X-Request-ID": "trace-500"})
    assert response.status_code == 500 and response.json()["request_id"] == "trace-500"
    assert response.headers["x-request-id"] == "trace-500"
    (logged,) = [r for r in caplog.records if "unexpected error" in r.getMessage()]
    assert "(request trace-500)" in logged.getMessage() and "a bug" in logged.exc_text


def test_refusals_before_the_routes_carry_it_and_browsers_may_read_it(bundle_dir, index_dir):
    settings = Settings(bundle=bundle_dir, index=index_dir, api_key="secret", cors_origins=["https://app.example"])
    app = TestClient(create_app(settings))  # not started: the key check answers before anything is loaded
    refused = app.get("/version", headers={"Origin": "https://app.example", "X-Request-ID": "trace-401"})
    assert refused.status_code == 401 and refused.json()["request_id"] == "trace-401"
    assert refused.headers["x-request-id"] == "trace-401"
    assert "x-request-id" in refused.headers["access-control-expose-headers"].lower()


def test_the_python_clients_error_names_the_request(live_server):
    with Client(live_server.url, api_key=KEY) as client, pytest.raises(ServiceError) as caught:
        client.thumbnail("no-such-id")
    answered = httpx2.get(f"{live_server.url}/thumbnails/no-such-id", headers={"X-API-Key": KEY})
    assert caught.value.status == 404 and NEW.fullmatch(caught.value.request_id)
    assert caught.value.request_id != answered.headers["x-request-id"]  # each request its own
