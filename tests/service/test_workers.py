"""python -m service --workers N: several processes on one port, one index, one set of metrics. (Index changes
surviving a SIGKILL, with one or two servers: test_index_crash.py.)"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx2
import pytest
from prometheus_client.parser import text_string_to_metric_families

from benchmarks.harness.load import Server, generated_images

pytestmark = pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads worker processes from /proc")


def children(pid: int) -> set[int]:
    """The processes pid started (uvicorn's workers: multiprocessing's spawn_main, beside its resource tracker)."""
    return {int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()}


def test_workers_share_the_port_and_the_index_and_one_killed_is_replaced(bundle_dir, served_index, tmp_path):
    """python -m service --workers 2: two processes answer on one port; what one is sent, the other serves; a
    worker killed is started again by uvicorn while the other goes on answering."""
    server = Server(bundle_dir, served_index["index"], tmp_path / "server.log",
                    flags={**served_index["flags"], "workers": 2, "torch-threads": 1})
    server.start()
    try:
        server.wait_ready(180, streak=10)
        workers = running_workers(server, 2)
        image = generated_images(1, seed=5)[0]
        deadline = time.monotonic() + 60
        while (added := httpx2.post(f"{server.url}/index/images", files=[("images", ("w.png", image, "image/png"))],
                                    data={"ids": "workers/w.png"}, timeout=30)).status_code == 503:
            assert added.json()["type"].endswith("/not-ready") and time.monotonic() < deadline, added.text
            time.sleep(0.2)  # a worker still loading: retried, as a client does on a 503 with Retry-After
        assert added.status_code == 200, added.text
        assert_found_on_every_connection(server.url, "workers/w.png")
        os.kill(min(workers), signal.SIGKILL)
        # New connections (the listening socket is shared, its queue not the dead worker's) reach the survivor.
        assert [httpx2.get(f"{server.url}/healthz", timeout=10).status_code for _ in range(20)] == [200] * 20
        running_workers(server, 2, without={min(workers)})
        server.wait_ready(120, streak=10)
        assert_found_on_every_connection(server.url, "workers/w.png")
    finally:
        server.stop()


def assert_found_on_every_connection(url: str, image_id: str, connections: int = 20) -> None:
    """GET the image on `connections` new connections in a row (spread over the workers): every answer has it. A
    worker may still be loading (the kernel need not have handed it a readiness probe yet): its 503 is retried,
    while a 404 fails."""
    found, deadline = 0, time.monotonic() + 60
    while found < connections:
        got = httpx2.get(f"{url}/index/images/{image_id}", timeout=30)
        if got.status_code == 503 and got.json()["type"].endswith("/not-ready"):
            assert time.monotonic() < deadline, got.text
            found = 0
            time.sleep(0.2)
            continue
        assert got.status_code == 200, got.text
        found += 1


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def test_metrics_count_every_workers_requests(bundle_dir, index_dir, tmp_path):
    """/metrics, whichever worker answers it, counts the requests every worker served, a killed one's included
    after uvicorn has replaced it: each worker is made to serve some requests alone (the other paused, so that
    every new connection is its), then each is scraped alone."""
    shutil.copytree(index_dir, tmp_path / "index")
    server = Server(bundle_dir, tmp_path / "index", tmp_path / "server.log", flags={"workers": 2, "torch-threads": 1})
    server.start()
    try:
        server.wait_ready(180, streak=10)
        first, second = sorted(running_workers(server, 2))
        for worker in (first, second):  # /readyz on new connections need not have reached both
            wait_ready_alone(worker, server)
        for worker, requests in ((first, 3), (second, 5)):
            with only(worker, server):
                assert [httpx2.get(f"{server.url}/version", timeout=10).status_code
                        for _ in range(requests)] == [200] * requests
        for worker in (first, second):
            with only(worker, server):
                assert version_requests(server.url) == 8
        os.kill(first, signal.SIGKILL)
        replacement = min(running_workers(server, 2, without={first}) - {second})
        wait_ready_alone(replacement, server)
        for worker in (second, replacement):
            with only(worker, server):
                assert version_requests(server.url) == 8
    finally:
        server.stop()


def version_requests(url: str) -> float:
    """GET /version's count in /metrics; the families /metrics sums over the workers have one sample each."""
    families = {f.name: f for f in text_string_to_metric_families(httpx2.get(f"{url}/metrics", timeout=10).text)}
    assert len(families["simclr_model_info"].samples) == 1  # the answering worker's (every worker serves one bundle)
    [depth] = families["simclr_inference_queue_depth"].samples
    assert depth.labels == {} and depth.value == 0  # summed over the live workers, not one series per process
    [count] = [s.value for s in families["simclr_http_requests"].samples
               if s.name.endswith("_total") and s.labels == {"route": "/version", "method": "GET", "status": "200"}]
    return count


