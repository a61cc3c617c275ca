from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

STATIC = Path(__file__).resolve().parent.parent / "static"
router = APIRouter(include_in_schema=False)


@router.get("/")
def page() -> FileResponse:
    """The demo page: drop an image, see its top-3 classes and the most similar indexed images."""
    return FileResponse(STATIC / "index.html")
