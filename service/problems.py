"""Errors as RFC 9457 problem details (application/problem+json): every 4xx and 5xx the service sends.

Routes raise Problem(status, detail); FastAPI's validation errors, Starlette's HTTP errors (404, 405, bad
multipart) and anything unexpected are rendered the same way, so a client never sees an HTML page or a
traceback.
"""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.batching import BatcherStopped

MEDIA_TYPE = "application/problem+json"
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
log = logging.getLogger("service")


class Problem(Exception):
    """An error answer: status, a human-readable detail, optional headers (Retry-After) and extension members."""

    def __init__(self, status: int, detail: str, headers: dict[str, str] | None = None, **extensions: Any):
        super().__init__(detail)
        self.status, self.detail, self.headers, self.extensions = status, detail, headers or {}, extensions


def problem_response(status: int, detail: str, instance: str | None = None, **extensions: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": HTTPStatus(status).phrase, "status": status, "detail": detail,
            **({"instance": instance} if instance else {}), **extensions}
    if instance and instance.startswith("/v1/"):  # OpenAI's clients read their message from an "error" member
        body["error"] = {"message": detail, "type": "invalid_request_error" if status < 500 else "server_error",
                         "code": extensions.get("code")}
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE)


def install(app: FastAPI) -> None:
    """Register the handlers that turn every error into a problem+json answer."""

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem) -> JSONResponse:
        response = problem_response(exc.status, exc.detail, request.url.path, **exc.extensions)
        response.headers.update(exc.headers)
        return response

    @app.exception_handler(BatcherStopped)
    async def _stopping(request: Request, exc: BatcherStopped) -> JSONResponse:
        return problem_response(503, f"{exc}: retry shortly", request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = [{"loc": list(e["loc"]), "msg": e["msg"]} for e in exc.errors()]
        detail = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in errors)
        return problem_response(422, f"invalid request: {detail}", request.url.path, errors=errors)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail if isinstance(exc.detail, str) and exc.detail != HTTPStatus(exc.status_code).phrase \
            else f"{request.method} {request.url.path}: {HTTPStatus(exc.status_code).phrase.lower()}"
        response = problem_response(exc.status_code, detail, request.url.path)
        response.headers.update(exc.headers or {})
        if exc.status_code == 405:
            response.headers["Allow"] = _allowed_methods(request)
        return response

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s %s", request.method, request.url.path)
        return problem_response(500, "internal error: the server logged it", request.url.path)


def _allowed_methods(request: Request) -> str:
    """Every method some route serves at this path. Starlette's own Allow header names only the first route's
    (POST for /search, though GET /search exists too). Each method is tried against the routes, which works
    however routers are nested."""
    routes = request.app.router.routes
    allowed = [method for method in METHODS
               if any(route.matches({**request.scope, "method": method})[0] == Match.FULL for route in routes)]
    return ", ".join(allowed)