def wait_ready_alone(worker: int, server: Server) -> None:
    """Until `worker` itself answers /readyz with 200 (its model loaded)."""
    deadline = time.monotonic() + 120
    while True:
        with only(worker, server):
            if httpx2.get(f"{server.url}/readyz", timeout=10).status_code == 200:
                return
        assert time.monotonic() < deadline, server.log_tail()
        time.sleep(0.2)  # the others running meanwhile: uvicorn kills a worker paused for 5 s


@contextmanager
def only(worker: int, server: Server) -> Iterator[None]:
    """Pause every other worker (SIGSTOP) so that `worker` accepts every new connection. Kept short: uvicorn
    replaces a worker that misses its 5-second health check."""
    others = running_workers(server, 1) - {worker}
    for other in others:
        signal_if_there(other, signal.SIGSTOP)
    try:
        yield
    finally:
        for other in others:
            signal_if_there(other, signal.SIGCONT)


def signal_if_there(pid: int, sent: signal.Signals) -> None:
    """A worker listed may be gone by now: one just killed is listed until uvicorn reaps it (a CI run failed on
    resuming such a one), and uvicorn replaces one it finds unresponsive."""
    try:
        os.kill(pid, sent)
    except ProcessLookupError:
        pass


def running_workers(server: Server, at_least: int, without: set[int] = frozenset()) -> set[int]:
    """The server's worker processes, once there are `at_least` of them besides `without` (a killed one)."""
    deadline = time.monotonic() + 120
    while len(workers := {p for p in children(server.pid) if "spawn_main" in _cmdline(p)} - without) < at_least:
        assert time.monotonic() < deadline, f"fewer than {at_least} workers\n" + server.log_tail()
        time.sleep(0.2)
    return workers


def test_a_dead_workers_queue_depth_leaves_the_sum(tmp_path, monkeypatch):
    """A worker killed with images queued would otherwise add them to simclr_inference_queue_depth for good: a
    worker starting takes dead processes' live gauges out, and leaves the living ones'."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    from service.metrics import MULTIPROCESS_DIR, _forget_dead_workers, shared_between_workers

    monkeypatch.delenv(MULTIPROCESS_DIR, raising=False)
    with shared_between_workers() as folder:
        queue = ("from prometheus_client import Gauge; import sys; "
                 "Gauge('simclr_inference_queue_depth', 'q', multiprocess_mode='livesum').set(int(sys.argv[1]))")
        subprocess.run([sys.executable, "-c", queue, "5"], check=True)  # a worker that died with 5 queued
        living = subprocess.Popen([sys.executable, "-c", queue + "; sys.stdin.read()", "2"], stdin=subprocess.PIPE)
        try:
            while not any(folder.glob(f"*_{living.pid}.db")):
                assert living.poll() is None, "the living worker ended"
                time.sleep(0.05)
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=str(folder))
            assert registry.get_sample_value("simclr_inference_queue_depth") == 7
            _forget_dead_workers(str(folder))
            assert registry.get_sample_value("simclr_inference_queue_depth") == 2
        finally:
            living.communicate(b"")
    assert not folder.exists() and MULTIPROCESS_DIR not in os.environ  # the folder lasts as long as the workers


def test_a_named_metrics_folder_is_emptied_of_the_last_runs_files_and_kept(tmp_path, monkeypatch):
    """PROMETHEUS_MULTIPROC_DIR set by the user: its earlier run's counts must not be summed into this run's."""
    from service.metrics import MULTIPROCESS_DIR, shared_between_workers

    monkeypatch.setenv(MULTIPROCESS_DIR, str(tmp_path / "metrics"))
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "counter_99999.db").write_bytes(b"old")
    (tmp_path / "metrics" / "notes.txt").write_text("the user's")
    with shared_between_workers() as folder:
        assert folder == tmp_path / "metrics" and sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    assert folder.is_dir() and os.environ[MULTIPROCESS_DIR] == str(folder)
