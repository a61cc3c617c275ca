"""What the schema fuzz test and benchmarks/fuzz.py share: the schema, loaded from a live app, and the checks."""

from __future__ import annotations

import time

import schemathesis
from fastapi import FastAPI

# Schema-valid bytes are rarely a decodable image: a 415 for them is right, so this check does not apply.
EXCLUDED_CHECKS = [schemathesis.checks.positive_data_acceptance]
# How the service refuses input that breaks the schema. 413 is among them: a malformed multipart body often
# has more parts than max_images allows, and is refused for that before anything else.
CONFIG = schemathesis.Config.from_dict({"checks": {"negative_data_rejection": {
    "expected-statuses": ["400", "404", "405", "413", "415", "422"]}}})


def load_schema(app: FastAPI, timeout: float = 300) -> schemathesis.BaseSchema:
    """The app's OpenAPI schema, once the app has loaded its model. Loading the schema starts the app's
    lifespan, which schemathesis keeps for the rest of the process."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app, config=CONFIG)
    state, deadline = app.state.service, time.monotonic() + timeout
    while not (state.ready or state.error) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert state.ready, state.error or "the service did not load in time"
    return schema
