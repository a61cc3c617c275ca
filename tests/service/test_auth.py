"""The optional API key and CORS, through the ASGI test client (and uvicorn where paths differ)."""

from __future__ import annotations

import hmac

import httpx2
import pytest
from factories import colour_images, wait_ready
from fastapi.testclient import TestClient
from pydantic import ValidationError

from benchmarks.harness.images import png_bytes
from benchmarks.harness.load import Server
from service.app import create_app
import service.auth
from service.settings import Settings

KEY = "s3cret-key"
IMAGE = png_bytes(colour_images(1)[0][0])
PROBLEM = "application/problem+json"
ORIGIN = "https://elsewhere.example"


@pytest.fixture(scope="module")
def keyed(bundle_dir, index_copy):
    settings = Settings(bundle=bundle_dir, index=index_copy, api_key=KEY, max_request_bytes=200_000, torch_threads=2)
    with TestClient(create_app(settings)) as client:
        assert wait_ready(client)["ready"]
        yield client


def embed(client: TestClient, **headers: str):
    return client.post("/embed", files=[("images", ("0.png", IMAGE, "image/png"))], headers=headers)


def assert_unauthorized(response) -> None:
    assert response.status_code == 401, response.text
    assert response.headers["content-type"] == PROBLEM and response.headers["www-authenticate"] == "Bearer"
    body = response.json()
    assert body["status"] == 401 and "API key" in body["detail"]


def test_without_a_key_setting_everything_is_open(client):
    assert embed(client).status_code == 200
    assert client.get("/version").status_code == 200


@pytest.mark.parametrize("method, path", [("GET", "/version"), ("GET", "/thumbnails/0"), ("GET", "/search?id=0"),
                                          ("POST", "/classify"), ("DELETE", "/index/images/a"),
                                          ("POST", "/index/images"), ("GET", "/index"), ("GET", "/openapi.json"),
                                          ("GET", "/docs"),
                                          ("GET", "/static/../version"), ("GET", "/no/such/route")])
def test_with_a_key_every_other_route_refuses_without_it(keyed, method, path):
    assert_unauthorized(keyed.request(method, path))


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": "wrong"}, {"X-API-Key": KEY[:-1]}, {"X-API-Key": KEY + "x"},
                                     {"Authorization": f"Basic {KEY}"}, {"Authorization": "Bearer wrong"},
                                     {"Authorization": KEY}, {"X-API-Key": ""}])
def test_missing_or_wrong_key_is_401(keyed, headers):
    assert_unauthorized(embed(keyed, **headers))


@pytest.mark.parametrize("headers", [{"X-API-Key": KEY}, {"Authorization": f"Bearer {KEY}"},
                                     {"Authorization": f"bearer {KEY}"}])
def test_the_right_key_is_let_through(keyed, headers):
    response = embed(keyed, **headers)
    assert response.status_code == 200, response.text
    assert len(response.json()["embeddings"]) == 1
    assert keyed.get("/version", headers=headers).status_code == 200


def test_health_readiness_metrics_and_the_page_stay_open(keyed):
    assert keyed.get("/").status_code == 200 and keyed.get("/static/app.js").status_code == 200  # it asks for the key
    assert keyed.get("/healthz").json() == {"status": "ok"}
    assert keyed.get("/readyz").json()["ready"] is True
    assert "simclr_http_requests_total" in keyed.get("/metrics").text


def test_behind_a_proxy_prefix_the_probes_and_the_page_stay_open(bundle_dir, index_dir, tmp_path):
    """With --root-path, uvicorn's scope path holds the prefix (/simclr/healthz): the open paths are the routes'
    own. The ASGI test client leaves the prefix out, so this runs the real server."""
    server = Server(bundle_dir, index_dir, tmp_path / "server.log", flags={"api-key": KEY, "root-path": "/simclr"})
    server.start()
    try:
        server.wait_ready(timeout=120)  # polls /readyz without the key
        for path in ("/healthz", "/readyz", "/metrics", "/v2/health/ready", "/", "/static/app.js"):
            assert httpx2.get(f"{server.url}{path}").status_code == 200, path
        assert_unauthorized(httpx2.get(f"{server.url}/version"))
        assert httpx2.get(f"{server.url}/version", headers={"X-API-Key": KEY}).status_code == 200
    finally:
        server.stop()


def test_a_request_without_the_key_is_refused_before_its_body_is_read(keyed):
    # Over max_request_bytes: an authenticated request would get 413, so 401 shows the body was never read.
    too_big = b"x" * 300_000
    assert_unauthorized(keyed.post("/embed", content=too_big, headers={"content-type": "application/json"}))
    response = keyed.post("/embed", content=too_big, headers={"content-type": "application/json", "X-API-Key": KEY})
    assert response.status_code == 413


def test_the_key_is_compared_in_constant_time(keyed, monkeypatch):
    calls, real = [], hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(service.auth.hmac, "compare_digest", spy)
    assert embed(keyed, **{"X-API-Key": "wrong"}).status_code == 401
    assert embed(keyed, **{"X-API-Key": KEY}).status_code == 200
    assert calls == [(b"wrong", KEY.encode()), (KEY.encode(), KEY.encode())]


def test_the_key_comes_from_the_environment_or_the_flag_and_cannot_be_empty(monkeypatch):
    monkeypatch.setenv("SIMCLR_API_KEY", "from-env")
    assert Settings(bundle="b").api_key.get_secret_value() == "from-env"
    assert Settings(_cli_parse_args=["--bundle", "b", "--api-key", "from-flag"]).api_key.get_secret_value() \
        == "from-flag"
    assert "from-env" not in repr(Settings(bundle="b"))  # a secret: never printed with the settings
    with pytest.raises(ValidationError):
        Settings(bundle="b", api_key="")  # an empty key would let every request without one through


def test_cors_is_closed_by_default(client):
    preflight = client.options("/embed", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
    assert "access-control-allow-origin" not in preflight.headers
    assert "access-control-allow-origin" not in client.get("/version", headers={"Origin": ORIGIN}).headers


def test_cors_opens_only_to_the_listed_origins(bundle_dir, index_dir):
    settings = Settings(bundle=bundle_dir, index=index_dir, api_key=KEY, cors_origins=[ORIGIN], torch_threads=2)
    with TestClient(create_app(settings)) as client:
        preflight = client.options("/embed", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST",
                                                      "Access-Control-Request-Headers": "X-API-Key"})
        assert preflight.status_code == 200  # preflights carry no key: they are answered before the check
        assert preflight.headers["access-control-allow-origin"] == ORIGIN
        other = client.options("/embed", headers={"Origin": "https://evil.example",
                                                  "Access-Control-Request-Method": "POST"})
        assert "access-control-allow-origin" not in other.headers
