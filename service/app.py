"""The FastAPI application: routers, error handlers, body limit, metrics, and background loading.

    app = create_app(Settings(bundle="bundles/r18", index="indexes/cifar10-train"))
"""

from __future__ import annotations

import asyncio
import json
import os
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi.staticfiles import StaticFiles

from service import openapi, problems
from service.auth import ApiKey
from service.limits import Admission, BodyLimit
from service.logs import configure
from service.metrics import MetricsMiddleware, ServiceMetrics
from service.request_ids import HEADER, RequestIds
from service.routes import classify, embed, index, open_inference, openai, ops, page, search
from service.routes.page import STATIC
from service.settings import Settings
from service.state import ServiceState

WORKER_SETTINGS = "SIMCLR_WORKER_SETTINGS"  # the checked settings, as JSON, for each worker process


def create_app(settings: Settings) -> FastAPI:
    metrics = ServiceMetrics()
    state = ServiceState(settings, metrics)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        # Loading runs beside the server: /healthz answers at once, /readyz turns 200 when loading ends.
        loading = asyncio.create_task(state.load(), name="load")
        grpc_server = None
        if settings.grpc_port is not None:  # imported only then: grpcio and tritonclient are the [grpc] extra
            from service import open_inference_grpc

            grpc_server = await open_inference_grpc.start(state, settings)
        yield
        if grpc_server is not None:
            await grpc_server.stop(grace=5)
        loading.cancel()
        await asyncio.gather(loading, return_exceptions=True)
        await state.close()

    # Operation ids are the route functions' names (embed, classify, search_images ...): what generated clients
    # call their methods, rather than FastAPI's embed_embed_post.
    app = FastAPI(title="SimCLR CIFAR-10 service", lifespan=lifespan,
                  generate_unique_id_function=lambda route: route.name,
                  description="Embeddings, top-k classes and similar-image search from a SimCLR model bundle.")
    app.state.service = state
    problems.install(app)
    routers = (embed.router, classify.router, search.router, index.router, openai.router, open_inference.router,
               ops.router, page.router)
    for router in routers:
        app.include_router(router)
    openapi.install(app, routers, api_key=settings.api_key is not None)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(BodyLimit, max_bytes=settings.max_request_bytes)
    # outside the body limit: refused before anything is read
    app.add_middleware(Admission, state=state, routes=openapi.api_routes(routers))
    if settings.api_key is not None:  # outside the body limit: a request without the key is refused unread
        app.add_middleware(ApiKey, key=settings.api_key.get_secret_value())
    if settings.cors_origins:  # outside the key check: preflight requests carry no credentials
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins,
                           allow_methods=["GET", "POST", "PATCH", "DELETE"],
                           allow_headers=["Content-Type", "X-API-Key", "Authorization", HEADER],
                           expose_headers=[HEADER, "Retry-After"])
    app.add_middleware(RequestIds)  # outside the checks: their refusals carry the id too
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # added last: outermost, so it sees every answer
    return app


def worker_settings(settings: Settings) -> str:
    """The settings as worker_app reads them back (the API key in clear: it stays in the process environment)."""
    values = settings.model_dump(mode="json")
    values["api_key"] = settings.api_key.get_secret_value() if settings.api_key else None
    return json.dumps(values)


def worker_app() -> FastAPI:
    """The app of one of several worker processes (python -m service --workers N), from the settings the parent
    checked: read as they are, not again from flags and environment variables."""
    settings = Settings.model_validate_json(os.environ[WORKER_SETTINGS])
    configure(settings.log_format)
    return create_app(settings)
