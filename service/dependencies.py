"""FastAPI dependencies: the shared objects routes need, or a 503 problem while they are not loaded.

They are coroutines because they never block: FastAPI runs a plain `def` dependency in a worker thread, a hop
per dependency per request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from service.index import SearchIndex
from service.problems import Problem
from service.state import ServiceState


async def get_state(request: Request) -> ServiceState:
    return request.app.state.service


async def get_ready(state: Annotated[ServiceState, Depends(get_state)]) -> ServiceState:
    """The state, once bundle and index are loaded."""
    if state.error:
        raise Problem(503, f"the service could not load its model: {state.error}")
    if not state.ready:
        raise Problem(503, "the model is still loading: retry shortly (GET /readyz says when it is ready)")
    return state


async def get_index(state: Annotated[ServiceState, Depends(get_ready)]) -> SearchIndex:
    if state.index is None:
        raise Problem(503, "no similar-image index is loaded: start the service with --index "
                      "(build one with python -m service.build_index)")
    return state.index


Ready = Annotated[ServiceState, Depends(get_ready)]
Index = Annotated[SearchIndex, Depends(get_index)]
