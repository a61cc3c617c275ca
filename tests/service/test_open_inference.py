"""The Open Inference Protocol (/v2) with the official tritonclient as the client, against a real server, and its
errors over plain HTTP: each a problem+json answer with the protocol's "error" member, never a 5xx."""

from __future__ import annotations

import base64
import threading

import httpx2
import numpy as np
import pytest
import tritonclient.http as triton
from conftest import KEY
from factories import CLASSES, SIZE, colour_images, wait_ready
from fastapi.testclient import TestClient
from tritonclient._plugin import InferenceServerClientPlugin
from tritonclient.utils import InferenceServerException

from benchmarks.harness.images import png_bytes
from service.app import create_app
from service.settings import Settings

IMAGES = colour_images(1, seed=7)[0]  # (4, S, S, 3): one image of each class
NCHW = np.ascontiguousarray(IMAGES.transpose(0, 3, 1, 2))
PROBLEM = "application/problem+json"


class ApiKey(InferenceServerClientPlugin):
    """The service's key on every request tritonclient makes."""

    def __call__(self, request) -> None:
        request.headers["X-API-Key"] = KEY


@pytest.fixture(scope="module")
def triton_client(live_server):
    client = triton.InferenceServerClient(live_server.url.removeprefix("http://"), network_timeout=60)
    client.register_plugin(ApiKey())
    yield client
    client.close()


def pixels(images: np.ndarray, binary: bool = True) -> triton.InferInput:
    tensor = triton.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images, binary_data=binary)
    return tensor


def uint8_json(images: np.ndarray, **extra) -> dict:
    return {"inputs": [{"name": "images", "shape": list(images.shape), "datatype": "UINT8",
                        "data": images.reshape(-1).tolist()}], **extra}


def assert_problem(response, status: int, *words: str, kind: str | None = None) -> dict:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM
    body = response.json()
    assert body["status"] == status and body["error"] == body["detail"]  # the protocol's member, and RFC 9457's
    for word in words:
        assert word in body["detail"], body["detail"]
    if kind:
        assert body["type"] == f"/problems/{kind}", body
    return body


def test_health_and_metadata_as_tritonclient_reads_them(live_server, triton_client, model_name):
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    server = triton_client.get_server_metadata()
    assert server["name"] == "simclr-cifar" and {"binary_tensor_data", "classification"} <= set(server["extensions"])
    assert triton_client.is_model_ready(model_name) and triton_client.is_model_ready(model_name, "1")
    assert not triton_client.is_model_ready("resnet50") and not triton_client.is_model_ready(model_name, "2")
    metadata = triton_client.get_model_metadata(model_name)
    assert metadata["name"] == model_name and metadata["versions"] == ["1"] and metadata["platform"] == "pytorch"
    assert metadata["inputs"] == [{"name": "images", "datatype": "UINT8", "shape": [-1, 3, SIZE, SIZE]},
                                  {"name": "image_files", "datatype": "BYTES", "shape": [-1]}]
    assert metadata["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, 512]},
                                   {"name": "projection", "datatype": "FP32", "shape": [-1, 32]},
                                   {"name": "probabilities", "datatype": "FP32", "shape": [-1, len(CLASSES)]},
                                   {"name": "training_distance", "datatype": "FP32", "shape": [-1]},
                                   {"name": "unlike_training_data", "datatype": "BOOL", "shape": [-1]}]
    assert metadata["parameters"]["classes"] == list(CLASSES) and metadata["parameters"]["input_size"] == SIZE
    assert triton_client.get_model_metadata(model_name, "1") == metadata
    # The probes are open, as /healthz and /readyz are; the model's routes need the key.
    assert httpx2.get(f"{live_server.url}/v2/health/ready").json() == {"ready": True}
    assert httpx2.get(f"{live_server.url}/v2/health/live").json() == {"live": True}
    assert_problem(httpx2.get(f"{live_server.url}/v2/models/{model_name}"), 401, "API key")


