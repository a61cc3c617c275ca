"""The API's routers, one per resource; each only translates HTTP to calls on the loaded state. What several
of them share is here, so that no router imports another."""

from urllib.parse import quote

from service.index import SearchIndex
from service.schemas import IndexSummary, ProblemDetail

# Documented on the routes that read images (service.openapi adds what every route of a kind answers, and moves
# every problem to application/problem+json).
PROBLEMS = {status: {"model": ProblemDetail} for status in (400, 413, 415, 422, 503)}
# Documented on the routes that look something up by name or id.
NOT_FOUND = {404: {"model": ProblemDetail}}


def image_url(id: str, root_path: str) -> str:
    """Where an indexed image's thumbnail is served (the id percent-encoded, its slashes kept)."""
    return f"{root_path}/thumbnails/{quote(id, safe='/')}"


def describe_index(index: SearchIndex) -> IndexSummary:
    """What the index is and holds (GET /index, and /version's index), caught up with the catalog first."""
    index.refresh()
    return IndexSummary(type=index.factory, count=index.count, dim=index.dim, classes=index.classes,
                        runtime=index.info.runtime, thumbnail_size=index.info.thumbnail_size,
                        read_only=index.read_only)
