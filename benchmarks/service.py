"""Service throughput and latency per runtime, over real HTTP and raw, side by side in one run.

    python -m benchmarks.service --bundle models/reference --data-dir ~/data/cifar10

Per runtime the bundle offers (torch-fp32, torch-bf16, onnx-fp32, onnx-int8; --runtimes to choose): raw
in-process inference (service.model.Model.infer on preprocessed uint8 tensors) at each --levels batch size,
then `python -m service --runtime R` (a subprocess) driven with POST /embed, one CIFAR-10 test image per
request, at each --levels concurrency for --seconds: throughput, p50/p95/p99 latency, errors. Then the ratios
against torch-fp32 (the eager torch path) and the targets: a lone /embed at most 10 ms p50, and at
concurrency 32 at least 2x torch-fp32's throughput with int8 (1.2x with ONNX fp32), no errors.

The load generator runs on the same cores as the server, so its own CPU time counts against the server.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import httpx2
import numpy as np
import torch

from benchmarks.harness.load import MULTIPART, Server, multipart
from contract.bundle import load_bundle
from service.model import RUNTIMES, Model

def raw_throughput(model: Model, images: torch.Tensor, batch: int, seconds: float) -> tuple[float, float]:
    """(images per second, ms per batch) of model.infer at this batch size."""
    x = images[:batch]
    for _ in range(3):
        model.infer(x)
    steps, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or steps < 5:
        model.infer(x)
        steps += 1
    return steps * batch / elapsed, 1000 * elapsed / steps


async def drive(url: str, bodies: list[bytes], concurrency: int, seconds: float) -> dict:
    """Closed loop: `concurrency` clients each send a request as soon as their last one is answered."""
    latencies, errors = [], 0
    limits = httpx2.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx2.AsyncClient(base_url=url, limits=limits, timeout=60) as client:
        async def one(i: int) -> float:
            started = time.perf_counter()
            response = await client.post("/embed", content=bodies[i % len(bodies)], headers=MULTIPART)
            if response.status_code != 200:
                raise RuntimeError(response.text)
            return time.perf_counter() - started

        await asyncio.gather(*(one(i) for i in range(2 * concurrency)))  # warm the connections and the batcher
        stop = time.perf_counter() + seconds

        async def worker(w: int) -> None:
            nonlocal errors
            i = w
            while time.perf_counter() < stop:
                try:
                    latencies.append(await one(i))
                except Exception:
                    errors += 1
                i += concurrency

        started = time.perf_counter()
        await asyncio.gather(*(worker(w) for w in range(concurrency)))
        elapsed = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {"throughput": len(latencies) / elapsed, "p50": np.percentile(ms, 50), "p95": np.percentile(ms, 95),
            "p99": np.percentile(ms, 99), "requests": len(latencies), "errors": errors}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--index")
    parser.add_argument("--data-dir", required=True, help="an image folder with test/<class>/* (CIFAR-10's copy)")
    parser.add_argument("--runtimes", nargs="+", choices=RUNTIMES, help="default: all the bundle offers")
    parser.add_argument("--levels", nargs="+", type=int, default=[1, 32], help="batch sizes and concurrencies")
    parser.add_argument("--images", type=int, default=256, help="distinct query images")
    parser.add_argument("--seconds", type=float, default=10, help="measuring time per level")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    args = parser.parse_args()

    files = sorted(Path(args.data_dir, "test").rglob("*.*"))[::37][:args.images]
    bodies = [multipart(f.read_bytes()) for f in files]
    torch.set_num_threads(os.cpu_count())
    model = Model(load_bundle(args.bundle))
    images = model.batch([model.preprocess(f.read_bytes(), 10**8) for f in files[:max(args.levels)]]).contiguous()
    runtimes = args.runtimes or model.runtimes
    print(f"{os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"{model.bundle.name}, input {model.size}px")
    print(f"raw: Model.infer in this process; HTTP: POST /embed, one image per request, {args.seconds:g} s per "
          f"level (max batch {args.max_batch_size}, max wait {args.max_wait_ms:g} ms)\n")
    print("  runtime     level | raw img/s  ms/batch | HTTP req/s   p50 ms   p95 ms   p99 ms  errors | HTTP/raw")
    raw, http = {}, {}
    for runtime in runtimes:
        model.use(runtime)
        log = Path(tempfile.mkstemp(prefix="service-benchmark-", suffix=".log")[1])
        server = Server(args.bundle, args.index, log, flags={"max-batch-size": args.max_batch_size,
                                                              "max-wait-ms": args.max_wait_ms, "runtime": runtime})
        server.start()
        try:
            server.wait_ready()
            for c in args.levels:  # side by side per level: a noisy neighbour disturbs both figures of a ratio
                raw[runtime, c] = raw_throughput(model, images, c, min(args.seconds, 5))
                r = http[runtime, c] = asyncio.run(drive(server.url, bodies, c, args.seconds))
                print(f"  {runtime:10s} {c:5d} | {raw[runtime, c][0]:9.1f} {raw[runtime, c][1]:9.2f} | "
                      f"{r['throughput']:10.1f} {r['p50']:8.1f} {r['p95']:8.1f} {r['p99']:8.1f} {r['errors']:7d} | "
                      f"{r['throughput'] / raw[runtime, c][0]:8.2f}")
        finally:
            server.stop()
            log.unlink()  # a failure to start has already shown its tail
    if "torch-fp32" in runtimes:
        top = max(args.levels)
        print(f"\nagainst torch-fp32, HTTP throughput at concurrency {top} (raw batch {top}):")
        for runtime in runtimes:
            print(f"  {runtime:10s} {http[runtime, top]['throughput'] / http['torch-fp32', top]['throughput']:5.2f}x "
                  f"({raw[runtime, top][0] / raw['torch-fp32', top][0]:.2f}x)")
    if 1 in args.levels:
        print("lone /embed p50: " + ", ".join(f"{r} {http[r, 1]['p50']:.1f} ms" for r in runtimes)
              + " (target <= 10 ms)")


if __name__ == "__main__":
    main()
