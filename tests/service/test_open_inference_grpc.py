"""The Open Inference Protocol over gRPC (--grpc-port) with tritonclient.grpc as the client, against a real
server: the same model and answers as /v2 over HTTP, typed and raw tensors, errors as gRPC status codes with
the service's messages, the API key as metadata, and the RPCs counted in /metrics."""

from __future__ import annotations

import queue
import socket
import subprocess
import sys

import grpc
import numpy as np
import pytest
import tritonclient.grpc as triton
from conftest import KEY
from factories import CLASSES, SIZE, colour_images
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as rpc
from tritonclient.utils import InferenceServerException

from benchmarks.harness.images import png_bytes

IMAGES = colour_images(1, seed=7)[0]  # (4, S, S, 3): one image of each class
NCHW = np.ascontiguousarray(IMAGES.transpose(0, 3, 1, 2))
HEADERS = {"x-api-key": KEY}


@pytest.fixture(scope="module")
def triton_client(live_server):
    client = triton.InferenceServerClient(live_server.grpc_address)
    yield client
    client.close()


@pytest.fixture(scope="module")
def stub(live_server):
    with grpc.insecure_channel(live_server.grpc_address) as channel:
        yield rpc.GRPCInferenceServiceStub(channel)


def pixels(images: np.ndarray) -> triton.InferInput:
    tensor = triton.InferInput("images", list(images.shape), "UINT8")
    tensor.set_data_from_numpy(images)
    return tensor


def test_health_and_metadata_as_tritonclient_reads_them(triton_client, http, model_name):
    assert triton_client.is_server_live() and triton_client.is_server_ready()  # the probes need no key
    server = triton_client.get_server_metadata(headers=HEADERS, as_json=True)
    assert server["name"] == "simclr-cifar" and "classification" in server["extensions"]
    assert triton_client.is_model_ready(model_name, headers=HEADERS)
    assert triton_client.is_model_ready(model_name, "1", HEADERS)
    assert not triton_client.is_model_ready(model_name, "2", HEADERS)
    metadata = triton_client.get_model_metadata(model_name, headers=HEADERS, as_json=True)
    over_http = http.get(f"/v2/models/{model_name}").json()
    assert metadata["name"] == model_name and metadata["versions"] == ["1"] and metadata["platform"] == "pytorch"
    # gRPC's shapes are int64, which protobuf's JSON writes as strings.
    for side in ("inputs", "outputs"):
        assert [(t["name"], t["datatype"], [int(d) for d in t["shape"]]) for t in metadata[side]] == [
            (t["name"], t["datatype"], t["shape"]) for t in over_http[side]]
    with pytest.raises(InferenceServerException, match="API key") as caught:
        triton_client.get_model_metadata(model_name)
    assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(InferenceServerException, match="not served here") as caught:
        triton_client.get_model_metadata("resnet50", headers={"authorization": f"Bearer {KEY}"})
    assert caught.value.status() == "StatusCode.NOT_FOUND"


def test_infer_gives_what_http_gives(triton_client, http, model_name):
    result = triton_client.infer(model_name, [pixels(NCHW)], request_id="request-7", headers=HEADERS, outputs=[
        triton.InferRequestedOutput(name) for name in ("embedding", "probabilities", "unlike_training_data")])
    answer = result.get_response(as_json=True)
    assert answer["id"] == "request-7" and answer["model_name"] == model_name and answer["model_version"] == "1"
    over_http = http.post(f"/v2/models/{model_name}/infer", json={"inputs": [
        {"name": "images", "shape": list(NCHW.shape), "datatype": "UINT8", "data": NCHW.reshape(-1).tolist()}]})
    served = {o["name"]: np.reshape(o["data"], o["shape"]) for o in over_http.json()["outputs"]}
    assert result.as_numpy("embedding").shape == (4, 512) and result.as_numpy("embedding").dtype == np.float32
    np.testing.assert_allclose(result.as_numpy("embedding"), served["embedding"], atol=1e-5)
    np.testing.assert_allclose(result.as_numpy("probabilities"), served["probabilities"], atol=1e-6)
    assert result.as_numpy("unlike_training_data").tolist() == served["unlike_training_data"].tolist()
    assert result.as_numpy("projection") is None  # only the outputs asked for

    files = [("images", (f"{i}.png", png_bytes(image), "image/png")) for i, image in enumerate(IMAGES)]
    classified = http.post("/classify", params={"k": 3}, files=files).json()["classifications"]
    top = triton_client.infer(model_name, [pixels(NCHW)], headers=HEADERS, outputs=[
        triton.InferRequestedOutput("probabilities", class_count=3)]).as_numpy("probabilities")
    assert top.shape == (4, 3)
    assert [[e.decode().split(":", 1)[1] for e in row] for row in top] == [
        [f"{p['class_id']}:{p['class_name']}" for p in answer["predictions"]] for answer in classified]


