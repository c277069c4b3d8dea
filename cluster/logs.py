"""Process logging: one line per lifecycle event, none per request at the default level."""

from __future__ import annotations

import json
import logging
import sys
from contextvars import ContextVar
from typing import Any


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for machines (`--log_format=json`)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def configure_logging(options: Any) -> None:
    """INFO lines of the `tessera` loggers to stderr, as text or JSON (`options.log_format`).

    Called in the driver and in every actor process (Ray forwards actors' stderr to the driver).
    """
    handler = logging.StreamHandler(sys.stderr)
    if getattr(options, "log_format", "text") == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger("tessera")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


# The request id of the request being handled (from the `x-request-id` header or gRPC metadata),
# set by the gateway per request; asyncio gives every request task its own context.
REQUEST_ID: ContextVar[str | None] = ContextVar("tessera_request_id", default=None)
