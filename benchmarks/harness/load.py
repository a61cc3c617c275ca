"""What the soak and restart tests and benchmarks.soak share: `python -m service` as a subprocess on a free
loopback port, the request mix (good requests, and bad ones with the 4xx each must get), closed-loop clients on
one asyncio loop, the server's resident memory sampled from /proc, and the report with its checks.

    server = Server(bundle, index, log=Path("server.log"), flags={"max-request-bytes": 200_000})
    server.start(); server.wait_ready()
    cases = make_mix(generated_images(64), server.index_ids(), max_request_bytes=200_000)
    result = asyncio.run(drive(server, cases, clients=16, seconds=8))
    lines, failed = report(result, warmup=2)
"""

from __future__ import annotations

import asyncio
import ctypes
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx2
import numpy as np
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.harness.images import png_bytes

REPO = Path(__file__).resolve().parents[2]
BOUNDARY = "soakboundary0123456789"
MULTIPART = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}
JSON, JPEG, PROBLEM = "application/json", "image/jpeg", "application/problem+json"
# A connection refused, reset or closed under a request: what clients see of a server stopping or restarting.
CONNECTION_ERRORS = (httpx2.NetworkError, httpx2.RemoteProtocolError)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:  # in the child, between fork and exec: nothing but one system call
    _PRCTL(1, signal.SIGTERM)  # PR_SET_PDEATHSIG: SIGTERM when the process that started it dies


_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


class Server:
    """`python -m service` on 127.0.0.1 in a subprocess, its output appended to `log`. With own_session, it does
    not get the terminal's Ctrl-C (the caller stops it after reporting) and gets SIGTERM if the caller dies."""

    def __init__(self, bundle: Path, index: Path | None, log: Path, port: int | None = None,
                 flags: dict[str, Any] | None = None, own_session: bool = False):
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        grpc_port = (flags or {}).get("grpc-port")
        self.grpc_address = None if grpc_port is None else f"127.0.0.1:{grpc_port}"  # --grpc-port's, if given
        self.log, self.own_session = Path(log), own_session
        self.command = [sys.executable, "-m", "service", "--bundle", str(bundle), "--host", "127.0.0.1",
                        "--port", str(self.port)] + (["--index", str(index)] if index else ["--data-dir", "null"])
        for flag, value in (flags or {}).items():
            self.command += [f"--{flag}", str(value)]
        self.process: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self) -> None:
        with open(self.log, "a") as log:  # the child has its own copy of the descriptor
            log.write(f"--- {' '.join(self.command)}\n")
            log.flush()
            self.process = subprocess.Popen(
                self.command, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                start_new_session=self.own_session,  # preexec_fn: one system call, made before any thread runs
                preexec_fn=_die_with_parent if self.own_session and _PRCTL else None)  # noqa: PLW1509

    def wait_ready(self, timeout: float = 300, streak: int = 1) -> float:
        """Poll /readyz until 200 and search no longer loading or building, `streak` times in a row, each on a new
        connection (with --workers, each may reach another process); returns time.monotonic() then. Raises
        RuntimeError (with the log's tail) when the server exits, fails to load, or is not ready in time."""
        deadline, ready = time.monotonic() + timeout, 0
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"the server exited ({self.process.returncode}):\n{self.log_tail()}")
            try:
                response = httpx2.get(f"{self.url}/readyz", timeout=5)
                if response.json().get("error"):
                    raise RuntimeError(f"the server could not load: {response.json()['error']}")
                searchable = response.status_code == 200 and response.json()["search"] not in ("loading", "building")
                ready = ready + 1 if searchable else 0
                if ready >= streak:
                    return time.monotonic()
            except httpx2.TransportError:  # not listening yet
                ready = 0
            if time.monotonic() > deadline:
                raise RuntimeError(f"the server was not ready after {timeout:g} s:\n{self.log_tail()}")
            time.sleep(0.05 if not ready else 0)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> bool:
        """Send sig and wait for the process to end; SIGKILL after timeout. True when it ended by itself."""
        if self.process is None or self.process.poll() is not None:
            return True
        self.process.send_signal(sig)
        try:
            self.process.wait(timeout)
            return True
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            return False

    def index_count(self) -> int:
        """How many images the served index holds (/version)."""
        return httpx2.get(f"{self.url}/version", timeout=30).json()["index"]["count"]

    def index_ids(self, most: int = 512) -> list[str]:
        """The ids of the first `most` indexed images: a fixed set to ask for, so that the catalog pages they
        touch stop growing the server's resident memory once warmed up."""
        ids: list[str] = []
        after = None
        while len(ids) < most:
            page = httpx2.get(f"{self.url}/index/images", params={"limit": min(1000, most - len(ids)),
                                                                 **({"after": after} if after else {})},
                              timeout=30).json()
            ids += [image["id"] for image in page["images"]]
            if not (after := page["next"]):
                break
        return ids

    def has_classifier(self) -> bool:
        return httpx2.get(f"{self.url}/version", timeout=30).json()["classifier"]

    def status_counts(self) -> Counter[str]:
        """The server's own count of its answers by status class (/metrics' simclr_http_requests), /readyz left out
        (it answers 503 while loading)."""
        text = httpx2.get(f"{self.url}/metrics", timeout=30).text
        counts: Counter[str] = Counter()
        for family in text_string_to_metric_families(text):
            if family.name == "simclr_http_requests":
                for sample in family.samples:
                    if sample.name.endswith("_total") and sample.labels["route"] != "/readyz":
                        counts[f"{sample.labels['status'][0]}xx"] += int(sample.value)
        return counts

    def memory(self) -> dict[str, int] | None:
        """VmRSS, RssAnon and RssFile of the server process in KiB (/proc/PID/status), None once it is gone."""
        try:
            lines = Path(f"/proc/{self.pid}/status").read_text().splitlines()
        except (FileNotFoundError, ProcessLookupError):
            return None
        fields = dict(line.split(":", 1) for line in lines if ":" in line)
        return {key: int(fields[key].split()[0]) for key in ("VmRSS", "RssAnon", "RssFile") if key in fields}

    def log_errors(self) -> list[str]:
        """Lines of the server's log at level ERROR or CRITICAL, and tracebacks."""
        with open(self.log, errors="replace") as log:
            return [line.rstrip() for line in log if line.startswith(("ERROR", "CRITICAL", "Traceback"))]

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])