def test_typed_contents_and_encoded_files(triton_client, stub, model_name):
    reference = triton_client.infer(model_name, [pixels(NCHW)], headers=HEADERS).as_numpy("embedding")
    typed = pb.ModelInferRequest(model_name=model_name, inputs=[pb.ModelInferRequest.InferInputTensor(
        name="images", datatype="UINT8", shape=list(NCHW[:2].shape),
        contents=pb.InferTensorContents(uint_contents=NCHW[:2].reshape(-1).tolist()))],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="embedding")])
    answer = stub.ModelInfer(typed, metadata=list(HEADERS.items()))
    assert [o.name for o in answer.outputs] == ["embedding"] and list(answer.outputs[0].shape) == [2, 512]
    np.testing.assert_allclose(np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(2, 512), reference[:2],
                               atol=1e-6)
    files = pb.ModelInferRequest(model_name=model_name, model_version="1", inputs=[
        pb.ModelInferRequest.InferInputTensor(name="image_files", datatype="BYTES", shape=[2], contents=(
            pb.InferTensorContents(bytes_contents=[png_bytes(IMAGES[2]), png_bytes(IMAGES[3])])))],
        outputs=[pb.ModelInferRequest.InferRequestedOutputTensor(name="embedding")])
    answer = stub.ModelInfer(files, metadata=list(HEADERS.items()))
    np.testing.assert_allclose(np.frombuffer(answer.raw_output_contents[0], "<f4").reshape(2, 512), reference[2:],
                               atol=1e-5)
    raw = triton.InferInput("image_files", [1], "BYTES")
    raw.set_data_from_numpy(np.array([png_bytes(IMAGES[1])], dtype=object))
    np.testing.assert_allclose(triton_client.infer(model_name, [raw], headers=HEADERS).as_numpy("embedding"),
                               reference[1:2], atol=1e-5)


def test_a_stream_answers_each_request_and_goes_on_after_a_bad_one(live_server, triton_client, http, model_name):
    def counted(code: str) -> float:
        line = f'simclr_http_requests_total{{method="GRPC",route="/inference.GRPCInferenceService/ModelStreamInfer",' \
               f'status="{code}"}}'
        found = [row for row in http.get("/metrics").text.splitlines() if row.startswith(line)]
        return float(found[0].split()[-1]) if found else 0.0

    def streamed(headers: dict[str, str], requests: list[dict]) -> dict[str, tuple]:
        answers: queue.Queue = queue.Queue()
        client = triton.InferenceServerClient(live_server.grpc_address)
        client.start_stream(callback=lambda result, error: answers.put((result, error)), headers=headers)
        for request in requests:
            client.async_stream_infer(**request)
        client.stop_stream()  # closes the stream's sending side and waits for every answer
        client.close()
        found = [answers.get_nowait() for _ in range(answers.qsize())]
        assert len(found) == len(requests)
        return {(r.get_response().id if r is not None else str(e)): (r, e) for r, e in found}

    ok, missing = counted("OK"), counted("NOT_FOUND")
    wanted = [triton.InferRequestedOutput("embedding"), triton.InferRequestedOutput("probabilities", class_count=2)]
    requests = [dict(model_name=model_name, inputs=[pixels(NCHW[i:i + 1])], request_id=f"image-{i}", outputs=wanted)
                for i in range(4)]
    requests.insert(2, dict(model_name="resnet50", inputs=[pixels(NCHW[:1])], request_id="elsewhere"))
    answers = streamed(HEADERS, requests)
    (error,) = [e for r, e in answers.values() if e is not None]
    assert isinstance(error, InferenceServerException) and "not served here" in error.message()
    alone = triton_client.infer(model_name, [pixels(NCHW)], headers=HEADERS, outputs=wanted)
    for i in range(4):  # each answer is its own request's, whichever batch it shared
        result, _ = answers[f"image-{i}"]
        np.testing.assert_allclose(result.as_numpy("embedding")[0], alone.as_numpy("embedding")[i], atol=1e-5)
        assert result.as_numpy("probabilities")[0].tolist() == alone.as_numpy("probabilities")[i].tolist()
    assert (counted("OK"), counted("NOT_FOUND")) == (ok + 4, missing + 1)

    (keyless,) = streamed({}, requests[:1]).values()
    assert keyless[0] is None and "API key" in keyless[1].message()


