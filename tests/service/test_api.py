"""Every route and every error case through the ASGI test client."""

from __future__ import annotations

import base64
import io
import json
import logging
import time

import numpy as np
import pytest
import torch
from factories import CLASSES, MACHINE, colour_images, make_run, wait_ready
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.harness.images import png_bytes
from contract.bundle import load_bundle
from service.app import create_app
from service.model import Model
from service.settings import Settings
from trainer.export import export

IMAGES, LABELS = colour_images(6, seed=0)  # the indexed training images, in index order (class by class)
IDS = [f"train/{CLASSES[label]}/{i:04d}.png" for i, label in enumerate(LABELS)]  # their ids: paths in the folder
PROBLEM = "application/problem+json"


def files(*images: bytes, field: str = "images") -> list:
    return [(field, (f"{i}.png", data, "image/png")) for i, data in enumerate(images)]


def assert_problem(response, status: int, *words: str) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"]
    for word in words:
        assert word in body["detail"], body["detail"]
    return body


# -- the routes ---------------------------------------------------------------------------------------------

def test_health_readiness_version(client, bundle_dir):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"ready": True, "bundle": True, "index": True, "search": "ready",
                                            "search_detail": None, "error": None}
    version = client.get("/version").json()
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert version["classes"] == manifest["classes"] == list(CLASSES) and version["classifier"] is True
    assert version["evaluation"]["top1"] == manifest["metrics"]["top1"] and version["runtime"] == "torch-fp32"
    assert version["evaluation"]["runtime_checks"] == []  # exported without int8, its data not on this machine
    assert version["evaluation"]["calibration"]["temperature"] == manifest["architecture"]["classifier"]["temperature"]
    assert version["familiarity"]["threshold"] == manifest["familiarity"]["threshold"]
    assert version["evaluation"]["data"] == manifest["metrics"]["protocol"]["data_name"]
    assert version["bundle_fingerprint"] == load_bundle(bundle_dir).fingerprint
    assert version["training"] == {k: manifest["training"][k] for k in (
        "epochs", "checkpoint_epoch", "hours", "median_pace_hours", "machines", "commits")}
    assert version["training"]["machines"] == [MACHINE]
    assert version["index"] == {"type": "Flat", "count": len(IMAGES), "dim": 512, "classes": list(CLASSES),
                                "runtime": "torch-fp32", "thumbnail_size": 128, "read_only": False}
    assert str(bundle_dir) not in json.dumps(version) and "/" not in json.dumps(version)  # no server paths


@pytest.mark.parametrize("request_args, kind", [
    (("post", "/embed", {"content": b"x", "headers": {"content-type": "text/plain"}}), "unsupported-media-type"),
    (("post", "/embed", {"files": [("images", ("a.txt", b"plain text"))]}), "unsupported-image-format"),
    (("post", "/embed", {"files": [("images", ("a.png", png_bytes(IMAGES[0])[:60]))]}), "invalid-image"),
    (("post", "/embed", {"files": [("images", ("a.png", b"x"))] * 9}), "too-many-images"),
    (("get", "/thumbnails/nope", {}), "not-found"),
    (("post", "/search", {"params": {"class_name": "cat"}, "files": [("images", png_bytes(IMAGES[0]))]}),
     "invalid-request"),
    (("delete", "/embed", {}), "method-not-allowed"),
])
def test_each_kind_of_problem_has_its_own_type(client, request_args, kind):
    method, path, kwargs = request_args
    body = getattr(client, method)(path, **kwargs).json()
    assert body["type"] == f"/problems/{kind}", body
    description = client.get(body["type"]).json()
    assert description["kind"] == kind and description["description"]
    assert client.get("/problems/nonsense").status_code == 404


def test_openapi_operation_ids_are_readable(client):
    operations = [op["operationId"] for path in client.get("/openapi.json").json()["paths"].values()
                  for op in path.values()]
    assert {"embed", "classify", "search_images", "search_by_id", "create_embeddings"} <= set(operations)
    assert all("_post" not in op and "_get" not in op for op in operations)


def test_embed_multipart(client, bundle_dir):
    response = client.post("/embed", files=files(png_bytes(IMAGES[0]), png_bytes(IMAGES[7])))
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["representation_dim"], body["projection_dim"], body["normalized"]) == (512, 32, True)
    assert body["model"] == load_bundle(bundle_dir).name
    vectors = np.array([e["representation"] for e in body["embeddings"]])
    assert vectors.shape == (2, 512) and all(e["projection"] is None for e in body["embeddings"])
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)


