"""Limits applied before a request reaches its route: the body size, which neither uvicorn nor Starlette
enforces (Content-Length is checked before anything is read, and streamed bytes are counted as they arrive: a
chunked upload declares no length), and admission while the model is overloaded."""

from __future__ import annotations

from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.batching import Overloaded
from service.dependencies import model_marker
from service.problems import overloaded_response, scope_problem
from service.state import ServiceState


class BodyLimit:
    """ASGI middleware: 413 for request bodies over max_bytes, 400 for a malformed Content-Length."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None:
            if not declared.isdigit():
                return await scope_problem(400, f"Content-Length {declared.decode(errors='replace')!r} is not "
                                           f"a number", scope)(scope, receive, send)
            if int(declared) > self.max_bytes:
                return await self._too_large(scope, int(declared))(scope, receive, send)
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # raised inside the route reading the body, whose handler answers 413: an
                # HTTPException, the one error FastAPI lets through when it parses a body itself (others are 400s)
                raise HTTPException(413, self._detail(f"at least {seen}"))
            return message

        await self.app(scope, counting_receive, send)

    def _detail(self, size: str) -> str:
        return f"the request body ({size} bytes) is over the limit of {self.max_bytes} bytes"

    def _too_large(self, scope: Scope, size: int):
        return scope_problem(413, self._detail(str(size)), scope)


class Admission:
    """ASGI middleware: while the model's queue is full (or would take longer than a request may wait), a request
    for the model (a route marked service.dependencies.TO_MODEL) gets its 503 before routing, dependencies or
    reading its body: the cheapest refusal there is, so that on a busy core the event loop keeps up with several
    times what the model can answer."""

    def __init__(self, app: ASGIApp, state: ServiceState, routes: list[APIRoute]):
        self.app, self.state = app, state
        self.routes = [(route, marker) for route in routes if (marker := model_marker(route)) is not None]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        batcher = self.state.batcher
        if scope["type"] == "http" and scope["method"] == "POST" and batcher is not None:
            upload = dict(scope["headers"]).get(b"content-type", b"").startswith(b"multipart/")
            if any(route.matches(scope)[0] == Match.FULL and (upload or not marker.uploads_only)
                   for route, marker in self.routes):
                try:
                    batcher.check_capacity()
                except Overloaded as e:
                    return await overloaded_response(e, scope)(scope, receive, send)
        await self.app(scope, receive, send)
