"""Refusing a NUL character (U+0000) in a request's path, query string or headers, before any route.

PostgreSQL cannot hold a NUL in text: one that reaches a statement fails it (a 500), where SQLite would
quietly compare it. Path segments, query parameters and header values are what the routes hand on to the
database (ids, senders, statuses, search criteria, conditional criteria), so a NUL in any of them is a
400 here, alike on both backends. Bodies are checked by what reads them (the search parser, the
validator).
"""

from __future__ import annotations

from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.exceptions import BadRequest
from gateway.transports.http.responses import error_response


def nul_in_request(scope: Scope) -> str | None:
    """Which part of the request holds a NUL, or None.

    The query string is looked at as sent: a NUL there is a raw byte or `%00` (no escape can end inside
    `%00`, so finding it is finding an encoded NUL)."""
    if "\x00" in scope.get("path", ""):
        return "path"
    query: bytes = scope.get("query_string", b"")
    if b"%00" in query or b"\x00" in query:
        return "query string"
    for name, value in scope.get("headers", ()):
        if b"\x00" in value:
            return f"{name.decode('latin-1')} header"
    return None


class NulGuard:
    """ASGI middleware answering 400 (an OperationOutcome) to a request with a NUL in its path, query
    string or headers."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            where = nul_in_request(scope)
            if where is not None:
                refusal = BadRequest(
                    f"The request's {where} holds a NUL character (U+0000), which is not allowed"
                )
                await error_response(refusal)(scope, receive, send)
                return
        await self.app(scope, receive, send)
