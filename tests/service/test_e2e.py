"""End to end over real HTTP: tiny pretraining, linear evaluation and export, an index over an image folder,
and uvicorn started as `python -m service` in a subprocess on a free loopback port."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx2
import numpy as np
import pytest

from benchmarks.harness.load import free_port

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]  # run from the checkout, installed or not


def python(*args: str) -> None:
    result = subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, f"{' '.join(args[:1])} failed:\n{result.stderr[-3000:]}"


def test_train_evaluate_export_index_serve(tmp_path, pattern_folder):
    run, bundle, index = tmp_path / "run", tmp_path / "bundle", tmp_path / "index"
    python("trainer.pretrain", "--data-dir", str(pattern_folder), "--out", str(run), "--epochs", "1",
           "--batch-size", "16", "--image-size", "16", "--device", "cpu", "--knn-every", "1",
           "--cache-dir", str(tmp_path / "cache"))
    python("trainer.linear_eval", "--run", str(run), "--epochs", "3", "--device", "cpu",
           "--cache-dir", str(tmp_path / "cache"))
    python("trainer.export", "--run", str(run), "--out", str(bundle))
    python("service.build_index", "--bundle", str(bundle), "--data-dir", str(pattern_folder), "--out", str(index))

    port = free_port()
    log = open(tmp_path / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "service", "--bundle", str(bundle), "--index", str(index),
                               "--port", str(port)], stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                              env={**os.environ, "SIMCLR_MAX_IMAGES": "4"})
    try:
        with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            readiness, embed_while_loading = [], None
            deadline = time.monotonic() + 120
            while not readiness or readiness[-1] != 200:
                assert time.monotonic() < deadline and server.poll() is None, (tmp_path / "server.log").read_text()
                try:
                    readiness.append(client.get("/readyz").status_code)
                    if readiness[-1] == 503 and embed_while_loading is None:
                        embed_while_loading = client.post("/embed", files={"images": b"x"})
                except httpx2.TransportError:  # not listening yet
                    time.sleep(0.01)
            assert readiness[0] == 503 and set(readiness[:-1]) == {503}, readiness  # false until loading ended
            assert embed_while_loading.status_code == 503
            assert embed_while_loading.headers["content-type"] == "application/problem+json"

            query = sorted((pattern_folder / "train" / "checker").iterdir())[3]
            upload = {"images": (query.name, query.read_bytes(), "image/png")}
            embedding = client.post("/embed", files=upload).json()
            vector = np.array(embedding["embeddings"][0]["representation"])
            assert vector.shape == (512,) and np.linalg.norm(vector) == pytest.approx(1, abs=1e-5)

            classes = client.post("/classify?k=10", files=upload).json()["classifications"][0]["predictions"]
            assert sorted(p["class_name"] for p in classes) == sorted(["checker", "diagonal", "horizontal",
                                                                       "vertical"])
            assert sum(p["probability"] for p in classes) == pytest.approx(1, abs=1e-5)

            hits = client.post("/search?k=5", files=upload).json()["results"][0]["neighbours"]
            assert hits[0]["id"] == f"train/checker/{query.name}" and hits[0]["score"] == pytest.approx(1, abs=1e-4)
            assert client.get(hits[0]["image_url"]).headers["content-type"] == "image/jpeg"

            too_many = client.post("/embed", files=[("images", query.read_bytes())] * 5)
            assert too_many.status_code == 413  # SIMCLR_MAX_IMAGES from the environment
            assert client.get("/healthz").status_code == 200
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(20)
        except subprocess.TimeoutExpired:
            server.kill()
        log.close()
    assert server.returncode == 0, (tmp_path / "server.log").read_text()
