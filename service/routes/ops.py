from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.dependencies import Ready, get_state
from service.schemas import Health, Readiness
from service.state import ServiceState

router = APIRouter(tags=["operations"])
State = Annotated[ServiceState, Depends(get_state)]


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """The process is up and answering (the model may still be loading)."""
    return Health(status="ok")


@router.get("/readyz", response_model=Readiness, responses={503: {"model": Readiness}})
def readyz(state: State) -> JSONResponse:
    """200 once the bundle (and the index, when --index names one) are loaded, 503 until then; `search` says
    whether similar-image search is ready, still building its index, or off and why."""
    body = Readiness(ready=state.ready, bundle=state.model is not None, index=state.index is not None,
                     search=state.search, search_detail=state.search_detail, error=state.error)
    return JSONResponse(body.model_dump(), status_code=200 if state.ready else 503)


@router.get("/metrics", response_class=Response)
def metrics(state: State) -> Response:
    """Prometheus metrics: requests by route and status, latencies, batch sizes, queue depth, inference time."""
    return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get("/version")
def version(state: Ready) -> dict[str, Any]:
    """The served bundle's manifest, its fingerprint (sha256 of manifest.json) and the index's description."""
    return {"model": state.model.bundle.name, "bundle_fingerprint": state.model.bundle.fingerprint,
            "runtime": state.model.runtime,
            "manifest": state.model.bundle.manifest.model_dump(mode="json", by_alias=True),
            "index": state.index.info if state.index else None}
