"""uvicorn's HTTP/1.1 protocols (h11's and httptools') with a deadline for request headers (slowloris).

uvicorn bounds how long an idle keep-alive connection stays open (`timeout_keep_alive`, armed only after
a response) but has no limit on how long a client may take to send a request's headers: a connection
that sends nothing, or a header line every few seconds, is kept forever. Here a connection must deliver
the complete headers of each request within `timeout` seconds of its first byte (of the connection's
opening, for the first request); otherwise it is closed. The body is not covered (the body size limit
bounds its memory; a proxy in front bounds its time).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger("gateway.http")


class _Deadline:
    """The header deadline of one connection: armed, disarmed, and on expiry the connection is closed if
    `awaiting()` still says its headers are due."""

    __slots__ = ("_handle", "_protocol")

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        self._handle: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        if self._handle is None:
            self._handle = self._protocol.loop.call_later(self._protocol.timeout, self._expired)

    def disarm(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None

    def _expired(self) -> None:
        self._handle = None
        protocol = self._protocol
        if protocol.awaiting_headers() and not protocol.transport.is_closing():
            client = f"{protocol.client[0]}:{protocol.client[1]}" if protocol.client else "-"
            log.warning(
                "http request headers not received within %ss; closing client=%s", protocol.timeout, client
            )
            protocol.transport.close()


class HeaderTimeoutProtocol(H11Protocol):
    """H11Protocol closing a connection whose request headers are not complete within `timeout`."""

    timeout = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = _Deadline(self)

    def awaiting_headers(self) -> bool:
        return self.conn.their_state is h11.IDLE

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline.arm()

    def data_received(self, data: bytes) -> None:
        if self.awaiting_headers():
            self._deadline.arm()  # the first bytes of a request: its headers are now due
        super().data_received(data)
        if not self.awaiting_headers():
            self._deadline.disarm()  # the headers are in (the body, if any, follows)

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.disarm()
        super().connection_lost(exc)


class HttpToolsHeaderTimeoutProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with the same deadline. llhttp tells when a request begins and when its headers
    are complete; between a request's end and the next one's first byte the connection is idle (the
    keep-alive timeout's to close), so the deadline is armed by that first byte, as with h11."""

    timeout = 10.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline = _Deadline(self)
        self._awaiting_headers = True  # the connection's opening counts as the first request's start

    def awaiting_headers(self) -> bool:
        return self._awaiting_headers

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._deadline.arm()

    def data_received(self, data: bytes) -> None:
        if self._awaiting_headers:
            self._deadline.arm()
        super().data_received(data)

    def on_headers_complete(self) -> None:
        self._awaiting_headers = False
        self._deadline.disarm()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        super().on_message_complete()
        self._awaiting_headers = True  # the next request's headers are due from its first byte

    def connection_lost(self, exc: Exception | None) -> None:
        self._deadline.disarm()
        super().connection_lost(exc)


def with_header_timeout(
    seconds: float, parser: str = "httptools"
) -> type[HeaderTimeoutProtocol | HttpToolsHeaderTimeoutProtocol]:
    """The protocol class for uvicorn's `http=` option: this parser, with this header deadline."""
    base: type[HeaderTimeoutProtocol | HttpToolsHeaderTimeoutProtocol] = (
        HttpToolsHeaderTimeoutProtocol if parser == "httptools" else HeaderTimeoutProtocol
    )
    return type(base.__name__, (base,), {"timeout": seconds})
