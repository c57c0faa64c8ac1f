"""The last line of defence: an exception nothing foresaw becomes a 500 OperationOutcome here.

The log line names the exception's type (with the types it was raised from), the request's method and
path, the code locations the exception passed through and a request id; never the exception's message.
Exception text can hold whatever the failing code held: SQLAlchemy puts a statement's bound values in it
(names, MRNs, whole resources), a ValueError its value. The request id is also in the answer (the
`X-Request-ID` header and the diagnostics), so a caller's report can be matched with the log line.

The exception is not raised further. Starlette's own error middleware, outside this one, would re-raise
it to the server, and uvicorn logs what it gets with its message.
"""

from __future__ import annotations

import logging
import traceback

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import logs
from gateway.exceptions import FhirError
from gateway.transports.http.responses import error_response

log = logging.getLogger("gateway.http")

_CHAIN_LIMIT = 5  # exceptions raised from one another, at most this many named


class InternalError(FhirError):
    """500: the request failed for a reason of the gateway's own, which was logged under `request_id`."""

    def __init__(self, request_id: str) -> None:
        super().__init__(f"Internal server error; it was logged as request {request_id}")
        self.request_id = request_id


def exception_types(exc: BaseException) -> str:
    """`IntegrityError <- UniqueViolationError`: the type of the exception and of its causes."""
    names: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(names) < _CHAIN_LIMIT:
        names.append(type(current).__qualname__)
        current = current.__cause__ or current.__context__
    return " <- ".join(names)


def code_locations(exc: BaseException) -> str:
    """Where the exception passed in the gateway's own code (file:line function), innermost last, and the
    innermost frame wherever it is: places in the code, no values."""
    frames = traceback.extract_tb(exc.__traceback__)
    kept = [f for f in frames if "/gateway/" in f.filename]
    if frames and (not kept or kept[-1] is not frames[-1]):
        kept.append(frames[-1])
    return " > ".join(f"{_short(f.filename)}:{f.lineno} {f.name}" for f in kept)


def _short(filename: str) -> str:
    for marker in ("/gateway/", "/site-packages/"):
        if marker in filename:
            return filename.rsplit(marker, 1)[1]
    return filename.rsplit("/", 1)[-1]


class UnexpectedErrors:
    """ASGI middleware (the outermost of the app's own): gives each request its correlation id (the
    caller's `X-Request-ID` when it is a plain token, else a new one; echoed in every answer, and on
    every log line written while serving it: gateway/logs.py), logs an unhandled exception without its
    message and answers 500 naming that id, if the answer has not started yet."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = logs.caller_or_new(_header(scope, b"x-request-id"))
        reset = logs.correlation_id.set(request_id)
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != b"x-request-id"]
                message = {**message, "headers": [*headers, (b"x-request-id", request_id.encode())]}
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception as exc:
            log.error(
                "unhandled %s on %s %s (request %s) at %s",
                exception_types(exc),
                scope.get("method", ""),
                scope.get("path", ""),
                request_id,
                code_locations(exc),
            )
            if started:
                return  # too late for a 500: the server closes the half-sent answer
            await error_response(InternalError(request_id))(scope, receive, tracking)
        finally:
            logs.correlation_id.reset(reset)


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or []:
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None
