"""Run-time index changes survive a crash: clients stream additions, replacements and deletions at real servers,
one of which is killed with SIGKILL mid-stream. Every change a server acknowledged with a 200 must be there
(requests cut off by the kill may have landed or not), searchable, seen at once through a process still running,
and through the killed one once it is restarted. On both backends: a local folder the processes share on this
host, and a Milvus (Lite) server they talk to over gRPC. (Several worker processes of one server: test_workers.py.)"""

from __future__ import annotations

import random
import signal
import threading
import time

import httpx2
import pytest

from benchmarks.harness.load import Server, generated_images

WRITERS = 4


def assert_holds(server: Server, expected: dict[str, int | None], uncertain: set[str], images: list[bytes]) -> None:
    """The server holds every acknowledged change: deleted ids are gone, added ones have their last metadata and
    their vectors are searchable; the listing and the count agree."""
    with httpx2.Client(base_url=server.url, timeout=30) as client:
        for id, n in expected.items():
            if id in uncertain:
                continue
            answer = client.get(f"/index/images/{id}")
            if n is None:
                assert answer.status_code == 404, f"{id} was deleted (acknowledged) but is back"
                continue
            assert answer.status_code == 200, f"{id} was added (acknowledged) but is lost"
            assert answer.json()["metadata"] == {"n": n}, f"{id}: an older version came back"
            hit = client.post("/search", params={"k": 1, "filter": f"n:{n}"},
                              files=[("images", ("q.png", images[n], "image/png"))]).json()
            assert hit["results"][0]["neighbours"][0]["score"] > 0.999  # its vector is searchable too
        count = client.get("/index").json()["count"]
        listed = client.get("/index/images", params={"limit": 1000}).json()["images"]
        assert count == len(listed) and len({image["id"] for image in listed}) == count


@pytest.mark.parametrize("processes", [1, 2])
def test_every_acknowledged_change_survives_sigkill(bundle_dir, served_index, tmp_path, processes):
    servers = [Server(bundle_dir, served_index["index"], tmp_path / f"server{i}.log", flags=served_index["flags"])
               for i in range(processes)]
    images = generated_images(12)
    expected: dict[str, int | None] = {}  # id -> image number, or None once its deletion was acknowledged
    uncertain: set[str] = set()  # ids whose last request got no answer: either outcome is right
    lock, stop = threading.Lock(), threading.Event()

    def writer(w: int) -> None:
        rng = random.Random(w)
        server = servers[w % processes]  # with two processes, half the writers write through each
        with httpx2.Client(base_url=server.url, timeout=10) as client:
            while not stop.is_set():
                id = f"crash/{w}/{rng.randrange(8)}.png"  # a few ids each: adds, replacements and deletions mix
                n = rng.randrange(len(images))
                try:
                    if rng.random() < 0.3:
                        response = client.delete(f"/index/images/{id}")
                        ok = response.status_code in (200, 404)
                        outcome = None
                    else:
                        response = client.post("/index/images", files=[("images", (id, images[n], "image/png"))],
                                               data={"ids": id, "metadata": f'{{"n": {n}}}'})
                        ok, outcome = response.status_code == 200, n
                except httpx2.TransportError:  # the kill: this change may or may not have landed
                    with lock:
                        uncertain.add(id)
                    return
                assert ok, response.text
                with lock:
                    expected[id] = outcome
                    uncertain.discard(id)

    for server in servers:  # one after the other: the first makes the (Milvus) index the second opens
        server.start()
        server.wait_ready(120)
    threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
    try:
        for thread in threads:
            thread.start()
        time.sleep(4)  # some hundreds of changes
        servers[0].stop(signal.SIGKILL)
        time.sleep(1 if processes > 1 else 0)  # the other process goes on taking changes
        stop.set()
        for thread in threads:
            thread.join(20)
        assert len(expected) >= WRITERS * 4, f"too few changes acknowledged before the kill: {len(expected)}"
        if processes > 1:
            assert_holds(servers[1], expected, uncertain, images)  # at once, without a restart
        servers[0].start()
        servers[0].wait_ready(120)
        assert_holds(servers[0], expected, uncertain, images)
    finally:
        stop.set()
        for server in servers:
            server.stop()