def test_errors_are_status_codes_with_the_services_messages(triton_client, stub, model_name):
    one = NCHW[:1]
    wrong_type = triton.InferInput("images", list(one.shape), "FP32")
    wrong_type.set_data_from_numpy(one.astype(np.float32))
    not_an_image = triton.InferInput("image_files", [1], "BYTES")
    not_an_image.set_data_from_numpy(np.array([b"not an image"], dtype=object))
    cases = [
        (dict(model_name="resnet50", inputs=[pixels(one)]), "NOT_FOUND", "not served here"),
        (dict(model_name=model_name, inputs=[pixels(one)], model_version="2"), "NOT_FOUND", "only version"),
        (dict(model_name=model_name, inputs=[wrong_type]), "INVALID_ARGUMENT", "not FP32"),
        (dict(model_name=model_name, inputs=[pixels(np.zeros((1, 3, 8, 8), np.uint8))]), "INVALID_ARGUMENT",
         "shape [1, 3, 8, 8]"),
        (dict(model_name=model_name, inputs=[pixels(np.zeros((65, 3, SIZE, SIZE), np.uint8))]),
         "RESOURCE_EXHAUSTED", "65, at most 64"),
        (dict(model_name=model_name, inputs=[pixels(one)], outputs=[triton.InferRequestedOutput("logits")]),
         "INVALID_ARGUMENT", "'logits' is not an output"),
        (dict(model_name=model_name, inputs=[pixels(one)],
              outputs=[triton.InferRequestedOutput("embedding", class_count=3)]), "INVALID_ARGUMENT", "no classes"),
        (dict(model_name=model_name, inputs=[not_an_image]), "INVALID_ARGUMENT", "not an image"),
    ]
    for arguments, code, words in cases:
        with pytest.raises(InferenceServerException) as caught:
            triton_client.infer(headers=HEADERS, **arguments)
        assert caught.value.status() == f"StatusCode.{code}" and words in caught.value.message(), arguments
    with pytest.raises(InferenceServerException, match="API key") as caught:
        triton_client.infer(model_name, [pixels(one)], headers={"x-api-key": "wrong"})
    assert caught.value.status() == "StatusCode.UNAUTHENTICATED"
    with pytest.raises(grpc.RpcError) as caught:  # Triton's RPCs this service does not serve
        stub.ModelStatistics(pb.ModelStatisticsRequest(name=model_name), metadata=list(HEADERS.items()))
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert len(CLASSES) == 4  # the classes the cases' shapes assume


def test_rpcs_are_counted_in_metrics(triton_client, http, model_name):
    def counted(code: str) -> float:
        line = f'simclr_http_requests_total{{method="GRPC",route="/inference.GRPCInferenceService/ModelInfer",' \
               f'status="{code}"}}'
        found = [row for row in http.get("/metrics").text.splitlines() if row.startswith(line)]
        return float(found[0].split()[-1]) if found else 0.0

    ok, missing = counted("OK"), counted("NOT_FOUND")
    triton_client.infer(model_name, [pixels(NCHW[:1])], headers=HEADERS)
    with pytest.raises(InferenceServerException):
        triton_client.infer("resnet50", [pixels(NCHW[:1])], headers=HEADERS)
    assert (counted("OK"), counted("NOT_FOUND")) == (ok + 1, missing + 1)


def test_a_grpc_port_in_use_is_one_line_of_error(bundle_dir, index_dir):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run([sys.executable, "-m", "service", "--bundle", str(bundle_dir), "--index",
                                 str(index_dir), "--grpc-port", str(port)], capture_output=True, text=True,
                                timeout=120)
    assert result.returncode == 2 and result.stderr.startswith(f"error: --grpc-port {port}: cannot listen")
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_grpc_without_its_packages_says_what_to_install(monkeypatch):
    from service.__main__ import GrpcUnavailable, _check_grpc
    from service.settings import Settings

    monkeypatch.setitem(sys.modules, "tritonclient.grpc", None)  # as if tritonclient[grpc] were not installed
    with pytest.raises(GrpcUnavailable, match=r"tritonclient.grpc is missing\): pip install '.\[grpc\]'"):
        _check_grpc(Settings(grpc_port=0))
