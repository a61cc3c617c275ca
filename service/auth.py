"""The optional API key: when settings.api_key is set, every request but the health, readiness and metrics
probes must carry it, as `X-API-Key: KEY` or `Authorization: Bearer KEY`; otherwise a 401 problem.

The check is ASGI middleware, so a refused request is answered before its body is read.
"""

from __future__ import annotations

import hmac

from starlette.routing import get_route_path
from starlette.types import ASGIApp, Receive, Scope, Send

from service.problems import scope_problem

# Probes stay open: orchestrators and Prometheus scrape them without credentials, and they reveal no data. So
# does the demo page (/ and its /static files): it asks for the key, and everything it fetches carries it.
OPEN_PATHS = frozenset({"/healthz", "/readyz", "/metrics", "/", "/v2/health/live", "/v2/health/ready"})
OPEN_PREFIXES = ("/static/",)


class ApiKey:
    """ASGI middleware: 401 unless the request carries the key (or its path is in OPEN_PATHS)."""

    def __init__(self, app: ASGIApp, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or _open(scope) or self._presented(scope):
            return await self.app(scope, receive, send)
        response = scope_problem(401, "this service needs an API key: send it as the X-API-Key header or as "
                                 "Authorization: Bearer KEY", scope)
        response.headers["WWW-Authenticate"] = "Bearer"
        await response(scope, receive, send)

    def _presented(self, scope: Scope) -> bool:
        headers = dict(scope["headers"])
        return carries_key(headers.get(b"x-api-key"), headers.get(b"authorization"), self.key)


def _open(scope: Scope) -> bool:
    path = get_route_path(scope) or "/"  # the route's own: behind --root-path, uvicorn's path holds the prefix
    return path in OPEN_PATHS or path.startswith(OPEN_PREFIXES)


def carries_key(x_api_key: bytes | None, authorization: bytes | None, key: bytes) -> bool:
    """Whether a request's X-API-Key, or else its Authorization: Bearer, is the key (HTTP headers, gRPC metadata)."""
    candidate = x_api_key
    if candidate is None:
        scheme, _, token = (authorization or b"").partition(b" ")
        candidate = token.strip() if scheme.lower() == b"bearer" else b""
    # Constant time: how long a wrong key takes to refuse must not tell how much of it was right.
    return hmac.compare_digest(candidate, key)
