from __future__ import annotations

from pathlib import PurePath
from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from service.dependencies import Ready, get_state
from service.problems import KINDS, Problem
from service.routes import NOT_FOUND, describe_index
from service.schemas import (CalibrationSummary, Evaluation, FamiliaritySummary, Health, ProblemType, Readiness,
                             RuntimeCheckSummary, TrainingSummary, Version)
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
    """Prometheus metrics: requests by route and status, latencies, batch sizes, queue depth, inference time, the
    model served (simclr_model_info) and the index's size."""
    return Response(state.metrics.exposition(), media_type=CONTENT_TYPE_LATEST)


@router.get("/version", response_model=Version)
async def version(state: Ready) -> Version:
    """The served model (name, fingerprint, runtime, architecture, classes, evaluation) and index."""
    bundle, index = state.model.bundle, state.index
    manifest, arch = bundle.manifest, bundle.manifest.architecture
    metrics = manifest.metrics
    return Version(
        model=bundle.name, bundle_fingerprint=bundle.fingerprint, runtime=state.model.runtime,
        backbone=arch.backbone, representation_dim=arch.representation_dim, projection_dim=arch.projection.out_dim,
        input_size=manifest.input.size, classes=manifest.classes, classifier=bundle.classifier is not None,
        checkpoint_epoch=manifest.training.checkpoint_epoch,
        training=TrainingSummary.model_validate(manifest.training, from_attributes=True),
        evaluation=Evaluation(protocol=metrics.protocol.name, top1=metrics.top1, top3=metrics.top3,
                              data=metrics.protocol.data_name or PurePath(metrics.protocol.data_dir).name,
                              top5=metrics.top5, knn_top1=metrics.knn_top1,
                              runtime_checks=[RuntimeCheckSummary(**c.model_dump(), passed=c.passed)
                                              for c in manifest.runtime_checks],
                              calibration=CalibrationSummary.model_validate(metrics.calibration, from_attributes=True)
                              if metrics.calibration else None) if metrics else None,
        familiarity=FamiliaritySummary.model_validate(manifest.familiarity, from_attributes=True)
        if manifest.familiarity else None,
        index=await state.run_search(describe_index, index) if index else None)


@router.get("/problems/{kind}", response_model=ProblemType, responses=NOT_FOUND)
def problem_type(kind: str, request: Request) -> ProblemType:
    """What a problem's type URI (/problems/<kind>, under the service's root path) means."""
    if kind not in KINDS:
        raise Problem(404, f"no problem type {kind!r}: the types are {', '.join(KINDS)}")
    return ProblemType(type=f"{request.scope.get('root_path', '')}/problems/{kind}", kind=kind,
                       description=KINDS[kind])
