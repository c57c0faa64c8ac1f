"""Logging: plain text or JSON lines, each with the correlation id of the work it belongs to.

A correlation id names one HTTP request (the caller's `X-Request-ID` when it is a plain token, else a new
one, echoed in the answer) or one HL7 v2 message received over MLLP; everything logged while serving it,
in any task it starts, carries it (a context variable). Log lines carry ids, never patient data: the
formatters add no fields of their own beyond time, level, logger, message and correlation id.

A leaf module: imports nothing from the package.
"""

from __future__ import annotations

import logging
import re
import sys
import uuid
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Literal

import orjson

correlation_id: ContextVar[str | None] = ContextVar("correlation_id", default=None)

# A caller's request id is kept only when it cannot forge log structure: short, no spaces or quotes.
_CALLER_ID = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# Libraries whose INFO lines are chatter at start (Alembic prints a line per plugin and per migration,
# uvicorn four lines about its process and lifespan); the gateway logs what they did in one line of its
# own. Their warnings and errors still show.
_QUIET = ("alembic", "uvicorn.error")


def new_correlation_id(prefix: str = "") -> str:
    return prefix + uuid.uuid4().hex


def caller_or_new(value: str | None) -> str:
    """The caller's request id when it is a plain token, else a new one."""
    return value if value is not None and _CALLER_ID.match(value) else new_correlation_id()


class CorrelationFilter(logging.Filter):
    """Puts the current correlation id on each record (None outside any request or message)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.correlation_id = correlation_id.get()
        return True


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        cid = getattr(record, "correlation_id", None)
        return line if cid is None else f"{line} [cid={cid}]"


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ms), level, logger, message, correlation_id, exception."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        cid = getattr(record, "correlation_id", None)
        if cid is not None:
            entry["correlation_id"] = cid
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(entry).decode()


def configure(level: str, fmt: Literal["text", "json"] = "text") -> None:
    """The root logger writes to stderr in `fmt`; replaces handlers set before (a second call wins)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    handler.addFilter(CorrelationFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in _QUIET:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
