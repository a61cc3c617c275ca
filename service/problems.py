"""Errors as RFC 9457 problem details (application/problem+json): every 4xx and 5xx the service sends.

Routes raise Problem(status, detail); FastAPI's validation errors, Starlette's HTTP errors (404, 405, bad
multipart) and anything unexpected are rendered the same way, so a client never sees an HTML page or a
traceback.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match
from starlette.types import Scope

from contract.bundle import describe
from service.batching import BatcherStopped, Overloaded
from service.index import IndexUnavailable, SearchIndexError
from service.request_ids import HEADER, request_id

MEDIA_TYPE = "application/problem+json"
# Each kind of problem has its own type URI, /problems/<kind> (GET it for the description), so that a client
# tells them apart without parsing the detail's English. Kinds by status where the raiser names none.
KINDS = {
    "bad-request": "the request is malformed at the HTTP level (Content-Length, multipart framing)",
    "unauthorized": "an API key is needed: send it as X-API-Key or Authorization: Bearer",
    "not-found": "no such route, or no indexed image with that id",
    "model-not-found": "the request (OpenAI-compatible /v1, or the Open Inference Protocol's /v2) names a model or "
                       "version this service does not serve",
    "method-not-allowed": "the route exists but not with this method (the Allow header lists those it takes)",
    "body-too-large": "the request body is larger than the service accepts (--max-request-bytes)",
    "too-many-images": "more images in one request than the service accepts (--max-images)",
    "image-too-large": "an image has more pixels than the service decodes (--max-image-pixels), or is a "
                       "decompression bomb",
    "unsupported-media-type": "the request's content type is neither multipart/form-data nor application/json",
    "unsupported-image-format": "an upload is not an image in a supported format (JPEG, PNG, GIF, BMP, WebP, "
                                "TIFF, PPM)",
    "invalid-image": "an upload is empty, truncated or corrupt",
    "invalid-request": "a parameter or the JSON body is not what the route takes (the detail says which)",
    "not-ready": "the model or the index is still loading or being built: retry after Retry-After seconds",
    "overloaded": "more requests than the service can answer in time: retry after Retry-After seconds",
    "shutting-down": "the service is stopping: retry after Retry-After seconds (another replica, or this one "
                     "once restarted)",
    "no-classifier": "the served bundle has no classifier (its run was not evaluated): /classify is not offered",
    "index-read-only": "the index is open read-only (memory-mapped, --index-mmap): it takes no additions or "
                       "deletions",
    "index-refused": "the index refuses the request as given (a cursor that is not one of its own, a change it "
                     "cannot make); the detail says why",
    "index-unavailable": "the index's backend (a Milvus server) does not answer: retry after Retry-After seconds",
    "search-off": "similar-image search is not offered by this service (no index, and none could be built)",
    "load-failed": "the service could not load its model bundle or index (the detail says why)",
    "internal-error": "an unexpected error; the server logged it",
}
_BY_STATUS = {400: "bad-request", 401: "unauthorized", 404: "not-found", 405: "method-not-allowed",
              413: "body-too-large", 415: "unsupported-media-type", 422: "invalid-request", 500: "internal-error",
              503: "not-ready"}
INDEX_RETRY_AFTER_S = 5  # a Milvus server restarting takes seconds
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
M = TypeVar("M", bound=BaseModel)
log = logging.getLogger("service")


class Problem(Exception):
    """An error answer: status, a human-readable detail, its kind (KINDS; default: by status), optional headers
    (Retry-After) and extension members."""

    def __init__(self, status: int, detail: str, kind: str | None = None, headers: dict[str, str] | None = None,
                 **extensions: Any):
        super().__init__(detail)
        self.status, self.detail, self.kind, self.headers, self.extensions = status, detail, kind, headers or {}, \
            extensions


def validated(model: type[M], body: bytes, expected: str, what: str = "JSON body") -> M:
    """body parsed and validated as model, or a 422 problem saying where it is wrong and what is expected."""
    try:
        return model.model_validate_json(body)
    except ValidationError as e:
        raise Problem(422, f"invalid {what}: {describe(e)} (expected {expected})") from None


def problem_response(status: int, detail: str, instance: str | None = None, kind: str | None = None,
                     root_path: str = "", **extensions: Any) -> JSONResponse:
    """The problem+json answer; instance is the request's path, root_path the prefix a proxy serves the API
    under (--root-path), which the type URI carries too so that it resolves to GET /problems/<kind>."""
    kind = kind or _BY_STATUS.get(status)
    body = {"type": f"{root_path}/problems/{kind}" if kind else "about:blank", "title": HTTPStatus(status).phrase,
            "status": status, "detail": detail, **({"instance": instance} if instance else {}), **extensions}
    route = (instance or "").removeprefix(root_path)
    if route.startswith("/v1/"):  # OpenAI's clients read their message from an "error" member
        body["error"] = {"message": detail, "type": "invalid_request_error" if status < 500 else "server_error",
                         "code": extensions.get("code")}
    elif route == "/v2" or route.startswith("/v2/"):  # the Open Inference Protocol's member
        body["error"] = detail
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE)


def scope_problem(status: int, detail: str, scope: Scope, kind: str | None = None, **extensions: Any) -> JSONResponse:
    """problem_response for the request whose ASGI scope (or Starlette request.scope) this is, with its id."""
    root = scope.get("root_path", "")
    path = root + scope.get("path", "").removeprefix(root)  # uvicorn's path holds the root path, TestClient's not
    rid = request_id(scope)
    response = problem_response(status, detail, path, kind, root, **({"request_id": rid} if rid else {}),
                                **extensions)
    if rid:
        response.headers[HEADER] = rid
    return response


def overloaded_response(exc: Overloaded, scope: Scope) -> JSONResponse:
    response = scope_problem(503, f"{exc}: retry after {exc.retry_after_s:.0f} s", scope, "overloaded")
    response.headers["Retry-After"] = str(max(1, round(exc.retry_after_s)))
    return response


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem+json answer."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        response = scope_problem(exc.status, exc.detail, request.scope, exc.kind, **exc.extensions)
        response.headers.update(exc.headers)
        return response

    @app.exception_handler(BatcherStopped)
    async def _stopping(request: Request, exc: BatcherStopped) -> JSONResponse:
        response = scope_problem(503, f"{exc}: retry shortly", request.scope, "shutting-down")
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        return overloaded_response(exc, request.scope)

    @app.exception_handler(SearchIndexError)
    async def _refused(request: Request, exc: SearchIndexError) -> JSONResponse:
        if isinstance(exc, IndexUnavailable):
            log.warning("index backend: %s (request %s)", exc, request_id(request.scope))
            response = scope_problem(503, f"{exc}: retry shortly", request.scope, "index-unavailable")
            response.headers["Retry-After"] = str(INDEX_RETRY_AFTER_S)
            return response
        return scope_problem(422, str(exc), request.scope, "index-refused")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return scope_problem(422, f"invalid request: {detail}", request.scope, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail != HTTPStatus(exc.status_code).phrase \
            else f"{request.method} {request.url.path}: {HTTPStatus(exc.status_code).phrase.lower()}"
        response = scope_problem(exc.status_code, detail, request.scope)
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:
            response.headers["Allow"] = _allowed_methods(request)
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s (request %s)", request.method, request.url.path,
                      request_id(request.scope))
        return scope_problem(500, "internal error: the server logged it", request.scope)


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path. Starlette's own Allow header names only the first route's
    (POST for /search, though GET /search exists too). Each method is tried against the routes, which works
    however routers are nested."""
    routes = request.app.router.routes
    allowed = [method for method in METHODS
               if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)]
    return ", ".join(allowed)
