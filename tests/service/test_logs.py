"""--log-format json: every line a JSON object, uvicorn's and the service's, in worker processes too, with the
X-Request-ID of the request a line is about; the default stays uvicorn's text."""

from __future__ import annotations

import json
import logging
import sys

import httpx2

from benchmarks.harness.load import Server
from service.logs import JsonFormatter


def test_a_service_with_workers_writes_json_lines_with_request_ids(bundle_dir, index_dir, tmp_path):
    log = tmp_path / "server.log"
    server = Server(bundle_dir, index_dir, log, flags={"log-format": "json", "workers": 2})
    server.start()
    try:
        server.wait_ready(180, streak=10)  # ten answers in a row: both workers loaded, not only the first
        assert httpx2.get(f"{server.url}/healthz", headers={"X-Request-ID": "trace-json"}).status_code == 200
        missing = httpx2.get(f"{server.url}/index/images/no-such-id")
        assert missing.status_code == 404
    finally:
        server.stop()
    lines = [json.loads(line) for line in log.read_text().splitlines()[1:] if line.strip()]  # [0]: the command
    access = {line.get("request_id"): line for line in lines if line["logger"] == "uvicorn.access"}
    assert access["trace-json"] | {"client": None, "time": None} == {
        "time": None, "level": "INFO", "logger": "uvicorn.access", "message": "GET /healthz 200", "client": None,
        "method": "GET", "path": "/healthz", "http_version": "1.1", "status": 200, "request_id": "trace-json"}
    assert access[missing.headers["x-request-id"]]["status"] == 404
    started = [line for line in lines if line["message"].startswith("Started server process")]
    assert len(started) == 2  # each worker's lines are JSON too (every line was parsed above)
    assert any(line["logger"] == "service" and line["message"].startswith("ready: ") for line in lines)


def test_a_traceback_is_one_field_of_its_line():
    try:
        raise RuntimeError("a bug")
    except RuntimeError:
        record = logging.LogRecord("service", logging.ERROR, __file__, 1, "unexpected error on %s", ("POST /embed",),
                                   sys.exc_info())
    line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "unexpected error on POST /embed" and line["level"] == "ERROR"
    assert line["exception"].startswith("Traceback") and "RuntimeError: a bug" in line["exception"]
    assert "request_id" not in line  # written outside a request