def test_embed_raw_and_projection_equal_the_model(client, bundle_dir):
    response = client.post("/embed?normalize=false&projection=true", files=files(png_bytes(IMAGES[3])))
    embedding = response.json()["embeddings"][0]
    expected = Model(load_bundle(bundle_dir)).infer(torch.from_numpy(IMAGES[3:4]).permute(0, 3, 1, 2))
    np.testing.assert_allclose(embedding["representation"], expected.representation[0], atol=1e-4)
    np.testing.assert_allclose(embedding["projection"], expected.projection[0], atol=1e-4)


def test_embed_json_base64_and_data_urls(client):
    data = png_bytes(IMAGES[0])
    plain = base64.b64encode(data).decode()
    response = client.post("/embed", json={"images": [plain, "data:image/png;base64," + plain]})
    assert response.status_code == 200, response.text
    a, b = (e["representation"] for e in response.json()["embeddings"])
    assert a == b
    multipart = client.post("/embed", files=files(data)).json()["embeddings"][0]["representation"]
    np.testing.assert_allclose(a, multipart, atol=1e-6)


def test_any_size_and_mode_is_accepted(client):
    big = Image.fromarray(np.kron(IMAGES[0], np.ones((5, 7, 1), dtype=np.uint8)))  # 80x112
    sixteen_bit = Image.fromarray((np.arange(16 * 16, dtype=np.uint16) * 200).reshape(16, 16))
    uploads = [png_bytes(big), png_bytes(big.convert("L")), png_bytes(big.convert("RGBA")),
               png_bytes(big.convert("P")), png_bytes(sixteen_bit), png_bytes(big, "JPEG")]
    response = client.post("/classify", files=files(*uploads))
    assert response.status_code == 200, response.text
    assert len(response.json()["classifications"]) == len(uploads)


def test_classify_top_k(client):
    body = client.post("/classify", files=files(png_bytes(IMAGES[0]), png_bytes(IMAGES[20]))).json()
    for result in body["classifications"]:
        predictions = result["predictions"]
        assert len(predictions) == 3
        probabilities = [p["probability"] for p in predictions]
        assert probabilities == sorted(probabilities, reverse=True)
        assert all(CLASSES[p["class_id"]] == p["class_name"] for p in predictions)
    every = client.post("/classify?k=10", files=files(png_bytes(IMAGES[0]))).json()["classifications"][0]
    assert len(every["predictions"]) == len(CLASSES)  # k beyond the number of classes gives them all
    assert sum(p["probability"] for p in every["predictions"]) == pytest.approx(1, abs=1e-5)


def test_answers_say_how_far_each_image_is_from_the_training_images(client, bundle_dir):
    """training_distance is the Mahalanobis distance of the image's unit representation to the nearest of the
    bundle's class means, and the flag compares it with the bundle's threshold, in /classify, /embed and the
    OpenAI endpoint alike."""
    bundle = load_bundle(bundle_dir)
    threshold, (means, precision) = bundle.manifest.familiarity.threshold, bundle.familiarity
    unit = Model(bundle).infer(torch.from_numpy(IMAGES[:2]).permute(0, 3, 1, 2)).unit
    expected = torch.stack([torch.stack([((u - m) @ precision @ (u - m)).sqrt() for m in means]).min() for u in unit])
    uploads = files(png_bytes(IMAGES[0]), png_bytes(IMAGES[1]))
    for answers in (client.post("/classify", files=uploads).json()["classifications"],
                    client.post("/embed", files=uploads).json()["embeddings"]):
        assert [a["training_distance"] for a in answers] == pytest.approx(expected.tolist(), abs=1e-3)
        assert [a["unlike_training_data"] for a in answers] == [d > threshold for d in expected.tolist()]
    openai = client.post("/v1/embeddings", json={"model": bundle.name, "input": [
        base64.b64encode(png_bytes(IMAGES[0])).decode()]}).json()["data"][0]
    assert openai["training_distance"] == pytest.approx(expected[0].item(), abs=1e-3)


def test_search_finds_the_indexed_image_first(index_client):
    body = index_client.post("/search?k=5", files=files(png_bytes(IMAGES[9]))).json()
    assert body["index_size"] == len(IMAGES)
    neighbours = body["results"][0]["neighbours"]
    assert len(neighbours) == 5 and neighbours[0]["id"] == IDS[9]
    assert neighbours[0]["score"] == pytest.approx(1, abs=1e-4)
    assert [n["score"] for n in neighbours] == sorted((n["score"] for n in neighbours), reverse=True)
    first = neighbours[0]
    assert first["metadata"] == {"class": CLASSES[LABELS[9]], "split": "train"}
    assert first["image_url"] == f"/thumbnails/{IDS[9]}"


