"""The same images through each of the service's protocols, side by side in one run against one server: which
transport costs what.

    python -m benchmarks.protocols --bundle models/reference --data-dir ~/data/cifar10

Per --batches size N: one client sends N CIFAR-10 test images (JPEG files) per request, one request after
another, for --seconds each, through POST /embed (multipart), /v1/embeddings (OpenAI's JSON, base64), /v2 over
HTTP (tritonclient.http, binary tensors) and /v2 over gRPC (tritonclient.grpc), the last two also with the
pixels decoded by the client (UINT8 `images`). Prints requests/s, images/s, p50 latency, and requests/s against
/embed's at the same N. The client runs on the server's cores; the order of the protocols rotates each round so
that none always runs first.

Then --stream single-image requests over gRPC (UINT8 pixels), sent one after another with ModelInfer and all at
once in one ModelStreamInfer, in turns each round: images/s, and the mean batch the service ran them in.
"""

from __future__ import annotations

import argparse
import base64
import os
import queue
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx2
import numpy as np
import tritonclient.grpc as grpc_client
import tritonclient.http as http_client
from PIL import Image

from benchmarks.harness.load import Server, free_port


def timed(call: Callable[[], object], seconds: float) -> list[float]:
    """Latencies of call() made back to back for `seconds` (after two to warm up)."""
    call(), call()
    latencies, stop = [], time.perf_counter() + seconds
    while time.perf_counter() < stop or len(latencies) < 5:
        started = time.perf_counter()
        call()
        latencies.append(time.perf_counter() - started)
    return latencies


def protocols(server: Server, files: list[bytes], pixels: np.ndarray
              ) -> dict[str, Callable[[], object]]:
    """{name: one request of these images} for each protocol."""
    http = httpx2.Client(base_url=server.url, timeout=60)
    name = http.get("/version").json()["model"]
    triton_http = http_client.InferenceServerClient(server.url.removeprefix("http://"), network_timeout=60)
    triton_grpc = grpc_client.InferenceServerClient(server.grpc_address)
    upload = [("images", (f"{i}.jpg", data, "image/jpeg")) for i, data in enumerate(files)]
    openai = {"model": name, "input": [base64.b64encode(data).decode() for data in files]}

    def tensors(module, encoded: bool) -> list:
        if encoded:
            tensor = module.InferInput("image_files", [len(files)], "BYTES")
            tensor.set_data_from_numpy(np.array(files, dtype=object))
        else:
            tensor = module.InferInput("images", list(pixels.shape), "UINT8")
            tensor.set_data_from_numpy(pixels)
        return [tensor]

    def ok(response: httpx2.Response) -> None:
        response.raise_for_status()

    embedding = [http_client.InferRequestedOutput("embedding")]
    grpc_embedding = [grpc_client.InferRequestedOutput("embedding")]
    return {
        "POST /embed (multipart files)": lambda: ok(http.post("/embed", files=upload)),
        "/v1/embeddings (base64 files)": lambda: ok(http.post("/v1/embeddings", json=openai)),
        "/v2 HTTP (binary files)": lambda: triton_http.infer(name, tensors(http_client, True), outputs=embedding),
        "/v2 HTTP (binary pixels)": lambda: triton_http.infer(name, tensors(http_client, False), outputs=embedding),
        "/v2 gRPC (files)": lambda: triton_grpc.infer(name, tensors(grpc_client, True), outputs=grpc_embedding),
        "/v2 gRPC (pixels)": lambda: triton_grpc.infer(name, tensors(grpc_client, False), outputs=grpc_embedding),
    }


def unary_and_stream(server: Server, pixels: np.ndarray) -> dict[str, Callable[[], object]]:
    """{name: send each image of pixels as its own request} over gRPC, one after another and in one stream."""
    client = grpc_client.InferenceServerClient(server.grpc_address)
    name = httpx2.get(f"{server.url}/version").json()["model"]
    inputs = []
    for image in pixels:
        tensor = grpc_client.InferInput("images", [1, *image.shape], "UINT8")
        tensor.set_data_from_numpy(image[None])
        inputs.append([tensor])
    outputs = [grpc_client.InferRequestedOutput("embedding")]

    def one_by_one() -> None:
        for tensors in inputs:
            client.infer(name, tensors, outputs=outputs)

    def streamed() -> None:
        errors: queue.Queue = queue.Queue()
        client.start_stream(callback=lambda result, error: error and errors.put(error))
        for tensors in inputs:
            client.async_stream_infer(name, tensors, outputs=outputs)
        client.stop_stream()  # returns once every answer is in
        if not errors.empty():
            raise errors.get()

    return {"ModelInfer, one after another": one_by_one, "ModelStreamInfer, one stream": streamed}


