"""Request ids: every HTTP answer carries X-Request-ID, the caller's own when it sends a usable one (a proxy's or
load balancer's: nginx's $request_id, Envoy's x-request-id) and a new one otherwise; a problem's body carries it
as `request_id`, and the log lines about a request name it, so that a failed call can be found in the log."""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

HEADER = "X-Request-ID"
# What is taken from a caller: nothing that could forge a log line, break a header or fill the log.
_USABLE = re.compile(rb"[A-Za-z0-9._:/+=@-]{1,128}")
# The id for log lines (service.logs): each request is answered in a task of its own, whose context this is.
_current: ContextVar[str | None] = ContextVar("request_id", default=None)


def current_request_id() -> str | None:
    """The id of the request being answered in this task, if any."""
    return _current.get()


def request_id(scope: Scope) -> str | None:
    """The id of the request whose ASGI scope (or Starlette request.scope) this is; None outside RequestIds."""
    return scope.get("state", {}).get("request_id")


class RequestIds:
    """ASGI middleware: the request's id in its scope (request.state.request_id) and in its answer's headers."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        given = dict(scope["headers"]).get(HEADER.lower().encode())
        rid = given.decode() if given is not None and _USABLE.fullmatch(given) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid  # a copy per request, as servers make it
        _current.set(rid)  # never reset: the 500 and uvicorn's access line come after this middleware returns

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                if HEADER not in headers:  # problems set it themselves (a 500 is sent from outside this middleware)
                    headers.append(HEADER, rid)
            await send(message)

        await self.app(scope, receive, send_with_id)
