"""Run-time index changes survive a crash: clients stream additions, replacements and deletions at a real
server, which is killed with SIGKILL mid-stream. Restarted on the same index, it must hold every change it
acknowledged with a 200 (requests cut off by the kill may have landed or not), and find what it holds."""

from __future__ import annotations

import random
import shutil
import signal
import threading
import time

import httpx2

from benchmarks.harness.load import Server, generated_images

WRITERS = 3


def test_every_acknowledged_change_survives_sigkill(bundle_dir, index_dir, tmp_path):
    shutil.copytree(index_dir, tmp_path / "index")
    server = Server(bundle_dir, tmp_path / "index", tmp_path / "server.log")
    images = generated_images(12)
    expected: dict[str, int | None] = {}  # id -> image number, or None once its deletion was acknowledged
    uncertain: set[str] = set()  # ids whose last request got no answer: either outcome is right
    lock, stop = threading.Lock(), threading.Event()

    def writer(w: int) -> None:
        rng = random.Random(w)
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

    server.start()
    try:
        server.wait_ready(120)
        threads = [threading.Thread(target=writer, args=(w,)) for w in range(WRITERS)]
        for thread in threads:
            thread.start()
        time.sleep(4)  # some hundreds of changes
        server.stop(signal.SIGKILL)
        stop.set()
        for thread in threads:
            thread.join(20)
        assert len(expected) >= WRITERS * 4, f"too few changes acknowledged before the kill: {len(expected)}"

        server.start()
        server.wait_ready(120)
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
    finally:
        stop.set()
        server.stop()
