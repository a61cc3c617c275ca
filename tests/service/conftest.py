"""Fixtures: a run, its bundle, an image folder and its index, and a test client serving them (session- or
module-scoped: they cost seconds on CPU)."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx2
import pytest
from factories import colour_images, make_run, wait_ready, write_folder
from fastapi.testclient import TestClient

from benchmarks.harness.load import MilvusLite, Server, free_port
from service.app import create_app
from service.build_index import BuildOptions, build
from service.settings import Settings
from trainer.export import export
from trainer.models import SimCLR

# The tests compare scores and vectors exactly, so every service they start (in process or not) runs torch in
# fp32, whatever this CPU's bf16 speed; tests/service/test_model.py covers the other runtimes and the choice.
os.environ["SIMCLR_RUNTIME"] = "torch-fp32"


@pytest.fixture(scope="session")
def run_and_model(tmp_path_factory) -> tuple[Path, SimCLR]:
    return make_run(tmp_path_factory.mktemp("run") / "run")


@pytest.fixture(scope="session")
def bundle_dir(run_and_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "bundle"
    export(run_and_model[0], out)
    return out


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("images") / "colours"
    write_folder(root, "train", *colour_images(6, seed=0))
    write_folder(root, "test", *colour_images(2, seed=1))
    return root


@pytest.fixture(scope="session")
def index_dir(bundle_dir, image_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("index") / "index"
    build(str(bundle_dir), [str(image_folder)], str(out), BuildOptions(runtime="torch-fp32"))
    return out


KEY = "sk-test-key"


@pytest.fixture(scope="session")
def live_server(bundle_dir, index_dir, tmp_path_factory) -> Server:
    """`python -m service` over real HTTP and gRPC (server.grpc_address), with the API key KEY, for clients that
    bring their own connection, serving a copy of the index (clients may change it)."""
    root = tmp_path_factory.mktemp("live")
    shutil.copytree(index_dir, root / "index")
    server = Server(bundle_dir, root / "index", root / "server.log", flags={"api-key": KEY, "grpc-port": free_port()})
    server.start()
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def http(live_server):
    """An HTTP client of live_server that sends the key."""
    with httpx2.Client(base_url=live_server.url, headers={"X-API-Key": KEY}, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def model_name(http) -> str:
    return http.get("/version").json()["model"]


@pytest.fixture(scope="module")
def index_copy(index_dir, tmp_path_factory) -> Path:
    """A copy of the index for a module whose requests may change it (index_dir itself stays as built)."""
    copy = tmp_path_factory.mktemp("index-copy") / "index"
    shutil.copytree(index_dir, copy)
    return copy


@pytest.fixture(scope="module")
def client(bundle_dir, index_copy):
    settings = Settings(bundle=bundle_dir, index=index_copy, max_images=8, max_request_bytes=200_000,
                        max_image_pixels=1_000_000, torch_threads=2)
    with TestClient(create_app(settings)) as client:
        assert wait_ready(client)["ready"]
        yield client


@pytest.fixture(scope="module", params=["local", "milvus"])
def index_client(request, bundle_dir, index_copy, image_folder, tmp_path_factory):
    """A test client of the service on each backend, for a module's requests to the index (they may change it): a
    copy of the index (local), or a Milvus Lite collection the service makes and fills from the same images."""
    where = {"index": index_copy} if request.param == "local" else {
        "index_uri": f"milvus-lite:{tmp_path_factory.mktemp('milvus')}", "data_dir": image_folder,
        "index_root": tmp_path_factory.mktemp("locks")}
    settings = Settings(bundle=bundle_dir, max_images=8, max_request_bytes=200_000, max_image_pixels=1_000_000,
                        torch_threads=2, **where)
    with TestClient(create_app(settings)) as client:
        assert wait_ready(client)["ready"]
        # One answer per look: asked twice, the index could be ready between the two (it failed so in CI).
        while (search := client.get("/readyz").json()["search"]) != "ready":
            assert search in ("loading", "building"), search
            time.sleep(0.05)
        yield client


@pytest.fixture(params=["local", "milvus"])
def served_index(request, index_dir, tmp_path) -> dict:
    """Where `python -m service` processes keep a test's index, as Server's arguments: a copy of index_dir (a
    folder), or an empty collection on a Milvus Lite server of its own (a process: it outlives the services)."""
    if request.param == "local":
        shutil.copytree(index_dir, tmp_path / "index")
        yield {"index": tmp_path / "index", "flags": {}}
        return
    milvus = MilvusLite(tmp_path / "milvus", tmp_path / "milvus.log")
    milvus.start()
    try:
        yield {"index": None, "flags": {"index-uri": milvus.uri, "index-root": tmp_path / "locks"}}
    finally:
        milvus.stop()
