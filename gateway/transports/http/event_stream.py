"""Server-sent events (text/event-stream) for the live patient timeline, as a raw ASGI response.

Framing (https://html.spec.whatwg.org/multipage/server-sent-events.html): an event is an `id:` line and
one `data:` line (the entry's JSON, which never holds a line break) and a blank line; heartbeats and the
reason a stream ends are comment lines (`: heartbeat`), which clients ignore and proxies see as traffic.

One write at a time: the next item is produced only once the previous write was taken by the server,
whose transport buffer is bounded (uvicorn stops the writer above its high-water mark until the client
reads), so a slow reader costs one batch at most. A write still waiting after `send_timeout` seconds, or
at shutdown, is abandoned and the connection closed: a client that stopped reading holds no slot for
long. The client leaving (`http.disconnect`) stops the stream at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from gateway.service.pharmacist.timeline_stream import Closed, Event, Heartbeat, TimelineStream

log = logging.getLogger("gateway.timeline")

EVENT_STREAM = "text/event-stream"
HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),  # nginx: pass each event on as it comes
]


SLICE = 0.25  # seconds between looks at a write that has not finished
SHUTDOWN_GRACE = 1.0  # what a pending write gets once the server is stopping


class Abandoned(Exception):
    """A write to the client did not finish in time (or the server is stopping)."""


def frame(item: Event | Heartbeat | Closed) -> bytes:
    if isinstance(item, Event):
        return b"id: " + item.id.encode() + b"\ndata: " + item.data + b"\n\n"
    if isinstance(item, Heartbeat):
        return b": heartbeat\n\n"
    return b": closed: " + item.reason.encode() + b"\n\n"


class EventStreamResponse(Response):
    """Sends a TimelineStream's items; gives its slot back however it ends. A Response for the framework's
    sake only: it sends its own status, headers and body."""

    def __init__(self, stream: TimelineStream, *, send_timeout: float) -> None:
        super().__init__(status_code=200, media_type=EVENT_STREAM)
        self.stream = stream
        self.send_timeout = send_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        stream = self.stream
        watcher = asyncio.create_task(self._watch(receive))
        try:
            await self._send(send, {"type": "http.response.start", "status": 200, "headers": HEADERS})
            try:
                async for item in stream.items():
                    await self._send(
                        send, {"type": "http.response.body", "body": frame(item), "more_body": True}
                    )
            except Abandoned:
                raise
            except Exception as exc:  # e.g. the database went away mid-stream: end it, say why in the log
                log.warning("timeline stream ended by %s", type(exc).__name__)
            await self._send(send, {"type": "http.response.body", "body": b"", "more_body": False})
        except Abandoned:
            # Returning with the answer unfinished makes the server close the connection.
            if not stream.stopped.is_set():
                log.warning("timeline stream abandoned: the client did not read for %ss", self.send_timeout)
        finally:
            watcher.cancel()
            stream.close()

    async def _send(self, send: Send, message: Message) -> None:
        """One write, given up when the client has not taken it within the send timeout (a second once
        the server is stopping), or has left."""
        writing = asyncio.ensure_future(send(message))
        waited = 0.0
        while True:
            done, _ = await asyncio.wait({writing}, timeout=SLICE)
            if done:
                writing.result()
                return
            waited += SLICE
            if (
                self.stream.stopped.is_set()
                or waited >= self.send_timeout
                or (self.stream.feed.closing and waited >= SHUTDOWN_GRACE)
            ):
                writing.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await writing
                raise Abandoned

    async def _watch(self, receive: Receive) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                self.stream.stop()
                return
