"""The OpenAPI document (service.openapi): every error documented as a problem, the answers each kind of route
gives, the API key's schemes only when a key is set, an example for every JSON body."""

from __future__ import annotations

import pytest

from service.app import create_app
from service.settings import Settings

PROBLEM = {"application/problem+json": {"schema": {"$ref": "#/components/schemas/ProblemDetail"}}}


def document(api_key: str | None = None) -> dict:
    return create_app(Settings(data_dir=None, api_key=api_key)).openapi()


def operations(spec: dict):
    for path, methods in spec["paths"].items():
        for method, operation in methods.items():
            yield f"{method.upper()} {path}", operation


@pytest.fixture(scope="module")
def spec() -> dict:
    return document()


def test_every_error_is_a_problem_and_a_503_says_when_to_retry(spec):
    own_models = {"GET /readyz", "GET /v2/health/ready"}  # readiness answers its own body while loading
    for name, operation in operations(spec):
        for status, response in operation["responses"].items():
            if int(status) < 400 or name in own_models:
                continue
            assert response["content"] == PROBLEM, (name, status)
            if status == "503":
                assert "Retry-After" in response["headers"], name
    assert "HTTPValidationError" not in spec["components"]["schemas"]  # FastAPI's 422 body is never sent


@pytest.mark.parametrize("operation, expected, absent", [
    ("POST /classify", {"400", "413", "415", "422", "500", "503"}, {"401", "501"}),
    ("POST /index/images", {"409", "413", "415", "501", "503"}, set()),
    ("GET /index", {"500", "501", "503"}, {"413", "415", "422"}),
    ("GET /index/images/{id}", {"404", "422", "501"}, {"413", "415"}),
    ("GET /v1/models", {"500", "503"}, {"501", "413"}),
    ("GET /healthz", set(), {"500", "503"}),
])
def test_each_route_documents_the_answers_of_its_kind(spec, operation, expected, absent):
    documented = set(dict(operations(spec))[operation]["responses"])
    assert expected <= documented and not absent & documented, documented


def test_the_key_is_declared_only_when_one_is_set(spec):
    assert "securitySchemes" not in spec["components"] and "security" not in spec
    assert all("401" not in operation["responses"] for _, operation in operations(spec))
    keyed = document(api_key="k")
    assert set(keyed["components"]["securitySchemes"]) == {"APIKeyHeader", "HTTPBearer"}
    assert keyed["components"]["securitySchemes"]["APIKeyHeader"]["name"] == "X-API-Key"
    for name, operation in operations(keyed):
        probe = name in {"GET /healthz", "GET /readyz", "GET /metrics", "GET /v2/health/live", "GET /v2/health/ready"}
        assert (operation.get("security") == []) == probe, name
        assert ("401" in operation["responses"]) != probe, name


def test_every_json_body_has_an_example(spec):
    schemas = spec["components"]["schemas"]
    for name, operation in operations(spec):
        body = operation.get("requestBody", {}).get("content", {}).get("application/json")
        if body is None:
            continue
        schema = body["schema"]
        schema = schemas[schema["$ref"].rsplit("/", 1)[1]] if "$ref" in schema else schema
        assert schema.get("examples"), name
    assert "$defs" not in str(spec)  # nested models lifted into the components, where generators look
