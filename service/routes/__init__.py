"""The API's routers, one per resource; each only translates HTTP to calls on the loaded state."""

from service.schemas import ProblemDetail

# Documented on every route that can refuse its input (400: a malformed multipart body or Content-Length).
PROBLEMS = {status: {"model": ProblemDetail, "content": {"application/problem+json": {}}}
            for status in (400, 413, 415, 422, 503)}
# Documented on the routes that look an image up by id.
NOT_FOUND = {404: {"model": ProblemDetail, "content": {"application/problem+json": {}}}}