def test_search_by_embedding_pages_and_thresholds(index_client):
    vector = index_client.post("/embed", files=files(png_bytes(IMAGES[7]))).json()["embeddings"][0]["representation"]
    scaled = [10 * x for x in vector]  # any length: normalised by the service
    first = index_client.post("/search", params={"k": 4}, json={"embeddings": [scaled]}).json()
    first = first["results"][0]["neighbours"]
    assert first[0]["id"] == IDS[7] and first[0]["score"] == pytest.approx(1, abs=1e-4)
    page = index_client.post("/search", params={"k": 2, "offset": 2}, json={"embeddings": [vector]}).json()
    assert [n["id"] for n in page["results"][0]["neighbours"]] == [n["id"] for n in first[2:4]]
    close = index_client.post("/search", params={"k": 10, "min_score": first[1]["score"]},
                        json={"embeddings": [vector]}).json()["results"][0]["neighbours"]
    assert [n["id"] for n in close] == [n["id"] for n in first[:2]]
    by_id = index_client.get("/search", params={"id": IDS[7], "k": 1, "offset": 1}).json()["results"][0]["neighbours"]
    assert by_id[0]["id"] == first[2]["id"]  # itself left out, then one skipped
    in_body = index_client.post("/search", json={"embeddings": [vector], "k": 2, "offset": 2}).json()
    assert in_body == page  # the parameters in the body, as in the query string
    clash = index_client.post("/search", params={"k": 3}, json={"embeddings": [vector], "k": 2})
    assert_problem(clash, 422, "k is given twice")


@pytest.mark.parametrize("body, message", [
    ({"embeddings": [[1.0, 2.0]]}, "512 numbers"), ({"embeddings": [[0.0] * 512]}, "no direction"),
    ({"embeddings": [[1.0] * 512], "images": ["AAAA"]}, "either images or embeddings"),
    ({"embeddings": [[1.0] * 512], "top": 3}, "JSON body: top: Extra inputs"),
    ({"images": ["AAAA"], "color": "red"}, "JSON body: color: Extra"),
])
def test_bad_search_bodies_are_refused(index_client, body, message):
    assert_problem(index_client.post("/search", json=body), 422, message)


def test_urls_carry_the_path_prefix_of_a_reverse_proxy(bundle_dir, index_dir):
    settings = Settings(bundle=bundle_dir, index=index_dir, root_path="/simclr")
    with TestClient(create_app(settings), root_path="/simclr") as client:
        assert wait_ready(client)["ready"]
        hits = client.post("/search", params={"k": 1}, files=files(png_bytes(IMAGES[0]))).json()
        url = hits["results"][0]["neighbours"][0]["image_url"]
        assert url == f"/simclr/thumbnails/{hits['results'][0]['neighbours'][0]['id']}"
        assert client.get(url.removeprefix("/simclr")).headers["content-type"] == "image/jpeg"
        page = client.get("/").text
        assert 'src="static/app.js"' in page and 'href="/' not in page  # relative: stays under the prefix
        assert client.get("/openapi.json").json()["servers"] == [{"url": "/simclr"}]
        missing = client.get("/index/images/no-such-id").json()  # a problem's type resolves under the prefix too
        assert missing["type"] == "/simclr/problems/not-found"
        assert missing["instance"] == "/simclr/index/images/no-such-id"
        assert client.get(missing["type"].removeprefix("/simclr")).json()["type"] == missing["type"]


def test_search_filtered_by_class(index_client):
    body = index_client.post("/search?k=100&class_name=blue", files=files(png_bytes(IMAGES[0]))).json()
    neighbours = body["results"][0]["neighbours"]
    assert len(neighbours) == int((LABELS == CLASSES.index("blue")).sum())
    assert {n["metadata"]["class"] for n in neighbours} == {"blue"}
    same = index_client.post("/search?k=100&filter=class:blue&filter=split:train", files=files(png_bytes(IMAGES[0])))
    assert same.json() == body
    either = index_client.post("/search", json={"images": [base64.b64encode(png_bytes(IMAGES[0])).decode()], "k": 100,
                                          "filter": {"class": ["blue", "red"]}}).json()["results"][0]["neighbours"]
    assert {n["metadata"]["class"] for n in either} == {"blue", "red"} and len(either) == 12
    none = index_client.get("/search", params={"id": IDS[0], "filter": "split:test"}).json()
    assert none["results"] == [{"neighbours": []}]


