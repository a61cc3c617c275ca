"""FastAPI dependencies: the shared objects routes need, or a 503 problem while they are not loaded.

They are coroutines because they never block: FastAPI runs a plain `def` dependency in a worker thread, a hop
per dependency per request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from fastapi.routing import APIRoute

from service import indexes
from service.problems import Problem
from service.state import ServiceState

RETRY_AFTER_S = 10  # a CIFAR-10 index takes minutes to build: polling more often than this gains nothing


async def get_state(request: Request) -> ServiceState:
    return request.app.state.service


async def get_ready(state: Annotated[ServiceState, Depends(get_state)]) -> ServiceState:
    """The state, once bundle and index are loaded."""
    if state.error:  # it will not clear: not a 503, which says "retry"
        raise Problem(500, f"the service could not load its model: {state.error}", "load-failed")
    if not state.ready:
        raise Problem(503, "the model is still loading: retry shortly (GET /readyz says when it is ready)",
                      "not-ready", headers={"Retry-After": "2"})
    return state


async def get_index(state: Annotated[ServiceState, Depends(get_ready)]) -> indexes.Index:
    if state.index is not None:
        return state.index
    if state.search in ("loading", "building"):
        raise Problem(503, f"similar-image search is not ready yet: {state.search_detail or 'the index is loading'}; "
                      f"retry later (GET /readyz says when)", "not-ready",
                      headers={"Retry-After": str(RETRY_AFTER_S)})
    raise Problem(501, f"similar-image search is off: {state.search_detail} (start the service with --index, "
                  f"or with --data-dir to build one)", "search-off")


Ready = Annotated[ServiceState, Depends(get_ready)]
Index = Annotated[indexes.Index, Depends(get_index)]


class ToModel:
    """Marks a route whose requests go to the model (`dependencies=[TO_MODEL]`): service.limits.Admission
    refuses them while the model is overloaded, before they are read, and service.openapi documents that 503.
    uploads_only: only its multipart requests (POST /search's JSON may carry vectors, which need no model)."""

    def __init__(self, uploads_only: bool = False):
        self.uploads_only = uploads_only

    async def __call__(self) -> None:
        return None


TO_MODEL, UPLOADS_TO_MODEL = Depends(ToModel()), Depends(ToModel(uploads_only=True))


def model_marker(route: APIRoute) -> ToModel | None:
    """The route's ToModel marker, if it has one."""
    return next((d.call for d in route.dependant.dependencies if isinstance(d.call, ToModel)), None)
