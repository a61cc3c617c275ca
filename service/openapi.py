"""The OpenAPI document, amended to say what the service really answers, so that generated clients can trust it.

FastAPI documents what routes declare. The answers every route of a kind gives come from elsewhere (the
readiness and index dependencies, the body limit, admission control, the API key), so they are derived here
from each route's dependencies and method rather than declared by hand at each route; every error is documented
once, as application/problem+json with the ProblemDetail schema (FastAPI would put it under application/json);
Retry-After and WWW-Authenticate are documented where they are sent; the API key's security schemes are declared
when a key is set; request-body schemas pulled from pydantic get their $defs lifted into the components.
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute

from service.auth import OPEN_PATHS
from service.dependencies import get_index, get_ready, model_marker
from service.schemas import ProblemDetail
from service.uploads import read_images

PROBLEM = "#/components/schemas/ProblemDetail"
# What each status means here, with the problem types (/problems/<kind>) it comes as.
MEANING = {
    400: "the request is malformed at the HTTP level (bad-request)",
    401: "no valid API key (unauthorized): send it as X-API-Key or Authorization: Bearer",
    404: "no such image, model or problem type (not-found, model-not-found)",
    409: "the index is open read-only (index-read-only)",
    413: "the body, an image or the number of images is over the service's limits (body-too-large, "
         "too-many-images, image-too-large)",
    415: "neither multipart/form-data nor application/json, or an upload in no supported image format "
         "(unsupported-media-type, unsupported-image-format)",
    422: "a parameter, the body or an image is not what the route takes (invalid-request, invalid-image)",
    500: "the model could not be loaded (load-failed), or an unexpected error (internal-error)",
    501: "similar-image search is off (search-off)",
    503: "still loading, overloaded or stopping: retry after Retry-After seconds (not-ready, overloaded, "
         "shutting-down)",
}
RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
SECURITY = {"APIKeyHeader": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
            "HTTPBearer": {"type": "http", "scheme": "bearer", "description": "the same key as a bearer token"}}


def install(app: FastAPI, routers: tuple[APIRouter, ...], api_key: bool) -> None:
    """Make app.openapi() return the amended document (built once, on the first request for it). The routers are
    the ones the app includes, without a prefix: their routes are the app's (however FastAPI nests them)."""
    build = app.openapi
    routes = [r for r in api_routes(routers) if r.include_in_schema]

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            amend(build(), routes, api_key)  # build() caches the document in app.openapi_schema
        return app.openapi_schema

    app.openapi = openapi


def api_routes(routers: tuple[APIRouter, ...]) -> list[APIRoute]:
    """The routers' API routes, as the app serves them (included without a prefix)."""
    return [route for router in routers for route in router.routes if isinstance(route, APIRoute)]


def amend(spec: dict[str, Any], routes: list[APIRoute], api_key: bool) -> None:
    components = spec.setdefault("components", {})
    schemas = components.setdefault("schemas", {})
    schemas.setdefault("ProblemDetail", ProblemDetail.model_json_schema(ref_template="#/components/schemas/{model}"))
    for route in routes:
        for method in route.methods:
            operation = spec["paths"][route.path_format][method.lower()]
            statuses = _derived_statuses(route, method, api_key)
            for status in statuses:
                operation["responses"].setdefault(str(status), {})
            for status, response in operation["responses"].items():
                if int(status) >= 400 and not _documents_own_body(response):
                    _as_problem(int(status), response)
            if api_key and route.path_format in OPEN_PATHS:
                operation["security"] = []  # the probes stay open (service.auth)
            body = operation.get("requestBody", {}).get("content", {})
            for media in body.values():
                if "schema" in media:
                    media["schema"] = _lift_defs(media["schema"], schemas)
    for name in ("HTTPValidationError", "ValidationError"):  # FastAPI's 422 schemas, replaced by ProblemDetail
        schemas.pop(name, None)
    if api_key:
        components["securitySchemes"] = SECURITY
        spec["security"] = [{name: []} for name in SECURITY]


def _derived_statuses(route: APIRoute, method: str, api_key: bool) -> set[int]:
    calls = _dependency_calls(route.dependant)
    statuses = set()
    if get_ready in calls:
        statuses |= {500, 503}
    if get_index in calls:
        statuses.add(501)
    if method in ("POST", "PUT", "PATCH"):  # the body limit and malformed bodies
        statuses |= {400, 413, 422}
    if read_images in calls or model_marker(route) is not None:
        statuses |= {413, 415, 503}  # images, and admission control
    if route.dependant.path_params or route.dependant.query_params:
        statuses.add(422)
    if api_key and route.path_format not in OPEN_PATHS:
        statuses.add(401)
    return statuses


def _dependency_calls(dependant: Any) -> set[Callable]:
    calls = set()
    for sub in dependant.dependencies:
        calls.add(sub.call)
        calls |= _dependency_calls(sub)
    return calls


def _documents_own_body(response: dict[str, Any]) -> bool:
    """A route's own model for an error status (readiness's 503 answers Readiness, not a problem)."""
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    return bool(schema) and schema.get("$ref") not in (PROBLEM, "#/components/schemas/HTTPValidationError")


def _as_problem(status: int, response: dict[str, Any]) -> None:
    response["description"] = MEANING.get(status, HTTPStatus(status).phrase)
    response["content"] = {"application/problem+json": {"schema": {"$ref": PROBLEM}}}
    if status == 503:
        response["headers"] = RETRY_AFTER
    if status == 401:
        response["headers"] = {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}}


def _lift_defs(schema: dict[str, Any], schemas: dict[str, Any]) -> dict[str, Any]:
    """A pydantic schema's nested models ($defs) moved into the components, its references rewritten."""
    for name, definition in schema.pop("$defs", {}).items():
        schemas.setdefault(name, _rewrite_refs(definition))
    return _rewrite_refs(schema)


def _rewrite_refs(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: v.replace("#/$defs/", "#/components/schemas/") if k == "$ref" and isinstance(v, str)
                else _rewrite_refs(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rewrite_refs(v) for v in value]
    return value
