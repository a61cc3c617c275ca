"""Property-based fuzzing of the HTTP API from its own OpenAPI schema (schemathesis): every operation, valid and
malformed parameters and bodies; no answer may be a 5xx, and every answer must conform to the schema (status
code, content type, headers, body). The long run is benchmarks/fuzz.py."""

from __future__ import annotations

import pytest
import schemathesis
from fuzzing import EXCLUDED_CHECKS, load_schema
from hypothesis import HealthCheck, settings

from service.app import create_app
from service.settings import Settings


@pytest.fixture(scope="module")
def api_schema(bundle_dir, index_dir) -> schemathesis.BaseSchema:
    return load_schema(create_app(Settings(bundle=bundle_dir, index=index_dir, max_images=4,
                                           max_request_bytes=200_000, max_image_pixels=1_000_000, torch_threads=2)))


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(max_examples=30, derandomize=True, database=None, deadline=None, suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_schema(case):
    case.call_and_validate(excluded_checks=EXCLUDED_CHECKS)


def test_405_names_every_method_the_path_serves(client):
    # Starlette names only the first route's methods; GET and POST /search are two routes.
    response = client.delete("/search")
    assert response.status_code == 405
    assert response.headers["allow"] == "GET, POST"
    assert client.put("/images/0").headers["allow"] == "GET"