def test_infer_gives_what_embed_and_classify_answer(http, triton_client, model_name):
    result = triton_client.infer(model_name, [pixels(NCHW)], request_id="request-7")  # binary tensors both ways
    answer = result.get_response()
    assert answer["id"] == "request-7" and answer["model_name"] == model_name and answer["model_version"] == "1"
    assert [o["name"] for o in answer["outputs"]] == ["embedding", "projection", "probabilities",
                                                      "training_distance", "unlike_training_data"]
    assert all("binary_data_size" in o["parameters"] for o in answer["outputs"])  # tritonclient's default
    files = [("images", (f"{i}.png", png_bytes(image), "image/png")) for i, image in enumerate(IMAGES)]
    embedded = http.post("/embed", params={"projection": "true"}, files=files).json()["embeddings"]
    served = np.array([e["representation"] for e in embedded])
    embedding = result.as_numpy("embedding")
    assert embedding.shape == (4, 512) and embedding.dtype == np.float32
    cosine = (embedding * served).sum(1) / np.linalg.norm(embedding, axis=1) / np.linalg.norm(served, axis=1)
    assert cosine.min() > 0.999, cosine
    np.testing.assert_allclose(embedding, served, atol=1e-5)  # the same unit vectors, not merely parallel ones
    np.testing.assert_allclose(result.as_numpy("projection"), [e["projection"] for e in embedded], atol=1e-5)
    np.testing.assert_allclose(result.as_numpy("training_distance"), [e["training_distance"] for e in embedded],
                               rtol=1e-5)
    assert result.as_numpy("unlike_training_data").tolist() == [e["unlike_training_data"] for e in embedded]

    classified = http.post("/classify", params={"k": 3}, files=files).json()["classifications"]
    probabilities = result.as_numpy("probabilities")
    assert probabilities.shape == (4, len(CLASSES)) and np.allclose(probabilities.sum(1), 1, atol=1e-5)
    for row, answer in zip(probabilities, classified):
        top = np.argsort(-row)[:3]
        assert top.tolist() == [p["class_id"] for p in answer["predictions"]]
        np.testing.assert_allclose(row[top], [p["probability"] for p in answer["predictions"]], atol=1e-6)


def test_json_tensors_and_chosen_outputs(triton_client, model_name):
    everything = triton_client.infer(model_name, [pixels(NCHW)])
    chosen = triton_client.infer(model_name, [pixels(NCHW, binary=False)], outputs=[
        triton.InferRequestedOutput("probabilities", binary_data=False),
        triton.InferRequestedOutput("embedding", binary_data=True)])
    outputs = chosen.get_response()["outputs"]
    assert [o["name"] for o in outputs] == ["probabilities", "embedding"]
    assert len(outputs[0]["data"]) == 4 * len(CLASSES) and outputs[0]["shape"] == [4, len(CLASSES)]
    assert outputs[1]["parameters"] == {"binary_data_size": 4 * 512 * 4} and "data" not in outputs[1]
    for name in ("probabilities", "embedding"):
        np.testing.assert_allclose(chosen.as_numpy(name), everything.as_numpy(name), atol=1e-6)


