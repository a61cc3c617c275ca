"""Overload: the service driven at a multiple of its capacity, open loop, to show that it refuses what it
cannot answer in time (a fast 503 with Retry-After) instead of letting every request's latency grow.

    python -m benchmarks.overload --bundle models/reference --data-dir ~/data/cifar10 --factor 3 --workers 2

First the capacity: requests per second of POST /embed (one CIFAR-10 test image each) in a closed loop at
concurrency 32. Then requests sent at --factor times that rate for --seconds, each on its own schedule whatever
the answers: accepted requests' p50/p99 latency, refused requests (503 overloaded) and how fast they were
refused, and anything else (errors, timeouts: "lost", which must be 0). On 2 cores the server is pinned to one
(torch on one thread) and this load generator to the other: unpinned, the generator could not offer 3x what
the server answers while both fought for the same cores. With --workers N, the same load is offered a third
time to N service processes (python -m service --workers N) on the same core: while one process runs the model,
the kernel lets another answer its requests, so refusals no longer wait for a busy event loop.
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

from benchmarks.harness.load import MULTIPART, Server, multipart
from benchmarks.service import drive


async def open_loop(url: str, bodies: list[bytes], rate: float, seconds: float) -> list[tuple[int, float]]:
    """(status, seconds) of requests started every 1/rate s for `seconds`; status 0 for no answer."""
    limits = httpx2.Limits(max_connections=None, max_keepalive_connections=512)
    async with httpx2.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        async def one(i: int) -> tuple[int, float]:
            started = time.perf_counter()
            try:
                response = await client.post("/embed", content=bodies[i % len(bodies)], headers=MULTIPART)
                return response.status_code, time.perf_counter() - started
            except httpx2.HTTPError:
                return 0, time.perf_counter() - started

        tasks, start = [], time.perf_counter()
        for i in range(int(rate * seconds)):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.ensure_future(one(i)))
        return await asyncio.gather(*tasks)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", required=True)
    parser.add_argument("--data-dir", required=True, help="an image folder with test/<class>/* (CIFAR-10's copy)")
    parser.add_argument("--runtime", default="torch-fp32")
    parser.add_argument("--torch-threads", type=int, help="the service's --torch-threads (default: all cores)")
    parser.add_argument("--factor", type=float, default=3.0, help="offered load, as a multiple of capacity")
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--workers", type=int, default=1,
                        help="also offer the load to this many service processes (bounded, on the same cores)")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=True,
                        help="the server on the first core (torch on 1 thread), this load generator on the others, "
                             "so that neither starves the other (default: on, where there are 2 cores or more)")
    args = parser.parse_args()
    cores = sorted(os.sched_getaffinity(0))
    pin = args.pin and len(cores) >= 2
    if pin:
        args.torch_threads = 1
    files = sorted(Path(args.data_dir, "test").rglob("*.*"))[::37][:256]
    bodies = [multipart(f.read_bytes()) for f in files]
    flags = {"runtime": args.runtime, **({"torch-threads": args.torch_threads} if args.torch_threads else {})}
    if pin:
        print(f"server on core {cores[0]} (torch on 1 thread), load generator on {cores[1:]}")
    rate = None
    # The same offered load, then with the queue's bounds lifted: what the bounds are for.
    configurations = [("bounded (the defaults)", {}),
                      ("unbounded", {"max-queue-images": 10**6, "max-queue-wait-ms": 10**7})]
    if args.workers > 1:
        configurations.append((f"bounded, {args.workers} worker processes", {"workers": args.workers}))
    for name, limits in configurations:
        log = Path(tempfile.mkstemp(prefix="overload-", suffix=".log")[1])
        server = Server(args.bundle, None, log, flags={**flags, **limits})
        server.start()
        if pin:
            os.sched_setaffinity(server.pid, {cores[0]})
            os.sched_setaffinity(0, set(cores[1:]))
        try:
            server.wait_ready(streak=10 if "workers" in limits else 1)
            if pin:  # the workers were spawned by the pinned parent, unless they came before the pinning
                for worker in Path(f"/proc/{server.pid}/task/{server.pid}/children").read_text().split():
                    os.sched_setaffinity(int(worker), {cores[0]})
            if rate is None:
                capacity = asyncio.run(drive(server.url, bodies, 32, 10))
                rate = args.factor * capacity["throughput"]
                print(f"{args.runtime}: capacity {capacity['throughput']:.0f} requests/s at concurrency 32 (p99 "
                      f"{capacity['p99']:.0f} ms); offered {rate:.0f} requests/s ({args.factor:g}x) for "
                      f"{args.seconds:g} s")
            answers = asyncio.run(open_loop(server.url, bodies, rate, args.seconds))
        finally:
            server.stop()
            log.unlink()
        report(name, answers, args.seconds)


def report(name: str, answers: list[tuple[int, float]], seconds: float) -> None:
    status = np.array([s for s, _ in answers])
    ms = np.array([t for _, t in answers]) * 1000
    ok, refused, lost = status == 200, status == 503, ~np.isin(status, [200, 503])
    print(f"  {name}:")
    print(f"    accepted {ok.sum()} ({ok.sum() / seconds:.0f}/s): p50 {np.percentile(ms[ok], 50):.0f} ms, "
          f"p99 {np.percentile(ms[ok], 99):.0f} ms")
    if refused.any():
        print(f"    refused  {refused.sum()} with 503 overloaded: p50 {np.percentile(ms[refused], 50):.0f} ms, "
              f"p99 {np.percentile(ms[refused], 99):.0f} ms")
    print(f"    lost     {lost.sum()} (errors other than 503, or no answer)")


if __name__ == "__main__":
    main()
