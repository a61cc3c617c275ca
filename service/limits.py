"""The request body limit, which neither uvicorn nor Starlette enforces: Content-Length is checked before
anything is read, and streamed bytes are counted as they arrive (a chunked upload declares no length)."""

from __future__ import annotations

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.problems import Problem, problem_response


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
                return await problem_response(400, f"Content-Length {declared.decode(errors='replace')!r} is not "
                                              f"a number", scope["path"])(scope, receive, send)
            if int(declared) > self.max_bytes:
                return await self._too_large(scope, int(declared))(scope, receive, send)
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # raised inside the route reading the body; its handler answers 413
                raise Problem(413, self._detail(f"at least {seen}"))
            return message

        await self.app(scope, counting_receive, send)

    def _detail(self, size: str) -> str:
        return f"the request body ({size} bytes) is over the limit of {self.max_bytes} bytes"

    def _too_large(self, scope: Scope, size: int):
        return problem_response(413, self._detail(str(size)), scope["path"])