class MilvusLite:
    """Milvus Lite's own gRPC server (python -m milvus_lite server) on a free loopback port, in a subprocess: the
    client-server path a real Milvus takes, and an index that outlives the service processes using it."""

    def __init__(self, data_dir: Path, log: Path):
        self.port = free_port()
        self.uri = f"milvus://127.0.0.1:{self.port}"
        self.command = [sys.executable, "-m", "milvus_lite", "server", "--data-dir", str(data_dir),
                        "--host", "127.0.0.1", "--port", str(self.port)]
        self.log = Path(log)
        self.process: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> None:
        with open(self.log, "a") as log:
            self.process = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent if _PRCTL else None)
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"Milvus Lite exited ({self.process.returncode}):\n{self.log.read_text()[-2000:]}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"Milvus Lite was not listening after {timeout:g} s") from None
                time.sleep(0.1)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# --- the request mix ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One kind of request: a route, what it sends, and the status and content type it must get."""

    name: str
    route: str  # method and route template, as reported
    expect: int
    media_type: str
    weight: float
    request: Callable[[random.Random], dict[str, Any]]  # keyword arguments of AsyncClient.request


def multipart(data: bytes, filename: str = "image.png", content_type: str = "image/png") -> bytes:
    """A multipart/form-data body (boundary BOUNDARY) with one file in the field 'images'."""
    return (f"--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"images\"; filename=\"{filename}\"\r\n"
            f"Content-Type: {content_type}\r\n\r\n").encode() + data + f"\r\n--{BOUNDARY}--\r\n".encode()