def test_top_classes_by_the_classification_extension(http, triton_client, model_name):
    """tritonclient's class_count: per image "probability:index:label", /classify's top k in its order."""
    files = [("images", (f"{i}.png", png_bytes(image), "image/png")) for i, image in enumerate(IMAGES)]
    classified = http.post("/classify", params={"k": 3}, files=files).json()["classifications"]
    binary = triton_client.infer(model_name, [pixels(NCHW)], outputs=[
        triton.InferRequestedOutput("probabilities", class_count=3), triton.InferRequestedOutput("embedding")])
    as_json = triton_client.infer(model_name, [pixels(NCHW)], outputs=[
        triton.InferRequestedOutput("probabilities", binary_data=False, class_count=3)])
    (output,) = as_json.get_response()["outputs"]
    assert output["datatype"] == "BYTES" and output["shape"] == [4, 3]
    assert len(output["data"]) == 12 and all(isinstance(e, str) for e in output["data"])
    for result, kind in ((binary, bytes), (as_json, str)):  # tritonclient gives binary BYTES as bytes, JSON as str
        top = result.as_numpy("probabilities")
        assert top.shape == (4, 3) and all(type(e) is kind for e in top.reshape(-1))
        for row, answer in zip(top, classified):
            fields = [(e.decode() if kind is bytes else e).split(":") for e in row]
            assert [(int(i), label) for _, i, label in fields] == [
                (p["class_id"], p["class_name"]) for p in answer["predictions"]]
            assert all(len(value.split(".")[1]) == 6 for value, _, _ in fields)  # printed as Triton prints it
            np.testing.assert_allclose([float(v) for v, _, _ in fields],
                                       [p["probability"] for p in answer["predictions"]], atol=2e-6)
    assert binary.as_numpy("embedding").shape == (4, 512)  # the other outputs stay tensors
    # More classes than the model has: all of them, best first.
    every = triton_client.infer(model_name, [pixels(NCHW[:1])], outputs=[
        triton.InferRequestedOutput("probabilities", class_count=99)]).as_numpy("probabilities")
    values = [float(e.decode().split(":")[0]) for e in every[0]]
    assert every.shape == (1, len(CLASSES)) and values == sorted(values, reverse=True)
    assert sorted(int(e.decode().split(":")[1]) for e in every[0]) == list(range(len(CLASSES)))


def test_encoded_files_as_bytes(http, triton_client, model_name):
    reference = triton_client.infer(model_name, [pixels(NCHW)]).as_numpy("embedding")
    files = triton.InferInput("image_files", [4], "BYTES")
    files.set_data_from_numpy(np.array([png_bytes(image) for image in IMAGES], dtype=object))  # binary: raw bytes
    result = triton_client.infer(model_name, [files], outputs=[triton.InferRequestedOutput("embedding")])
    np.testing.assert_allclose(result.as_numpy("embedding"), reference, atol=1e-5)
    # In JSON each element is base64 (or a data: URL); the versioned route is the same model.
    body = {"id": "b64", "inputs": [{"name": "image_files", "shape": [2], "datatype": "BYTES", "data": [
        base64.b64encode(png_bytes(IMAGES[2])).decode(),
        "data:image/png;base64," + base64.b64encode(png_bytes(IMAGES[3])).decode()]}],
        "outputs": [{"name": "embedding"}]}
    answer = http.post(f"/v2/models/{model_name}/versions/1/infer", json=body)
    assert answer.status_code == 200 and answer.headers["content-type"] == "application/json"
    (output,) = answer.json()["outputs"]
    assert answer.json()["id"] == "b64" and output["shape"] == [2, 512] and output["datatype"] == "FP32"
    np.testing.assert_allclose(np.reshape(output["data"], (2, 512)), reference[2:], atol=1e-5)
    uint8 = http.post(f"/v2/models/{model_name}/infer", json=uint8_json(NCHW[:1], outputs=[{"name": "embedding"}]))
    np.testing.assert_allclose(uint8.json()["outputs"][0]["data"], reference[0], atol=1e-6)


