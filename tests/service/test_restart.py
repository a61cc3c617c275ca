"""The service stopped (SIGTERM: graceful; SIGKILL: not) and started again on the same port while clients keep
sending POST /embed. Every request must end within its timeout with a 200, a 503 problem (loading or shutting
down) or a connection error (refused, reset, closed): all of which a client may retry. None may hang or get
another status, and once the new server is ready every request succeeds again."""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass

import httpx2
import pytest

from benchmarks.harness.load import CONNECTION_ERRORS, MULTIPART, PROBLEM, Server, generated_images, multipart

CLIENTS = 4
TIMEOUT = 10  # seconds per connect, write and read: a request that takes longer hangs
RETRY_AFTER = 0.05  # a client waits this long after an answer other than 200


@dataclass
class Outcome:
    sent: float  # time.monotonic()
    seconds: float
    status: int | None = None
    media_type: str | None = None
    error: str | None = None  # the exception's class, when there was no answer
    connection_error: bool = False  # refused, reset or closed (not a timeout)


@pytest.fixture(scope="module")
def server(bundle_dir, index_dir, tmp_path_factory):
    """One server whose process the tests replace: each test restarts the one the test before left."""
    server = Server(bundle_dir, index_dir, tmp_path_factory.mktemp("restart") / "server.log")
    yield server
    server.stop()


def send(url: str, body: bytes, stop: threading.Event, outcomes: list[Outcome]) -> None:
    with httpx2.Client(base_url=url, timeout=TIMEOUT) as client:
        while not stop.is_set():
            sent = time.monotonic()
            try:
                response = client.post("/embed", content=body, headers=MULTIPART)
                outcomes.append(Outcome(sent, time.monotonic() - sent, response.status_code,
                                        response.headers.get("content-type", "").split(";")[0]))
            except httpx2.TransportError as e:  # timeouts included: they are failures, judged below
                outcomes.append(Outcome(sent, time.monotonic() - sent, error=type(e).__name__,
                                        connection_error=isinstance(e, CONNECTION_ERRORS)))
            if outcomes[-1].status != 200:
                time.sleep(RETRY_AFTER)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["SIGTERM", "SIGKILL"])
def test_clients_see_only_retryable_failures_across_a_restart(server, sig):
    if server.process is None or server.process.poll() is not None:
        server.start()
    server.wait_ready(120)
    bodies = [multipart(image) for image in generated_images(CLIENTS, seed=3)]
    stop, outcomes = threading.Event(), [[] for _ in range(CLIENTS)]
    clients = [threading.Thread(target=send, args=(server.url, body, stop, out), daemon=True)
               for body, out in zip(bodies, outcomes)]
    for client in clients:
        client.start()
    try:
        time.sleep(1.5)
        stopping = time.monotonic()
        ended_by_itself = server.stop(sig, timeout=20)
        stopped = time.monotonic()
        server.start()  # the same port
        ready = server.wait_ready(120)
        time.sleep(1.5)
    finally:
        stop.set()
        for client in clients:
            client.join(TIMEOUT * 3 + 5)
    assert not any(client.is_alive() for client in clients), "a client is still waiting for an answer"
    assert ended_by_itself, f"the server did not end within 20 s of {sig.name}"
    if sig == signal.SIGTERM:
        assert "Application shutdown complete" in server.log.read_text(), server.log_tail()
    assert not server.log_errors(), server.log_tail()
    print(f"\n{sig.name}: stopped in {stopped - stopping:.2f} s, ready again {ready - stopped:.2f} s later")

    everything = sorted((o for out in outcomes for o in out), key=lambda o: o.sent)
    bad = [o for o in everything if not (o.status == 200 or (o.status == 503 and o.media_type == PROBLEM)
                                         or o.connection_error)]
    assert not bad, f"not retryable, or hung: {bad[:10]}"
    assert max(o.seconds for o in everything) < 3 * TIMEOUT

    before = [o for o in everything if o.sent + o.seconds < stopping]  # answered before the signal
    down = [o for o in everything if stopping <= o.sent < ready]
    after = [o for o in everything if o.sent >= ready]
    seen = sorted({str(o.status or o.error) for o in down})
    print(f"before: {len(before)} requests; while stopped or loading: {len(down)} ({', '.join(seen)}); "
          f"after ready: {len(after)}")
    assert before and all(o.status == 200 for o in before)
    assert any(o.status != 200 for o in down), "no request was sent while the server was down"
    assert len(after) >= CLIENTS and all(o.status == 200 for o in after), \
        [o for o in after if o.status != 200][:10]