def mean_batch(server: Server) -> tuple[float, float]:
    """The service's inference batches so far: (images, batches), from /metrics."""
    rows = httpx2.get(f"{server.url}/metrics").text.splitlines()
    found = {row.split()[0]: float(row.split()[1]) for row in rows if row.startswith("simclr_inference_batch_size_")}
    return found["simclr_inference_batch_size_sum"], found["simclr_inference_batch_size_count"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data-dir", required=True, help="an image folder with test/<class>/* (CIFAR-10's copy)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32], help="images per request")
    parser.add_argument("--seconds", type=float, default=5, help="measuring time per protocol, batch and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--stream", type=int, default=32, help="single-image requests per stream (0: none)")
    parser.add_argument("--runtime", default="torch-fp32", help="the server's --runtime (default: torch-fp32)")
    args = parser.parse_args()

    paths = sorted(Path(args.data_dir, "test").rglob("*.*"))[::37][:max(*args.batches, args.stream)]
    log = Path(tempfile.mkstemp(prefix="protocols-benchmark-", suffix=".log")[1])
    server = Server(args.bundle, None, log, flags={"grpc-port": free_port(), "runtime": args.runtime})
    server.start()
    try:
        server.wait_ready()
        print(f"{os.cpu_count()} cores, runtime {args.runtime}, {args.seconds:g} s x {args.rounds} rounds per "
              f"protocol and batch, one client, requests back to back\n")
        print(f"  {'protocol':32s} {'batch':>5s} {'req/s':>8s} {'img/s':>8s} {'p50 ms':>8s} | vs /embed")
        for n in args.batches:
            files = [p.read_bytes() for p in paths[:n]]
            pixels = np.stack([np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1) for p in paths[:n]])
            calls = protocols(server, files, pixels)
            latencies: dict[str, list[float]] = {name: [] for name in calls}
            names = list(calls)
            for round_ in range(args.rounds):
                for name in names[round_ % len(names):] + names[:round_ % len(names)]:
                    latencies[name] += timed(calls[name], args.seconds)
            rates = {name: len(seconds) / sum(seconds) for name, seconds in latencies.items()}
            for name in names:
                print(f"  {name:32s} {n:5d} {rates[name]:8.1f} {n * rates[name]:8.1f} "
                      f"{1000 * np.median(latencies[name]):8.2f} | {rates[name] / rates[names[0]]:6.2f}x")
        if args.stream:
            pixels = np.stack([np.asarray(Image.open(p).convert("RGB")).transpose(2, 0, 1)
                               for p in paths[:args.stream]])
            sends = unary_and_stream(server, pixels)
            seconds: dict[str, list[float]] = {name: [] for name in sends}
            batches = {name: [0.0, 0.0] for name in sends}
            for round_ in range(args.rounds):
                for name in list(sends)[round_ % 2:] + list(sends)[:round_ % 2]:
                    before = mean_batch(server)
                    seconds[name] += timed(sends[name], args.seconds)
                    batches[name] = [total + now - then for total, now, then in
                                     zip(batches[name], mean_batch(server), before)]
            print(f"\n{args.stream} single-image requests over gRPC (UINT8 pixels), {args.seconds:g} s x "
                  f"{args.rounds} rounds each\n  {'sent':32s} {'img/s':>8s} {'mean batch':>11s} | vs one by one")
            first = None
            for name in sends:
                rate = args.stream * len(seconds[name]) / sum(seconds[name])
                first = first or rate
                print(f"  {name:32s} {rate:8.1f} {batches[name][0] / batches[name][1]:11.1f} | {rate / first:6.2f}x")
    finally:
        server.stop()
        log.unlink()


if __name__ == "__main__":
    main()
