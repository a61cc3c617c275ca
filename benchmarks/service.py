"""Service throughput and latency over real HTTP, side by side with the raw model on the same machine.

    python -m benchmarks.service --bundle bundles/r18 --data-dir ~/data/cifar10 [--index indexes/cifar10-train]

Per level, side by side: raw in-process inference (service.model.Model.infer on preprocessed uint8 tensors)
at batch 1, 8, 32, 64, then `python -m service` (a subprocess) driven with POST /embed, one CIFAR-10 test
image per request, at concurrency 1, 8, 32, 64 for --seconds: throughput, p50/p95/p99 latency, errors.
Then the ratios the issue sets targets for: HTTP throughput at concurrency 32 over raw batch-32 throughput
   (target >= 0.8), and one lone request's median latency over the raw batch-1 time (target <= 1.5).

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
from service.model import Model

LEVELS = (1, 8, 32, 64)


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
    parser.add_argument("--images", type=int, default=256, help="distinct query images")
    parser.add_argument("--seconds", type=float, default=10, help="measuring time per level")
    parser.add_argument("--max-batch-size", type=int, default=64)
    parser.add_argument("--max-wait-ms", type=float, default=2.0)
    args = parser.parse_args()

    files = sorted(Path(args.data_dir, "test").rglob("*.*"))[::37][:args.images]
    bodies = [multipart(f.read_bytes()) for f in files]
    torch.set_num_threads(os.cpu_count())
    model = Model(load_bundle(args.bundle))
    images = model.batch([model.preprocess(f.read_bytes(), 10**8) for f in files[:64]]).contiguous()
    print(f"{os.cpu_count()} cores, torch {torch.__version__} with {torch.get_num_threads()} threads, "
          f"{model.bundle.name}, input {model.size}px")
    log = Path(tempfile.mkstemp(prefix="service-benchmark-", suffix=".log")[1])
    server = Server(args.bundle, args.index, log, flags={"max-batch-size": args.max_batch_size,
                                                          "max-wait-ms": args.max_wait_ms})
    server.start()
    raw, http = {}, {}
    try:
        server.wait_ready()
        # Side by side per level (raw while the server idles, then HTTP), so that a noisy neighbour on the
        # machine disturbs both figures of a ratio alike.
        print(f"\nraw: Model.infer in this process; HTTP: POST /embed, one image per request, {args.seconds:g} s "
              f"per level (max batch {args.max_batch_size}, max wait {args.max_wait_ms:g} ms)")
        print("  batch | raw img/s  ms/batch | concurrency  req/s   p50 ms   p95 ms   p99 ms  requests  errors | "
              "HTTP/raw")
        for c in LEVELS:
            raw[c] = raw_throughput(model, images, c, min(args.seconds, 5))
            r = http[c] = asyncio.run(drive(server.url, bodies, c, args.seconds))
            print(f"  {c:5d} | {raw[c][0]:9.1f} {raw[c][1]:9.2f} | {c:11d} {r['throughput']:6.1f} {r['p50']:8.1f} "
                  f"{r['p95']:8.1f} {r['p99']:8.1f} {r['requests']:9d} {r['errors']:7d} | "
                  f"{r['throughput'] / raw[c][0]:8.2f}")
        metrics = httpx2.get(f"{server.url}/metrics").text
    finally:
        server.stop()
        log.unlink()  # a failure to start has already shown its tail
    batches = [line for line in metrics.splitlines() if line.startswith("inference_batch_size_")]
    count = float(next(line for line in batches if "_count" in line).split()[-1])
    total = float(next(line for line in batches if "_sum" in line).split()[-1])
    print(f"\nserver batches: {count:.0f}, mean size {total / count:.1f}")
    print(f"\nconcurrency 32 throughput / raw batch-32 throughput: {http[32]['throughput'] / raw[32][0]:.2f} "
          f"(target >= 0.80)")
    print(f"lone request p50 / raw batch-1 time: {http[1]['p50']:.1f} / {raw[1][1]:.1f} ms = "
          f"{http[1]['p50'] / raw[1][1]:.2f} (target <= 1.50)")


if __name__ == "__main__":
    main()
