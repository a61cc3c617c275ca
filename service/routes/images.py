from __future__ import annotations

import io
from typing import Annotated

from fastapi import APIRouter, Path, Response
from PIL import Image

from service.dependencies import Index
from service.problems import Problem
from service.routes import NOT_FOUND, PROBLEMS

router = APIRouter(tags=["search"])


@router.get("/images/{id}", response_class=Response, responses={
    200: {"content": {"image/png": {}}, "description": "the image as it was indexed (PNG)"}, **PROBLEMS, **NOT_FOUND})
def image(id: Annotated[int, Path(ge=0, description="an indexed image's id")], index: Index) -> Response:
    """An indexed image, at the size the model saw it. Ids are integers into the index's own image array:
    no file path is ever built from a request."""
    if id >= index.count:
        raise Problem(404, f"no indexed image has id {id} (ids run from 0 to {index.count - 1})")
    png = io.BytesIO()
    Image.fromarray(index.images[id]).save(png, format="PNG")
    return Response(png.getvalue(), media_type="image/png", headers={"Cache-Control": "public, max-age=3600"})
