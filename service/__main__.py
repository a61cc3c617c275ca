"""Run the service with uvicorn.

    python -m service --bundle bundles/r18 --index indexes/cifar10-train --port 8000
    SIMCLR_BUNDLE=bundles/r18 SIMCLR_PORT=8000 python -m service       # the same, from the environment
    python -m service --workers 2 --index-uri milvus://milvus:19530     # two processes, the index in Milvus

Every setting (python -m service --help) is a flag or a SIMCLR_* environment variable; flags win. The bundle
and index are checked before the server starts, so a bad path, a mismatched pair or a Milvus server that does
not answer is one line of error. With --workers, uvicorn starts that many processes on one port (and restarts
one that dies); each builds its app from the settings checked here (service.app.worker_app), and their metrics
are kept in one folder that /metrics sums (service.metrics).
"""

from __future__ import annotations

import os
import socket
import sys
from contextlib import nullcontext

import uvicorn
from pydantic import ValidationError

from contract.bundle import BundleError, read_manifest
from service.app import WORKER_SETTINGS, create_app, worker_settings
from service.index import SearchIndexError, read_info
from service.indexes import exists, location_of, read_index_info
from service.logs import configure, uvicorn_config
from service.metrics import MULTIPROCESS_DIR, shared_between_workers
from service.settings import Settings


def main() -> int:
    try:
        settings = Settings(_cli_parse_args=True)
        _, fingerprint = read_manifest(settings.bundle)
        if settings.index is not None:
            read_info(settings.index, fingerprint)
        if settings.index_uri is not None:  # a server that does not answer is said now, not at the first search
            location = location_of(settings.index_uri, fingerprint)
            if exists(location):
                read_index_info(location, fingerprint)
        if settings.grpc_port is not None:
            _check_grpc(settings)
    except ValidationError as e:
        problems = "; ".join(f"--{'-'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors())
        print(f"error: {problems}", file=sys.stderr)
        return 2
    except (BundleError, SearchIndexError, GrpcUnavailable) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    configure(settings.log_format)
    log_config = uvicorn_config(settings.log_format)
    if settings.workers == 1:
        # prometheus_client keeps its values in files whenever this is set: emptied of the last run's, as below.
        with shared_between_workers() if os.environ.get(MULTIPROCESS_DIR) else nullcontext():
            uvicorn.run(create_app(settings), host=settings.host, port=settings.port, root_path=settings.root_path,
                        log_level="info", log_config=log_config)
        return 0
    if "torch_threads" not in settings.model_fields_set:  # the cores are shared out, not each taken by all
        settings.torch_threads = max(1, settings.torch_threads // settings.workers)
    os.environ[WORKER_SETTINGS] = worker_settings(settings)
    with shared_between_workers():  # /metrics sums every worker's counts, whichever worker answers it
        uvicorn.run("service.app:worker_app", factory=True, workers=settings.workers, host=settings.host,
                    port=settings.port, root_path=settings.root_path, log_level="info", log_config=log_config)
    return 0


class GrpcUnavailable(Exception):
    pass


def _check_grpc(settings: Settings) -> None:
    """--grpc-port's packages are installed and its port is free: said now in one line, not as a start-up
    traceback."""
    try:
        import grpc  # noqa: F401
        import tritonclient.grpc  # noqa: F401
    except ImportError as e:
        raise GrpcUnavailable(f"--grpc-port needs grpcio and tritonclient's gRPC stubs ({e.name} is missing): pip "
                              f"install '.[grpc]'") from None
    with socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET) as probe:
        try:
            probe.bind((settings.host, settings.grpc_port))
        except OSError as e:
            raise GrpcUnavailable(f"--grpc-port {settings.grpc_port}: cannot listen on {settings.host}:"
                                  f"{settings.grpc_port} ({e.strerror})") from None


if __name__ == "__main__":
    sys.exit(main())