def generated_images(n: int, seed: int = 0) -> list[bytes]:
    """n PNG files that look like small photographs more than noise: a smooth random colour field with a
    brighter blob and sensor noise, 24 to 64 pixels a side (not all square, so the service resizes them)."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(n):
        w, h = (int(v) for v in rng.integers(24, 65, 2))
        field_ = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
        x = np.asarray(field_, dtype=np.float32)
        yy, xx = np.mgrid[0:h, 0:w]
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, 16)
        x += 60 * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))[..., None] * rng.uniform(-1, 1, 3)
        x += rng.normal(0, 6, x.shape)
        images.append(png_bytes(np.clip(x, 0, 255).astype(np.uint8)))
    return images


def folder_images(root: Path, n: int) -> list[bytes]:
    """n images of an image folder (its test/ split when there is one), spread over it, re-encoded as PNG."""
    root = Path(root)
    root = root / "test" if (root / "test").is_dir() else root
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".webp"))
    if not files:
        raise SystemExit(f"no images under {root}")
    picked = [files[i] for i in np.linspace(0, len(files) - 1, min(n, len(files))).round().astype(int)]
    images = []
    for path in picked:
        with Image.open(path) as image:
            images.append(png_bytes(image.convert("RGB")))
    return images


UNKNOWN_IDS = ["no/such/image.png", "x" * 300, "train/cat/99999.png"]


def make_mix(images: list[bytes], ids: list[str], max_request_bytes: int, classify: bool = True) -> list[Case]:
    """The soak's requests, pre-encoded: every route with good input, and each kind of bad input the service
    must refuse with its 4xx. Weights are how often each is sent."""
    bodies = [multipart(image) for image in images]
    # Additions under ids of their own (the file name is the id), eight of them replaced over and over: the
    # index changes all through the soak but does not grow.
    additions = [multipart(image, f"soak/{i}.png") for i, image in enumerate(images[:8])]
    not_image = multipart(b"plain text, not an image, though it is named like one\n" * 8, "photo.png")
    oversized = multipart(bytes(max_request_bytes + 1024))  # over the limit by its Content-Length
    pieces = [oversized[i:i + 65536] for i in range(0, len(oversized), 65536)]

    async def chunked() -> AsyncIterator[bytes]:  # no Content-Length: the limit is found by counting
        for piece in pieces:
            yield piece

    def upload(url: str) -> Callable[[random.Random], dict[str, Any]]:
        return lambda rng: {"method": "POST", "url": url, "content": rng.choice(bodies), "headers": MULTIPART}

    def get(template: str, pool: list[str]) -> Callable[[random.Random], dict[str, Any]]:
        return lambda rng: {"method": "GET", "url": template.format(id=quote(rng.choice(pool), safe="/"))}

    cases = [
        Case("embed", "POST /embed", 200, JSON, 4, upload("/embed")),
        Case("classify", "POST /classify", 200, JSON, 3, upload("/classify?k=3")),
        Case("search by upload", "POST /search", 200, JSON, 3, upload("/search?k=10")),
        Case("search by id", "GET /search", 200, JSON, 3, get("/search?id={id}&k=10", ids)),
        Case("index addition", "POST /index/images", 200, JSON, 1, lambda rng: {
            "method": "POST", "url": "/index/images", "content": rng.choice(additions), "headers": MULTIPART}),
        Case("thumbnail", "GET /thumbnails/{id:path}", 200, JPEG, 3, get("/thumbnails/{id}", ids)),
        Case("not an image", "POST /embed", 415, PROBLEM, 1,
             lambda rng: {"method": "POST", "url": "/embed", "content": not_image, "headers": MULTIPART}),
        Case("bad k", "GET /search", 422, PROBLEM, 1, lambda rng: {
            "method": "GET", "url": f"/search?id={quote(rng.choice(ids))}&k={rng.choice(['0', '101', '-1', 'ten'])}"}),
        Case("unknown search id", "GET /search", 404, PROBLEM, 0.5, get("/search?id={id}", UNKNOWN_IDS)),
        Case("unknown image id", "GET /thumbnails/{id:path}", 404, PROBLEM, 0.5, get("/thumbnails/{id}", UNKNOWN_IDS)),
        Case("oversized body", "POST /embed", 413, PROBLEM, 0.5,
             lambda rng: {"method": "POST", "url": "/embed", "content": oversized, "headers": MULTIPART}),
        Case("oversized chunked body", "POST /classify", 413, PROBLEM, 0.5,
             lambda rng: {"method": "POST", "url": "/classify", "content": chunked(), "headers": MULTIPART}),
    ]
    return [case for case in cases if classify or case.route != "POST /classify"]


# --- the load ----------------------------------------------------------------------------------------------


@dataclass
class Tally:
    """Every answer and transport error, per case."""

    latency: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    statuses: dict[str, Counter[int]] = field(default_factory=lambda: defaultdict(Counter))
    unexpected: Counter[tuple[str, str]] = field(default_factory=Counter)  # (case, what it got) -> count
    examples: dict[tuple[str, str], str] = field(default_factory=dict)  # one answer's body per unexpected kind
    transport: Counter[tuple[str, str]] = field(default_factory=Counter)  # (case, exception class) -> count
    transport_examples: dict[str, str] = field(default_factory=dict)

    def answer(self, case: Case, response: httpx2.Response, seconds: float) -> None:
        self.latency[case.name].append(seconds)
        self.statuses[case.name][response.status_code] += 1
        media_type = response.headers.get("content-type", "").split(";")[0]
        if response.status_code != case.expect or media_type != case.media_type:
            got = f"{response.status_code} {media_type}"
            self.unexpected[case.name, got] += 1
            self.examples.setdefault((case.name, got), response.text[:300])

    def error(self, case: Case, error: Exception) -> None:
        kind = type(error).__name__
        self.transport[case.name, kind] += 1
        self.transport_examples.setdefault(kind, str(error)[:300] or repr(error))

    @property
    def requests(self) -> int:
        return sum(len(v) for v in self.latency.values()) + sum(self.transport.values())

    @property
    def server_errors(self) -> int:
        return sum(n for counts in self.statuses.values() for status, n in counts.items() if status >= 500)


@dataclass
class Sample:
    seconds: float  # since the load started
    memory: dict[str, int]  # KiB
    requests: int  # answered so far


@dataclass
class Soak:
    cases: list[Case]
    clients: int
    tally: Tally
    samples: list[Sample]
    seconds: float
    interrupted: bool


async def drive(server: Server, cases: list[Case], clients: int, seconds: float, sample_every: float = 30,
                timeout: float = 30, seed: int = 0, stop: asyncio.Event | None = None,
                progress: Callable[[Sample, Tally], None] | None = None) -> Soak:
    """`clients` closed-loop clients, each sending a request of the mix (drawn by weight) as soon as its last
    was answered, for `seconds` or until `stop` is set; the server's memory is sampled every `sample_every`
    seconds and once at the end. A request still unanswered after `timeout` seconds (per connect, write and read)
    counts as a transport error, so the run always ends."""
    loop = asyncio.get_running_loop()
    stop = stop or asyncio.Event()
    tally, samples = Tally(), []
    weights = [case.weight for case in cases]
    limits = httpx2.Limits(max_connections=clients, max_keepalive_connections=clients)
    started = loop.time()
    deadline = started + seconds

    def sample() -> None:
        memory = server.memory()
        if memory:
            samples.append(Sample(loop.time() - started, memory, tally.requests))
            if progress:
                progress(samples[-1], tally)

    async def sampler() -> None:
        while True:
            sample()
            await asyncio.sleep(sample_every)

    async with httpx2.AsyncClient(base_url=server.url, limits=limits, timeout=timeout) as client:
        async def worker(w: int) -> None:
            rng = random.Random(seed * 100_003 + w)
            while loop.time() < deadline and not stop.is_set():
                case = rng.choices(cases, weights)[0]
                sent = time.perf_counter()
                try:
                    response = await client.request(**case.request(rng))
                except httpx2.TransportError as e:  # timeouts included
                    tally.error(case, e)
                else:
                    tally.answer(case, response, time.perf_counter() - sent)

        sampling = asyncio.create_task(sampler())
        await asyncio.gather(*(worker(w) for w in range(clients)))
        sampling.cancel()
        await asyncio.gather(sampling, return_exceptions=True)
        elapsed = loop.time() - started
        sample()
    return Soak(cases, clients, tally, samples, elapsed, stop.is_set())


# --- the report --------------------------------------------------------------------------------------------


def _percentiles(seconds: list[float]) -> str:
    if not seconds:
        return f"{'-':>8s} {'-':>8s} {'-':>8s}"
    p50, p95, p99 = np.percentile(np.array(seconds) * 1000, [50, 95, 99])
    return f"{p50:8.1f} {p95:8.1f} {p99:8.1f}"


def _classes(counts: Counter[int]) -> str:
    by_class: Counter[str] = Counter()
    for status, n in counts.items():
        by_class[f"{status // 100}xx"] += n
    return " ".join(f"{by_class[c]:6d}" for c in ("2xx", "3xx", "4xx", "5xx"))


def memory_growth(samples: list[Sample], warmup: float) -> tuple[Sample, Sample] | None:
    """(the first sample at or after warm-up, the last one), or None when the run ended before warm-up did."""
    after = [s for s in samples if s.seconds >= warmup]
    return (after[0], after[-1]) if len(after) >= 2 else None


def report(soak: Soak, warmup: float, max_growth: float | None = 0.10,
           server_errors: Sequence[str] = (), server_counts: Counter[str] | None = None) -> tuple[list[str], list[str]]:
    """(report lines, failures): requests per case and route by status class, latency percentiles, transport
    errors, unexpected answers, the server's resident memory series and its growth after warm-up. A failure is
    any 5xx, transport error, unexpected answer, server log error, or (with max_growth) memory growth at or
    over max_growth."""
    t, lines, failures = soak.tally, [], []
    total = sum(len(v) for v in t.latency.values())
    lines.append(f"{soak.clients} clients, {soak.seconds:.1f} s{' (interrupted)' if soak.interrupted else ''}: "
                 f"{total} answers, {total / soak.seconds:.1f} per second; "
                 f"{sum(t.transport.values())} transport errors")
    header = f"  {'':24s} {'route':25s} {'expect':>6s} {'2xx':>6s} {'3xx':>6s} {'4xx':>6s} {'5xx':>6s} " \
             f"{'unexp':>6s} {'transp':>6s} {'p50 ms':>8s} {'p95 ms':>8s} {'p99 ms':>8s}"
    lines.append(header)
    for case in soak.cases:
        unexpected = sum(n for (name, _), n in t.unexpected.items() if name == case.name)
        transport = sum(n for (name, _), n in t.transport.items() if name == case.name)
        lines.append(f"  {case.name:24s} {case.route:25s} {case.expect:6d} {_classes(t.statuses[case.name])} "
                     f"{unexpected:6d} {transport:6d} {_percentiles(t.latency[case.name])}")
    lines.append("  per route:")
    for route in dict.fromkeys(case.route for case in soak.cases):
        names = [case.name for case in soak.cases if case.route == route]
        counts = sum((t.statuses[name] for name in names), Counter())
        lines.append(f"  {'':24s} {route:25s} {'':6s} {_classes(counts)} {'':6s} {'':6s} "
                     f"{_percentiles([x for name in names for x in t.latency[name]])}")
    all_counts = sum(t.statuses.values(), Counter())
    lines.append(f"  {'all':24s} {'':25s} {'':6s} {_classes(all_counts)} {sum(t.unexpected.values()):6d} "
                 f"{sum(t.transport.values()):6d} {_percentiles([x for v in t.latency.values() for x in v])}")
    if server_counts is not None:
        lines.append("the server's own count (/metrics, /readyz left out): "
                     + ", ".join(f"{k} {v}" for k, v in sorted(server_counts.items())))

    if t.server_errors or (server_counts and server_counts["5xx"]):
        failures.append(f"{max(t.server_errors, server_counts['5xx'] if server_counts else 0)} answers were 5xx")
    for (name, got), n in sorted(t.unexpected.items()):
        failures.append(f"{n} x {name}: got {got}, e.g. {t.examples[name, got]!r}")
    for (name, kind), n in sorted(t.transport.items()):
        failures.append(f"{n} x {name}: {kind} ({t.transport_examples[kind]})")
    if server_errors:
        failures.append(f"the server logged {len(server_errors)} errors, first: {server_errors[0]}")

    if soak.samples:
        lines.append("server resident memory (VmRSS; anonymous + file-backed), MiB:")
        for s in soak.samples:
            m = s.memory
            lines.append(f"  {s.seconds:7.1f} s  {m['VmRSS'] / 1024:8.1f}  ({m.get('RssAnon', 0) / 1024:.1f} + "
                         f"{m.get('RssFile', 0) / 1024:.1f})  after {s.requests} requests")
        growth = memory_growth(soak.samples, warmup)
        if growth is None:
            lines.append(f"growth after warm-up: not measured (the run ended before {warmup:g} s of warm-up "
                         f"and one more sample)")
        else:
            first, last = growth
            change = last.memory["VmRSS"] / first.memory["VmRSS"] - 1
            peak = max(s.memory["VmRSS"] for s in soak.samples if s.seconds >= warmup)
            lines.append(f"growth after warm-up: {first.memory['VmRSS'] / 1024:.1f} MiB at {first.seconds:.0f} s -> "
                         f"{last.memory['VmRSS'] / 1024:.1f} MiB at {last.seconds:.0f} s: {100 * change:+.1f}% "
                         f"(peak {peak / 1024:.1f} MiB)")
            if max_growth is not None and change >= max_growth:
                failures.append(f"resident memory grew {100 * change:.1f}% after warm-up "
                                f"(limit {100 * max_growth:.0f}%)")
    return lines, failures
