"""The same images through each of the service's protocols, side by side in one run against one server: which
transport costs what.

    python -m benchmarks.protocols --bundle models/reference --data-dir ~/data/cifar10

Per --batches size N: one client sends N CIFAR-10 test images (JPEG files) per request, one request after
another, for --seconds each, through POST /embed (multipart), /v1/embeddings (OpenAI's JSON, base64), /v2 over
HTTP (tritonclient.http, binary tensors) and /v2 over gRPC (tritonclient.grpc), the last two also with the
pixels decoded by the client (UINT8 `images`). Prints requests/s, images/s, p50 latency, and requests/s against
/embed's at the same N. The client runs on the server's cores; the order of the protocols rotates each round so
that none always runs first.
"""

from __future__ import annotations

import argparse
import base64
import os
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data-dir", required=True, help="an image folder with test/<class>/* (CIFAR-10's copy)")
    parser.add_argument("--batches", nargs="+", type=int, default=[1, 32], help="images per request")
    parser.add_argument("--seconds", type=float, default=5, help="measuring time per protocol, batch and round")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--runtime", default="torch-fp32", help="the server's --runtime (default: torch-fp32)")
    args = parser.parse_args()

    paths = sorted(Path(args.data_dir, "test").rglob("*.*"))[::37][:max(args.batches)]
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
    finally:
        server.stop()
        log.unlink()


if __name__ == "__main__":
    main()
