"""The API's routers, one per resource; each only translates HTTP to calls on the loaded state."""

from service.schemas import ProblemDetail

# Documented on every route that can refuse its input.
PROBLEMS = {status: {"model": ProblemDetail, "content": {"application/problem+json": {}}}
            for status in (413, 415, 422, 503)}
