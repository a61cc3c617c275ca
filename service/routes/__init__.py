"""The API's routers, one per resource; each only translates HTTP to calls on the loaded state."""

from service.schemas import ProblemDetail

# Documented on the routes that read images (service.openapi adds what every route of a kind answers, and moves
# every problem to application/problem+json).
PROBLEMS = {status: {"model": ProblemDetail} for status in (400, 413, 415, 422, 503)}
# Documented on the routes that look something up by name or id.
NOT_FOUND = {404: {"model": ProblemDetail}}
