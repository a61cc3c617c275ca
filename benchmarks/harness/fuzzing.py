"""What the schema fuzz test and benchmarks.fuzz share: the schema, loaded from a live app, and the checks."""

from __future__ import annotations

import time
from collections import Counter

import schemathesis
from fastapi import FastAPI
from hypothesis import HealthCheck, given, settings
from hypothesis import seed as hypothesis_seed
from hypothesis.errors import Unsatisfiable
from schemathesis import APIOperation, Case, GenerationMode
from schemathesis.core.failures import FailureGroup

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


def fuzz_operation(operation: APIOperation, mode: GenerationMode, budget: int, seed: int,
                   statuses: Counter[str], failures: dict[tuple[str, str], str]) -> int:
    """Up to budget seeded cases of one operation in one mode, each checked against the schema. Counts the
    answers' status classes into statuses, keeps one reproduction per (operation, failure) in failures, and
    returns how many cases ran: fewer than budget when the operation has no more distinct input. Driven by
    hypothesis directly rather than through schemathesis's pytest plugin, which leans on pytest internals."""
    label = f"{operation.label} ({mode.value})"
    tried = 0

    @hypothesis_seed(seed)
    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=budget, database=None, deadline=None, suppress_health_check=list(HealthCheck))
    def run(case: Case) -> None:
        nonlocal tried
        tried += 1
        try:
            response = case.call_and_validate(excluded_checks=EXCLUDED_CHECKS)
            statuses[f"{response.status_code // 100}xx"] += 1
        except FailureGroup as group:  # kept, not raised: the run goes on
            for failure in group.exceptions:
                failures.setdefault((label, failure.title), case.as_curl_command())

    try:
        run()
    except Unsatisfiable:  # no invalid input exists for an operation without parameters
        pass
    return tried
