"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis): every operation, valid and
malformed parameters and bodies; no answer may be a 5xx, and every answer must conform to the schema (status
code, content type, headers, body). The long run is `python -m benchmarks.fuzz`."""

from __future__ import annotations

from collections import Counter

import pytest
from schemathesis import GenerationMode

from benchmarks.harness.fuzzing import fuzz_operation, load_schema
from service.app import create_app
from service.settings import Settings


@pytest.fixture(scope="module")
def api_schema(bundle_dir, index_copy):
    return load_schema(create_app(Settings(bundle=bundle_dir, index=index_copy, max_images=4,
                                           max_request_bytes=200_000, max_image_pixels=1_000_000, torch_threads=2)))


@pytest.mark.parametrize("mode", list(GenerationMode), ids=lambda mode: mode.value)
def test_api_conforms_to_its_schema(api_schema, mode):
    statuses: Counter[str] = Counter()
    failures: dict[tuple[str, str], str] = {}
    operations = [result.ok() for result in api_schema.get_all_operations()]
    tried = sum(fuzz_operation(operation, mode, budget=30, seed=0, statuses=statuses, failures=failures)
                for operation in operations)
    assert tried >= len(operations)  # every operation was exercised at least once
    assert not failures, "\n".join(f"{label}: {title}\n  {curl}" for (label, title), curl in failures.items())
    assert "5xx" not in statuses


def test_405_names_every_method_the_path_serves(client):
    # Starlette names only the first route's methods; GET and POST /search are two routes.
    response = client.delete("/search")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    assert client.put("/thumbnails/0").headers["allow"] == "GET"
    assert client.put("/index/images/a/b.png").headers["allow"] == "GET, PATCH, DELETE"
