"""The API's routers, one per resource; each only translates HTTP to calls on the loaded state. What several
of them share is here, so that no router imports another."""

import math
import re
from typing import Annotated
from urllib.parse import quote

from fastapi import Query

from service.catalog import RANGES, Where
from service.indexes import Index
from service.problems import Problem
from service.schemas import Condition, IndexSummary, ProblemDetail

# Documented on the routes that read images (service.openapi adds what every route of a kind answers, and moves
# every problem to application/problem+json).
PROBLEMS = {status: {"model": ProblemDetail} for status in (400, 413, 415, 422, 503)}
# Documented on the routes that look something up by name or id.
NOT_FOUND = {404: {"model": ProblemDetail}}


def image_url(id: str, root_path: str) -> str:
    """Where an indexed image's thumbnail is served (the id percent-encoded, its slashes kept)."""
    return f"{root_path}/thumbnails/{quote(id, safe='/')}"


def describe_index(index: Index) -> IndexSummary:
    """What the index is and holds (GET /index, and /version's index), caught up with the catalog first."""
    index.refresh()
    return IndexSummary(type=index.factory, count=index.count, dim=index.dim, classes=index.classes,
                        runtime=index.info.runtime, thumbnail_size=index.info.thumbnail_size,
                        read_only=index.read_only)


# Metadata filters in a query string: key:value (equal; repeated, any of the values), key!=value (none of them),
# key>=n, key>n, key<=n, key<n (numbers only pass them).
QueryFilter = Annotated[list[str] | None, Query(
    description="only images whose metadata matches: key:value, key!=value, key>=n, key>n, key<=n, key<n; "
                "repeated for several (all must hold; the same key with ':' twice: any of its values)")]
_FILTER = re.compile(r"^([A-Za-z_][A-Za-z0-9_.-]*)(:|!=|>=|<=|>|<)(.*)$")
_OPS = {symbol: name for name, symbol in RANGES.items()}  # ">=" -> "gte", as the catalog names them


def where_of(class_name: str | None = None, filters: list[str] | dict | None = None) -> Where | None:
    """The catalog's filter (service.catalog.Where) from a request: class_name, and query-string filters (text
    whose values match as text or as the number they spell) or a JSON filter (values, lists, conditions)."""
    where: Where = {}
    if isinstance(filters, dict):
        for key, value in filters.items():
            if isinstance(value, Condition):
                where[key] = value.model_dump(by_alias=True, exclude_none=True)
            else:
                where[key] = value if isinstance(value, list) else [value]
    for text in filters if isinstance(filters, list) else []:
        match = _FILTER.match(text)
        if not match:
            raise Problem(422, f"filter {text!r} is not key:value, key!=value or key>=number (also >, <=, <)")
        key, op, value = match.groups()
        condition = where.setdefault(key, {})
        if op in (":", "!="):
            condition.setdefault("in" if op == ":" else "not", []).extend([value, *_number(value)])
        elif not _number(value):
            raise Problem(422, f"filter {text!r}: {value!r} is not a number")
        else:
            condition[_OPS[op]] = _number(value)[0]
    if class_name is not None:
        condition = where.setdefault("class", {})
        (condition.setdefault("in", []) if isinstance(condition, dict) else condition).append(class_name)
    return where or None


def _number(text: str) -> list[float]:
    try:
        value = float(text)
    except ValueError:
        return []
    return [value] if math.isfinite(value) else []

