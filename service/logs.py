"""How the service logs: text lines as uvicorn writes them (the default), or with --log-format json one JSON object
a line on stderr, every logger's (uvicorn's access and error lines and the service's own), for log pipelines
(Loki, Elasticsearch, Cloud Logging) that read fields rather than parse text. A JSON line written while a
request is answered carries its X-Request-ID (service.request_ids), its access line included: uvicorn writes it
from the request's own task.
"""

from __future__ import annotations

import json
import logging
from datetime import datetime, timezone
from typing import Any

from uvicorn.config import LOGGING_CONFIG

from service.request_ids import current_request_id
from service.settings import LogFormat

TEXT_FORMAT = "%(levelname)s:     %(message)s"  # as uvicorn's own lines


def configure(log_format: LogFormat) -> None:
    """The service's own lines in this process: as uvicorn's text lines; for json, uvicorn applies
    uvicorn_config, which takes in the root logger, before it makes the app (in each worker too)."""
    if log_format == "text":
        logging.basicConfig(level=logging.INFO, format=TEXT_FORMAT)


def uvicorn_config(log_format: LogFormat) -> dict[str, Any]:
    """uvicorn.run's log_config: for text uvicorn's own; json sends every logger, the root (the service's)
    included, through JsonFormatter. uvicorn applies it in each worker process too."""
    if log_format == "text":
        return LOGGING_CONFIG
    handler = {"class": "logging.StreamHandler", "stream": "ext://sys.stderr", "formatter": "json",
               "filters": ["request_id"]}
    return {"version": 1, "disable_existing_loggers": False,
            "formatters": {"json": {"()": JsonFormatter}}, "filters": {"request_id": {"()": RequestIdFilter}},
            "handlers": {"json": handler}, "root": {"handlers": ["json"], "level": "INFO"},
            "loggers": {name: {"handlers": [], "level": "INFO", "propagate": True}
                        for name in ("uvicorn", "uvicorn.error", "uvicorn.access")}}


class RequestIdFilter(logging.Filter):
    """Puts the id of the request being answered, if any, on each record (as request_id)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = current_request_id()
        return True


class JsonFormatter(logging.Formatter):
    """A record as one line of JSON: time (UTC, ISO 8601), level, logger, message, request_id where there is one,
    the traceback as exception; uvicorn's access lines also as client, method, path, http_version and status."""

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname, "logger": record.name}
        if record.name == "uvicorn.access" and isinstance(record.args, tuple) and len(record.args) == 5:
            client, method, path, version, status = record.args
            line["message"] = f'{method} {path} {status}'
            line |= {"client": client, "method": method, "path": path, "http_version": version, "status": status}
        else:
            line["message"] = record.getMessage()
        if getattr(record, "request_id", None):
            line["request_id"] = record.request_id
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)