def test_errors_are_problems_with_the_protocols_error_member(http, triton_client, model_name):
    infer = f"/v2/models/{model_name}/infer"
    one = NCHW[:1]
    too_many = np.zeros((65, 3, SIZE, SIZE), np.uint8)  # the server's --max-images is 64
    nhwc = np.ascontiguousarray(IMAGES[:1])
    cases = [
        ("/v2/models/resnet50/infer", uint8_json(one), 404, "not served here", "model-not-found"),
        (f"/v2/models/{model_name}/versions/2/infer", uint8_json(one), 404, "only version", "model-not-found"),
        (infer, uint8_json(nhwc), 422, "[N, 3, 16, 16]", "invalid-request"),
        (infer, uint8_json(np.zeros((1, 3, 8, 8), np.uint8)), 422, "shape [1, 3, 8, 8]", "invalid-request"),
        (infer, {"inputs": [{**uint8_json(one)["inputs"][0], "datatype": "FP32"}]}, 422, "not FP32", None),
        (infer, {"inputs": [{**uint8_json(one)["inputs"][0], "data": [1, 2, 3]}]}, 422, "3 values", None),
        (infer, {"inputs": [{**uint8_json(one)["inputs"][0], "data": [300] * one.size}]}, 422, "0 to 255", None),
        (infer, uint8_json(too_many), 413, "65, at most 64", "too-many-images"),
        (infer, uint8_json(np.zeros((0, 3, SIZE, SIZE), np.uint8)), 422, "no images: the batch dimension is 0", None),
        (infer, {"inputs": [{**uint8_json(one)["inputs"][0], "name": "input__0"}]}, 422, "exactly one input", None),
        (infer, uint8_json(one, outputs=[{"name": "logits"}]), 422, "'logits' is not an output", None),
        (infer, uint8_json(one, outputs=[{"name": "embedding", "parameters": {"classification": 3}}]), 422,
         "'embedding' has no classes", None),
        *[(infer, uint8_json(one, outputs=[{"name": "probabilities", "parameters": {"classification": k}}]), 422,
           f"classification {k!r} is not a number of classes", None) for k in (0, -2, "3", True, 2.5)],
        (infer, {"inputs": []}, 422, "inputs", None),
        (infer, {"inputs": [{"name": "image_files", "shape": [1], "datatype": "BYTES", "data": ["bm90IGFuIGltYWdl"]}]},
         415, "not an image", "unsupported-image-format"),
    ]
    for path, body, status, words, kind in cases:
        assert_problem(http.post(path, json=body), status, words, kind=kind)
    assert_problem(http.post(infer, content=b"{not json"), 422, "invalid inference request")
    assert_problem(http.post(infer, content=b"{}", headers={"Inference-Header-Content-Length": "99"}), 400,
                   "Inference-Header-Content-Length")
    assert_problem(http.post(infer, content=b"{}", headers={"Inference-Header-Content-Length": b"\xb2"}), 400,
                   "Inference-Header-Content-Length")  # "²": a digit to str.isdigit, not to int()
    assert_problem(http.post(infer, content=b"{}", headers={"Content-Encoding": "gzip"}), 415, "uncompressed")
    assert_problem(http.get("/v2/models/resnet50"), 404, "not served here", kind="model-not-found")
    assert_problem(http.get("/v2/models/resnet50/ready"), 404, "not served here")
    # tritonclient reads the "error" member into its exception.
    with pytest.raises(InferenceServerException, match="not served here") as caught:
        triton_client.infer("resnet50", [pixels(one)])
    assert caught.value.status() == "404"
    with pytest.raises(InferenceServerException, match="FP32") as caught:
        wrong = triton.InferInput("images", list(one.shape), "FP32")
        wrong.set_data_from_numpy(one.astype(np.float32))
        triton_client.infer(model_name, [wrong])
    assert caught.value.status() == "422"


def test_inference_is_admitted_as_embed_is(client, monkeypatch):
    # Overloaded, an inference request is refused before its body is read, whatever the model name.
    monkeypatch.setattr(client.app.state.service.batcher, "max_queue", 0)  # as if the queue were full
    for path in ("/v2/models/any/infer", "/v2/models/any/versions/3/infer"):
        refused = assert_problem(client.post(path, content=b"broken"), 503, "overloaded", kind="overloaded")
        assert refused["instance"] == path
    name = client.get("/version").json()["model"]
    assert client.get(f"/v2/models/{name}").status_code == 200  # what needs no inference is still served


def test_not_ready_while_loading(bundle_dir, index_dir, monkeypatch):
    import service.state

    release = threading.Event()
    real = service.state.load_bundle
    monkeypatch.setattr(service.state, "load_bundle", lambda path: release.wait(30) and real(path))
    with TestClient(create_app(Settings(bundle=bundle_dir, index=index_dir))) as client:
        assert client.get("/v2/health/live").json() == {"live": True}
        ready = client.get("/v2/health/ready")
        assert ready.status_code == 503 and ready.json() == {"ready": False}
        loading = assert_problem(client.get("/v2/models/any/ready"), 503, "still loading", kind="not-ready")
        assert loading["instance"] == "/v2/models/any/ready"
        release.set()
        assert wait_ready(client)["ready"]
        assert client.get("/v2/health/ready").status_code == 200
