from __future__ import annotations

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Query

from service.dependencies import Index, Ready
from service.index import Hit, SearchIndex
from service.problems import Problem
from service.routes import NOT_FOUND, PROBLEMS
from service.schemas import MAX_SEARCH_K, Neighbour, SearchResponse, SearchResult
from service.uploads import OPENAPI_BODY, Images

router = APIRouter(tags=["search"])
K = Annotated[int, Query(ge=1, le=MAX_SEARCH_K, description="neighbours per query")]
ClassName = Annotated[str | None, Query(description="only images of this class")]


@router.post("/search", response_model=SearchResponse, responses=PROBLEMS, openapi_extra=OPENAPI_BODY)
async def search_images(images: Images, state: Ready, index: Index, k: K = 10,
                        class_name: ClassName = None) -> SearchResponse:
    """Per query image the k most similar indexed images, best first."""
    _check_class(index, class_name)
    out = await state.batcher.submit(images)
    queries = out.unit.numpy()
    return await _search(state, index, queries, k, class_name)


@router.get("/search", response_model=SearchResponse, responses={**PROBLEMS, **NOT_FOUND})
async def search_by_id(state: Ready, index: Index,
                       id: Annotated[int, Query(ge=0, description="an indexed image's id")], k: K = 10,
                       class_name: ClassName = None) -> SearchResponse:
    """The k indexed images most similar to indexed image `id`, itself left out."""
    _check_class(index, class_name)
    if id >= index.count:
        raise Problem(404, f"no indexed image has id {id} (ids run from 0 to {index.count - 1})")
    return await _search(state, index, index.vector(id)[None], k, class_name, exclude=[id])


def _check_class(index: SearchIndex, class_name: str | None) -> None:
    if class_name is not None and class_name not in index.classes:
        raise Problem(422, f"unknown class_name {class_name!r}: the index has {', '.join(index.classes) or 'none'}")


async def _search(state: Ready, index: SearchIndex, queries: np.ndarray, k: int, class_name: str | None,
                  exclude: list[int] | None = None) -> SearchResponse:
    with state.metrics.search.time():
        results = await state.run_search(index.search, queries, k, class_name, exclude)
    return SearchResponse(model=state.model.bundle.name, index_size=index.count,
                          results=[SearchResult(neighbours=[_neighbour(h) for h in hits]) for hits in results])


def _neighbour(hit: Hit) -> Neighbour:
    return Neighbour(id=hit.id, score=hit.score, label=hit.label, class_name=hit.class_name, split=hit.split,
                     source=hit.source, image_url=f"/images/{hit.id}")
