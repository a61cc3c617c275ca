"""Soak: `python -m service` (a subprocess on a free loopback port) under a steady mixed load for minutes, with
its resident memory watched. Prints requests per case and route by status class, latency percentiles,
transport errors, unexpected answers and the server's memory series; exits 1 on any 5xx, dropped connection or
other transport error, unexpected answer (a bad request not refused with its 4xx, a good one not answered
200), error in the server's log, or resident memory growth after warm-up of --max-growth (10%) or more.

    python -m benchmarks.soak                                   # a tiny random bundle and index, 64 clients, 10 min
    python -m benchmarks.soak --bundle bundles/r18 --index indexes/cifar10-train-hnsw --data-dir ~/data/cifar10
    python -m benchmarks.soak --clients 16 --seconds 60 --warmup 10 --sample-every 5     # a quick look

The mix, per client in a closed loop (each sends its next request as soon as the last was answered): POST
/embed, /classify and /search with one PNG upload (--data-dir's CIFAR-10 test images re-encoded, else generated
ones), GET /search?id=ID and /thumbnails/ID over a fixed set of ids, POST /index/images replacing eight images
of its own over and over, and bad requests: a text file named .png (415),
bad k (422), unknown ids (404), a body over --max-request-bytes by its Content-Length and one streamed chunked
(413). The clients are one asyncio process (httpx2, bodies encoded once) that shares the machine's cores with
the server. Memory is the server's VmRSS from /proc/PID/status every --sample-every seconds; growth is the last
sample against the first at or after --warmup seconds. It stops by itself after --seconds, and on Ctrl-C or
SIGTERM: the load stops, what was done is reported, and the server is stopped.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.harness.load import Sample, Server, Tally, drive, folder_images, generated_images, make_mix, report


def progress(sample: Sample, tally: Tally) -> None:
    errors = tally.server_errors + sum(tally.unexpected.values()) + sum(tally.transport.values())
    print(f"  {sample.seconds:6.0f} s  {sample.requests:8d} requests  VmRSS {sample.memory['VmRSS'] / 1024:7.1f} MiB"
          f"  errors {errors}", flush=True)


async def load(server: Server, args: argparse.Namespace, cases) -> object:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):  # stop sending, report, then stop the server
        loop.add_signal_handler(sig, stop.set)
    return await drive(server, cases, args.clients, args.seconds, sample_every=args.sample_every,
                       timeout=args.timeout, seed=args.seed, stop=stop, progress=progress)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bundle", type=Path, help="model bundle (default: a tiny random one)")
    parser.add_argument("--index", type=Path, help="index of that bundle (default: built with the tiny bundle)")
    parser.add_argument("--data-dir", type=Path, help="an image folder (CIFAR-10's test/<class>/*) to upload from "
                        "(default: generated images)")
    parser.add_argument("--clients", type=int, default=64, help="concurrent closed-loop clients")
    parser.add_argument("--seconds", type=float, default=600, help="how long the load lasts")
    parser.add_argument("--sample-every", type=float, default=30, help="seconds between memory samples")
    parser.add_argument("--warmup", type=float, default=60, help="seconds before the memory baseline")
    parser.add_argument("--max-growth", type=float, default=10, help="resident memory growth (%%) that fails")
    parser.add_argument("--images", type=int, default=256, help="distinct images uploaded")
    parser.add_argument("--max-request-bytes", type=int, default=2**20,
                        help="the server's body limit (small, so that oversized requests stay cheap)")
    parser.add_argument("--timeout", type=float, default=30, help="client timeout per request phase (s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--server-log", type=Path, help="the server's log (default: a temporary file)")
    args = parser.parse_args()
    if (args.bundle is None) != (args.index is None):
        parser.error("give --bundle and --index together, or neither for a tiny random pair")

    with tempfile.TemporaryDirectory(prefix="soak-") as tmp:
        if args.bundle is None:
            from benchmarks.fuzz import tiny_bundle

            args.bundle, args.index = tiny_bundle(Path(tmp))
        else:  # the soak adds images: to a copy, never to the index given
            args.index = Path(shutil.copytree(args.index, Path(tmp) / "index"))
        images = folder_images(args.data_dir, args.images) if args.data_dir else generated_images(args.images)
        log = args.server_log or Path(tmp) / "server.log"
        server = Server(args.bundle, args.index, log, flags={"max-request-bytes": args.max_request_bytes},
                        own_session=True)
        started = time.monotonic()
        server.start()
        try:
            server.wait_ready()
            print(f"server on {server.url} (pid {server.pid}) ready in {time.monotonic() - started:.1f} s: "
                  f"{args.bundle}, {args.index}")
            cases = make_mix(images, server.index_ids(), args.max_request_bytes,
                             classify=server.has_classifier())
            print(f"{len(images)} upload images ({'from ' + str(args.data_dir) if args.data_dir else 'generated'}),"
                  f" {len(cases)} kinds of request; {args.clients} clients for {args.seconds:g} s, memory every "
                  f"{args.sample_every:g} s, warm-up {args.warmup:g} s", flush=True)
            soak = asyncio.run(load(server, args, cases))
            counts = server.status_counts()
        finally:
            stopped = server.stop()
        lines, failures = report(soak, args.warmup, args.max_growth / 100, server.log_errors(), counts)
        if not stopped:
            failures.append("the server did not stop within 30 s of SIGTERM (killed)")
        print("\n" + "\n".join(lines))
        print(f"\nfailures: {len(failures)}" + "".join(f"\n  {f}" for f in failures))
        if failures and not args.server_log:
            print(f"\nserver log, last lines:\n{server.log_tail()}")
    return 1 if failures else 130 if soak.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