def test_search_from_an_indexed_image_leaves_it_out(index_client):
    by_id = index_client.get("/search", params={"id": IDS[9], "k": 4}).json()["results"][0]["neighbours"]
    by_upload = index_client.post("/search?k=5", files=files(png_bytes(IMAGES[9]))).json()["results"][0]["neighbours"]
    assert [n["id"] for n in by_id] == [n["id"] for n in by_upload[1:]]


def test_thumbnails_are_served_as_indexed(index_client):
    response = index_client.get(f"/thumbnails/{IDS[9]}")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    thumbnail = np.asarray(Image.open(io.BytesIO(response.content))).astype(int)
    assert thumbnail.shape == IMAGES[9].shape and np.abs(thumbnail - IMAGES[9]).mean() < 12  # JPEG q90


def test_page_docs_and_openapi(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and "static/app.js" in page.text
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/docs").status_code == 200
    body = client.get("/openapi.json").json()["paths"]["/embed"]["post"]["requestBody"]["content"]
    assert set(body) == {"multipart/form-data", "application/json"}


def test_metrics(client):
    client.post("/embed", files=files(png_bytes(IMAGES[0])))
    client.get("/thumbnails/nope")
    text = client.get("/metrics").text
    assert 'simclr_http_requests_total{method="POST",route="/embed",status="200"}' in text
    assert 'simclr_http_requests_total{method="GET",route="/thumbnails/{id:path}",status="404"}' in text
    for name in ("simclr_http_request_duration_seconds_bucket", "simclr_inference_batch_size_bucket",
                 "simclr_inference_queue_depth", "simclr_inference_seconds_count", "simclr_search_seconds_count",
                 "process_resident_memory_bytes", "python_info", "python_gc_objects_collected_total"):
        assert name in text


def scrape(client) -> dict[str, list]:
    """GET /metrics parsed: {sample name: its samples (labels, value)}."""
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def test_metrics_describe_the_model_and_follow_the_index_size(client, bundle_dir):
    version, summary = client.get("/version").json(), client.get("/index").json()
    [info] = scrape(client)["simclr_model_info"]
    assert info.value == 1 and info.labels == {
        "model": version["model"], "bundle_fingerprint": load_bundle(bundle_dir).fingerprint,
        "backbone": "resnet18", "runtime": "torch-fp32", "index_type": "Flat",
        "device": "cuda" if torch.cuda.is_available() else "cpu"}
    assert summary["type"] == "Flat" and version["model"].startswith("simclr-resnet18")
    [images], [dim] = scrape(client)["simclr_index_images"], scrape(client)["simclr_index_dimension"]
    assert images.value == summary["count"] > 0 and dim.value == summary["dim"] == 512
    added = client.post("/index/images", files=files(png_bytes(IMAGES[3])), data={"ids": ["metrics/one"]})
    assert added.json()["added"] == 1, added.text
    assert scrape(client)["simclr_index_images"][0].value == summary["count"] + 1
    assert client.delete("/index/images/metrics/one").status_code == 200
    assert scrape(client)["simclr_index_images"][0].value == summary["count"]


# -- bad input: a 4xx problem, and the server keeps serving ---------------------------------------------------

def chunks(data: bytes, size: int = 10_000):
    for start in range(0, len(data), size):
        yield data[start:start + size]


def streamed_json(client, method: str, route: str):
    """300 KB sent chunked as JSON: no Content-Length to refuse it by."""
    return client.request(method, route, content=chunks(b"x" * 300_000), headers={"content-type": "application/json"})


@pytest.mark.parametrize("send, status, words", [
    (lambda c: c.post("/embed", files=files(b"not an image at all")), 415, ["images[0] (0.png)", "supported format"]),
    (lambda c: c.post("/embed", files=files(png_bytes(Image.new("RGB", (8, 8)), "PCX"))), 415, ["supported format"]),
    (lambda c: c.post("/embed", files=files(b"")), 422, ["empty"]),
    (lambda c: c.post("/embed", files=files(png_bytes(IMAGES[0])[:70])), 422, ["corrupt or truncated"]),
    (lambda c: c.post("/embed", files=files(png_bytes(Image.new("L", (2000, 1000))))), 413, ["pixels"]),
    (lambda c: c.post("/embed", files=files(*[png_bytes(IMAGES[0])] * 9)), 413, ["at most 8"]),
    (lambda c: c.post("/embed", json={"images": [base64.b64encode(png_bytes(IMAGES[0])).decode()] * 9}), 413,
     ["too many images"]),
    (lambda c: c.post("/embed", content=b"x" * 300_000, headers={"content-type": "application/json"}), 413,
     ["over the limit of 200000"]),
    (lambda c: c.post("/embed", content=chunks(b"x" * 300_000), headers={"content-type": "application/json"}),
     413, ["over the limit"]),
    (lambda c: c.post("/embed", files=files(b"x" * 300_000)), 413, ["over the limit"]),
    # Streamed past the limit to routes whose JSON FastAPI reads itself: 413 too, not its "error parsing the body".
    *[(lambda c, method=method, route=route: streamed_json(c, method, route), 413, ["over the limit"])
      for method, route in (("POST", "/index/vectors"), ("POST", "/index/delete"), ("POST", "/v1/embeddings"),
                            ("PATCH", "/index/images/any"))],
    (lambda c: c.post("/embed", json={"images": ["%%%not base64%%%"]}), 422, ["images[0]", "base64"]),
    (lambda c: c.post("/embed", content=b"{not json", headers={"content-type": "application/json"}), 422,
     ["invalid JSON"]),
    (lambda c: c.post("/embed", json={"pictures": []}), 422, ["images"]),
    (lambda c: c.post("/embed", json={"images": []}), 422, ["images"]),
    (lambda c: c.post("/embed", json=["a list"]), 422, ["invalid JSON"]),
    (lambda c: c.post("/embed", content=b"hello", headers={"content-type": "text/plain"}), 415, ["content type"]),
    (lambda c: c.post("/embed"), 415, ["content type"]),
    (lambda c: c.post("/embed", data={"images": "a string"}, files=files(png_bytes(IMAGES[0]))), 422,
     ["not a file"]),
    (lambda c: c.post("/embed", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"}), 400,
     ["boundary"]),
    (lambda c: c.post("/classify?k=0", files=files(png_bytes(IMAGES[0]))), 422, ["k"]),
    (lambda c: c.post("/classify?k=11", files=files(png_bytes(IMAGES[0]))), 422, ["k"]),
    (lambda c: c.post("/classify?k=three", files=files(png_bytes(IMAGES[0]))), 422, ["k"]),
    (lambda c: c.post("/search?k=101", files=files(png_bytes(IMAGES[0]))), 422, ["k"]),
    (lambda c: c.post("/search?class_name=cat", files=files(png_bytes(IMAGES[0]))), 422, ["unknown class_name"]),
    (lambda c: c.get("/search?id=24"), 404, ["no indexed image has id '24'"]),
    (lambda c: c.get("/search?id="), 422, ["id"]),
    (lambda c: c.get("/search"), 422, ["id"]),
    (lambda c: c.get("/search?id=train/red/0018.png&filter=class"), 422, ["not key:value"]),
    (lambda c: c.get("/thumbnails/24"), 404, ["no indexed image"]),
    (lambda c: c.get("/thumbnails/..%2F..%2Fetc%2Fpasswd"), 404, []),
    (lambda c: c.get("/thumbnails/../../etc/passwd"), 404, []),
    (lambda c: c.get("/index/images/nope"), 404, ["no indexed image has id 'nope'"]),
    (lambda c: c.get("/static/../service/app.py"), 404, []),
    (lambda c: c.get("/no/such/route"), 404, ["not found"]),
    (lambda c: c.delete("/embed"), 405, ["method not allowed"]),
    (lambda c: c.post("/index/vectors", json={"vectors": [{"id": "big", "vector": [10**400] + [1.0] * 511}]}), 422,
     ["vector"]),
    (lambda c: c.get("/index/images?after=99999999999999999999"), 422, ["not a cursor"]),
    (lambda c: c.get("/index/images?after=\u00b2"), 422, ["not a cursor"]),
])
def test_bad_input_is_a_problem_and_the_server_keeps_serving(client, send, status, words):
    assert_problem(send(client), status, *words)
    assert client.post("/classify", files=files(png_bytes(IMAGES[0]))).status_code == 200


def test_integers_past_64_bits_are_kept_as_the_doubles_json_numbers_are(client):
    """SQLite stores 64-bit integers: a larger one is taken as a float rather than overflowing there (a 500)."""
    added = client.post("/index/vectors", json={"vectors": [{"id": "huge", "vector": [1.0] * 512,
                                                             "metadata": {"n": 2**64, "m": 2**63 - 1}}]})
    assert added.status_code == 200, added.text
    assert client.get("/index/images/huge").json()["metadata"] == {"n": float(2**64), "m": 2**63 - 1}
    patched = client.patch("/index/images/huge", json={"metadata": {"m": -2**63 - 1}})
    assert patched.status_code == 200 and patched.json()["metadata"]["m"] == float(-2**63 - 1)
    for bound in ({"gt": 10**20}, {"lte": -10**20}, 2**70):
        found = client.post("/search", json={"embeddings": [[1.0] * 512], "filter": {"n": bound}, "k": 1})
        assert found.status_code == 200 and found.json()["results"][0]["neighbours"] == [], bound
    assert client.post("/index/delete", json={"filter": {"n": 2**64}}).json()["removed"] == 1


def test_validation_problems_list_the_errors(client):
    body = assert_problem(client.post("/classify?k=0", files=files(png_bytes(IMAGES[0]))), 422)
    assert body["errors"][0]["loc"] == ["query", "k"]


# -- loading, and what a partial service answers ----------------------------------------------------------------

def test_not_ready_until_loading_ends(bundle_dir, index_dir, monkeypatch):
    import threading

    import service.state

    release = threading.Event()
    real = service.state.load_bundle
    monkeypatch.setattr(service.state, "load_bundle", lambda path: release.wait(30) and real(path))
    with TestClient(create_app(Settings(bundle=bundle_dir, index=index_dir))) as client:
        assert client.get("/healthz").status_code == 200
        readiness = client.get("/readyz")
        assert readiness.status_code == 503 and readiness.json()["ready"] is False
        loading = client.post("/embed", files=files(png_bytes(IMAGES[0])))
        assert_problem(loading, 503, "still loading")
        assert loading.headers["retry-after"] == "2" and loading.json()["type"] == "/problems/not-ready"
        release.set()
        assert wait_ready(client)["ready"]
        assert client.post("/embed", files=files(png_bytes(IMAGES[0]))).status_code == 200


def test_a_shut_down_service_is_not_ready_and_a_restart_serves_again(bundle_dir, index_dir):
    # A request that reaches a stopped batcher would wait forever: shutting down must end readiness first.
    app = create_app(Settings(bundle=bundle_dir, index=index_dir))
    with TestClient(app) as client:
        assert wait_ready(client)["ready"]
    assert app.state.service.ready is False
    with TestClient(app) as client:  # a second lifespan on the same app loads again
        assert wait_ready(client)["ready"]
        assert client.post("/embed", files=files(png_bytes(IMAGES[0]))).status_code == 200


def test_torch_runs_in_one_thread_and_faiss_in_another(bundle_dir, index_dir, monkeypatch):
    # Loading, warm-up and every batch share one thread: a second thread running torch's parallel kernels
    # makes libgomp's workers sleep between layers (service/state.py says what it cost). FAISS's thread count
    # is per thread, so it must hold in the thread that searches.
    import threading

    import faiss

    import service.state
    from service.index import SearchIndex

    torch_threads, searches = set(), []
    infer, search = service.state.Model.infer, SearchIndex.search
    monkeypatch.setattr(service.state.Model, "infer",
                        lambda self, x: torch_threads.add(threading.get_ident()) or infer(self, x))
    monkeypatch.setattr(SearchIndex, "search", lambda self, *args: searches.append(
        (threading.get_ident(), faiss.omp_get_max_threads())) or search(self, *args))
    with TestClient(create_app(Settings(bundle=bundle_dir, index=index_dir, faiss_threads=1))) as client:
        assert wait_ready(client)["ready"]
        for route in ("/embed", "/classify", "/search", "/search"):
            assert client.post(route, files=files(*(png_bytes(image) for image in IMAGES[:3]))).status_code == 200
        assert client.get("/search", params={"id": IDS[0]}).status_code == 200
    assert len(torch_threads) == 1 and threading.get_ident() not in torch_threads
    assert len(searches) == 3 and {faiss_threads for _, faiss_threads in searches} == {1}
    assert len({thread for thread, _ in searches} | torch_threads) == 2


def test_overload_is_a_fast_503_with_retry_after(client, monkeypatch):
    monkeypatch.setattr(client.app.state.service.batcher, "max_queue", 0)  # as if the queue were full
    response = client.post("/embed", files=files(png_bytes(IMAGES[0])))
    assert_problem(response, 503, "overloaded")
    assert response.json()["type"] == "/problems/overloaded" and int(response.headers["retry-after"]) >= 1
    assert 'simclr_requests_shed_total{reason="queue full"}' in client.get("/metrics").text
    # Refused before its body is read: a malformed one gets the same 503, not a 400.
    broken = client.post("/classify", content=b"--x\r\nbroken", headers={"content-type": "multipart/form-data"})
    assert_problem(broken, 503, "overloaded")
    assert_problem(client.post("/index/images", files=files(png_bytes(IMAGES[0]))), 503, "overloaded")
    assert_problem(client.post("/search", files=files(png_bytes(IMAGES[0]))), 503, "overloaded")
    # What needs no model is still served: a search by embedding.
    searched = client.post("/search", json={"embeddings": [[1.0] * 512], "k": 1})
    assert searched.status_code == 200 and len(searched.json()["results"][0]["neighbours"]) == 1


def test_a_request_caught_by_shutdown_gets_a_503_problem(client, monkeypatch):
    from service.batching import BatcherStopped

    async def stopped(images):
        raise BatcherStopped("the service is shutting down")

    monkeypatch.setattr(client.app.state.service.batcher, "submit", stopped)
    response = client.post("/embed", files=files(png_bytes(IMAGES[0])))
    assert_problem(response, 503, "shutting down", "retry")
    assert response.headers["retry-after"] == "1" and response.json()["type"] == "/problems/shutting-down"


def test_without_an_index_the_service_builds_one_and_serves_meanwhile(bundle_dir, image_folder, tmp_path,
                                                                      monkeypatch):
    import threading

    import service.state

    release, real = threading.Event(), service.state.build
    monkeypatch.setattr(service.state, "build", lambda *a, **k: release.wait(30) and real(*a, **k))
    settings = Settings(bundle=bundle_dir, data_dir=image_folder, index_root=tmp_path / "indexes")
    with TestClient(create_app(settings)) as client:
        readiness = wait_ready(client)
        assert readiness["ready"] and readiness["search"] == "building" and not readiness["index"]
        assert client.post("/classify", files=files(png_bytes(IMAGES[0]))).status_code == 200  # served meanwhile
        response = client.post("/search", files=files(png_bytes(IMAGES[0])))
        assert_problem(response, 503, "not ready yet", "retry later")
        assert response.headers["retry-after"] == "10"
        metrics = scrape(client)  # the model is described at once, its index once it is there
        assert metrics["simclr_model_info"][0].labels["index_type"] == "none"
        assert metrics["simclr_index_images"][0].value == 0
        release.set()
        while client.get("/readyz").json()["search"] == "building":
            time.sleep(0.05)
        assert client.get("/readyz").json()["search"] == "ready"
        metrics = scrape(client)
        assert metrics["simclr_model_info"][0].labels["index_type"] == "Flat"
        assert metrics["simclr_index_images"][0].value == len(IMAGES)
        hits = client.post("/search", params={"k": 1}, files=files(png_bytes(IMAGES[0]))).json()
        assert hits["results"][0]["neighbours"][0]["score"] == pytest.approx(1, abs=1e-4)  # it finds itself
    built = [p for p in (tmp_path / "indexes").iterdir() if not p.name.startswith(".")]  # not the build lock
    assert len(built) == 1 and (built[0] / "index.json").is_file()
    monkeypatch.setattr(service.state, "build", lambda *a, **k: pytest.fail("built again"))
    with TestClient(create_app(settings)) as client:  # a restart serves the index it built
        assert wait_ready(client)["ready"]
        while client.get("/readyz").json()["search"] == "loading":
            time.sleep(0.05)
        assert client.get("/readyz").json()["search"] == "ready"


def test_without_data_search_is_off_and_says_why(bundle_dir, tmp_path):
    settings = Settings(bundle=bundle_dir, data_dir=tmp_path / "none", download=False, index_root=tmp_path / "i")
    with TestClient(create_app(settings)) as client:
        assert wait_ready(client)["ready"]
        while client.get("/readyz").json()["search"] in ("loading", "building"):
            time.sleep(0.05)
        readiness = client.get("/readyz").json()
        assert readiness["search"] == "off" and "CIFAR-10 is not there" in readiness["search_detail"]
        assert client.post("/embed", files=files(png_bytes(IMAGES[0]))).status_code == 200
        response = client.post("/search", files=files(png_bytes(IMAGES[0])))
        assert_problem(response, 501, "search is off", "CIFAR-10 is not there")
        assert "retry-after" not in response.headers and response.json()["type"] == "/problems/search-off"


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal where there is no GPU")
def test_a_gpu_asked_for_where_there_is_none_is_a_clear_error(bundle_dir):
    with TestClient(create_app(Settings(bundle=bundle_dir, device="cuda", data_dir=None))) as client:
        assert "--device cuda was asked for but torch sees no CUDA GPU" in wait_ready(client)["error"]
        assert_problem(client.post("/embed", files=files(png_bytes(IMAGES[0]))), 500, "no CUDA GPU")


def test_an_unexpected_failure_while_loading_is_said_not_left_loading(bundle_dir, index_dir, monkeypatch, caplog):
    def out_of_memory(self):
        raise RuntimeError("CUDA error: out of memory")

    monkeypatch.setattr("service.state.ServiceState._load", out_of_memory)
    with caplog.at_level(logging.ERROR, logger="service"), \
            TestClient(create_app(Settings(bundle=bundle_dir, index=index_dir))) as client:
        readiness = wait_ready(client, timeout=20)
        assert not readiness["ready"] and readiness["search"] == "off"
        assert readiness["error"].startswith("RuntimeError: CUDA error: out of memory")
        assert_problem(client.post("/embed", files=files(png_bytes(IMAGES[0]))), 500, "out of memory")
    assert any(r.exc_info and "CUDA error" in r.getMessage() for r in caplog.records)  # with its traceback


def test_an_index_that_cannot_be_opened_turns_search_off_and_says_why(bundle_dir, monkeypatch, tmp_path):
    def unreadable(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "catalog.sqlite")

    monkeypatch.setattr("service.state.open_index", unreadable)
    settings = Settings(bundle=bundle_dir, index_root=tmp_path, data_dir=None)
    with TestClient(create_app(settings)) as client:
        readiness = wait_ready(client, timeout=20)
        deadline = time.monotonic() + 20
        while readiness["search"] not in ("off", "ready") and time.monotonic() < deadline:
            time.sleep(0.05)
            readiness = client.get("/readyz").json()
        assert readiness["ready"] and readiness["search"] == "off"
        assert "could not be opened (PermissionError" in readiness["search_detail"]


def test_unevaluated_bundle_embeds_but_does_not_classify(tmp_path):
    run, _ = make_run(tmp_path / "run", evaluated=False)
    export(run, tmp_path / "bundle")
    settings = Settings(bundle=tmp_path / "bundle", data_dir=None, index_root=tmp_path / "indexes")
    with TestClient(create_app(settings)) as client:
        assert wait_ready(client)["ready"]
        assert client.post("/embed", files=files(png_bytes(IMAGES[0]))).status_code == 200
        assert_problem(client.post("/classify", files=files(png_bytes(IMAGES[0]))), 501, "not evaluated")
        while client.get("/readyz").json()["search"] == "loading":
            time.sleep(0.05)
        # No data to index: an empty index, for images added through the API.
        assert client.post("/search", files=files(png_bytes(IMAGES[0]))).json()["results"] == [{"neighbours": []}]
        assert client.post("/index/images", files=files(png_bytes(IMAGES[0]))).json()["count"] == 1
        hits = client.post("/search", files=files(png_bytes(IMAGES[0]))).json()["results"][0]["neighbours"]
        assert [h["id"] for h in hits] == ["0.png"]


def test_an_index_of_another_bundle_is_refused(tmp_path, index_dir):
    run, _ = make_run(tmp_path / "run", seed=1)
    export(run, tmp_path / "bundle")
    with TestClient(create_app(Settings(bundle=tmp_path / "bundle", index=index_dir))) as client:
        assert "built with another bundle" in wait_ready(client)["error"]
        assert client.get("/readyz").status_code == 503
        assert_problem(client.post("/embed", files=files(png_bytes(IMAGES[0]))), 500, "built with another bundle")


def test_a_tampered_bundle_is_refused(tmp_path, bundle_dir):
    import shutil

    shutil.copytree(bundle_dir, tmp_path / "bundle")
    weights = tmp_path / "bundle" / "projector.safetensors"
    weights.write_bytes(weights.read_bytes()[:-4] + b"\0\0\0\0")
    with TestClient(create_app(Settings(bundle=tmp_path / "bundle", data_dir=None))) as client:
        assert "does not match its sha256" in wait_ready(client)["error"]


def test_version_names_unnamed_evaluation_data_by_its_folder_never_its_path(tmp_path):
    run, _ = make_run(tmp_path / "run")
    evaluation = json.loads((run / "eval" / "metrics.json").read_text())
    del evaluation["protocol"]["data_name"]  # evaluated before data was named
    evaluation["protocol"]["data_dir"] = "/home/someone/data/colours"
    (run / "eval" / "metrics.json").write_text(json.dumps(evaluation))
    export(run, tmp_path / "bundle", onnx=False)
    settings = Settings(bundle=tmp_path / "bundle", index_root=tmp_path / "indexes", data_dir=None)
    with TestClient(create_app(settings)) as client:
        wait_ready(client)
        assert client.get("/version").json()["evaluation"]["data"] == "colours"
