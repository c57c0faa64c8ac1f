"""An asyncio MLLP listener: one task per connection, messages handed to the pipeline one at a time.

The server knows framing and nothing of HL7 beyond addressing a NAK for a message too large to
accept. Everything else, including NAKs for unreadable messages, is the handler's answer: it gets one
message's bytes and returns the ACK bytes once the message is durably stored. Per connection:

- frames are handled strictly in order and each ACK is written only after the handler returns, so a
  sender never sees an ACK for a message that could still be lost;
- a message over `max_message_bytes` is skipped (never buffered) and answered with an AR;
- bytes outside frames are dropped; a frame cut short by a disconnect never reaches the handler;
- a handler that raises closes the connection without an ACK: the sender resends after reconnecting
  (the pipeline answers everything a message holds; it raises only when the database is unreachable).

Bounded: at most `max_connections` at once (one more is closed at once and logged); frames in progress
hold at most `max_buffered_bytes` together: past that, a connection in the middle of a frame is not read
(TCP flow control holds the rest at the sender) until others' frames complete (one read of 64 KB per
connection may pass it), while a connection starting a message is still read, so small messages keep
flowing; a connection with nothing to read for `idle_timeout` is closed; a frame not completed within
`frame_timeout` of its start block is dropped and its connection closed (however steadily its bytes
trickle in, or however long it waited).

Logs carry peer, byte counts, ACK code and control id; never message content (it is patient data).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from gateway import logs, tracing
from gateway.adapters.hl7v2.ack import build_nak, hl7_timestamp
from gateway.adapters.hl7v2.er7 import ER7Error, Message
from gateway.transports.mllp.framing import FrameDecoder, Oversized, encode

log = logging.getLogger("gateway.mllp")

DEFAULT_MAX_MESSAGE_BYTES = 5 * 1024 * 1024  # lab reports with embedded PDFs reach a few MB
DEFAULT_IDLE_TIMEOUT = 300.0  # senders keep connections open between messages; 5 min frees dead ones
DEFAULT_FRAME_TIMEOUT = 60.0  # a 5 MB message takes well under a second on any working link
DEFAULT_MAX_CONNECTIONS = 50
DEFAULT_MAX_BUFFERED_BYTES = 64 * 1024 * 1024  # partial frames of all connections together
READ_SIZE = 64 * 1024
STOP_GRACE = 10.0  # how long stop() lets a handler in progress finish and write its ACK


@dataclass(frozen=True, slots=True)
class Peer:
    """The remote end of a connection."""

    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


Handler = Callable[[bytes, Peer], Awaitable[bytes]]
NakBuilder = Callable[[bytes, str], bytes]


@dataclass
class MLLPStats:
    """Counters since start, for metrics."""

    connections: int = 0  # accepted
    messages: int = 0  # answered by the handler
    naks: int = 0  # oversized messages refused by the server itself
    junk_bytes: int = 0  # outside frames, or in frames cut short
    handler_errors: int = 0  # connections closed because the handler raised
    refused: int = 0  # connections closed at once: max_connections were open
    frame_timeouts: int = 0  # connections closed because a frame took longer than frame_timeout


def default_nak(head: bytes, reason: str) -> bytes:
    """An AR (error 104) addressed from the MSH at the start of a refused message.

    Latin-1 maps every byte to one character and back, so the header fields echoed in the NAK come
    back byte for byte whatever character set the sender used.
    """
    control_id = uuid.uuid4().hex[:20]  # MSH-10 is at most 20 characters before v2.7
    text = build_nak(
        head.decode("latin-1"),
        reason,
        code="104",
        control_id=control_id,
        timestamp=hl7_timestamp(datetime.now(UTC)),
    )
    return text.encode("latin-1", errors="replace")


class MLLPServer:
    """Listens for MLLP connections and answers each framed message with the handler's ACK."""

    def __init__(
        self,
        handler: Handler,
        *,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT,
        frame_timeout: float | None = DEFAULT_FRAME_TIMEOUT,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        max_buffered_bytes: int = DEFAULT_MAX_BUFFERED_BYTES,
        nak_builder: NakBuilder = default_nak,
    ) -> None:
        self.handler = handler
        self.max_message_bytes = max_message_bytes
        self.idle_timeout = idle_timeout
        self.frame_timeout = frame_timeout
        self.max_connections = max_connections
        self.max_buffered_bytes = max_buffered_bytes
        self.buffered_bytes = 0  # of frames in progress, all connections
        self._buffer_freed = asyncio.Event()
        self.nak_builder = nak_builder
        self.stats = MLLPStats()
        self._server: asyncio.Server | None = None
        self._connections: dict[asyncio.Task[None], bool] = {}  # task -> busy with a message
        self._stopping = False

    @property
    def port(self) -> int:
        """The bound port (useful after `start(port=0)`)."""
        if self._server is None or not self._server.sockets:
            raise RuntimeError("the MLLP server is not started")
        return int(self._server.sockets[0].getsockname()[1])

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    async def start(self, host: str = "127.0.0.1", port: int = 2575, *, reuse_port: bool = False) -> None:
        """Bind and start accepting connections (2575 is MLLP's registered port); `reuse_port`: other
        processes of a cluster bind the same port (gateway/transports/cluster.py)."""
        self._stopping = False
        self._server = await asyncio.start_server(self._serve, host, port, reuse_port=reuse_port or None)
        log.info("mllp listening on %s:%d", host, self.port)

    async def stop(self, grace: float = STOP_GRACE) -> None:
        """Stop listening, close idle connections, let messages in progress get their ACK, then close."""
        if self._server is None:
            return
        self._stopping = True
        self._server.close()
        for task, busy in list(self._connections.items()):
            if not busy:
                task.cancel()
        if self._connections:
            _, late = await asyncio.wait(list(self._connections), timeout=grace)
            for task in late:
                task.cancel()
            await asyncio.gather(*late, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None
        log.info("mllp stopped")

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """One connection, from accept to close."""
        task = asyncio.current_task()
        assert task is not None
        peer = _peer(writer)
        if len(self._connections) >= self.max_connections:
            self.stats.refused += 1
            log.warning("mllp connection refused peer=%s max_connections=%d", peer, self.max_connections)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()
            return
        self.stats.connections += 1
        self._connections[task] = False
        log.info("mllp connection opened peer=%s", peer)
        decoder = FrameDecoder(self.max_message_bytes)
        clock = _FrameClock()  # also what this connection holds of the server's buffer budget
        try:
            while not self._stopping and await self._receive(reader, writer, decoder, peer, task, clock):
                pass
        except ConnectionError as exc:
            log.warning("mllp connection lost peer=%s error=%s", peer, type(exc).__name__)
        except _HandlerFailed:
            pass  # logged where it happened
        except Exception as exc:  # one connection's failure must never reach the others
            log.error("mllp connection failed peer=%s error=%s", peer, type(exc).__name__)
        finally:
            del self._connections[task]
            self._release(clock.held)
            if decoder.pending_bytes:
                self.stats.junk_bytes += decoder.pending_bytes
                log.warning(
                    "mllp connection closed mid-message peer=%s discarded_bytes=%d",
                    peer,
                    decoder.pending_bytes,
                )
            log.info("mllp connection closed peer=%s", peer)
            writer.close()
            with contextlib.suppress(ConnectionError, OSError):
                await writer.wait_closed()

    async def _receive(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        decoder: FrameDecoder,
        peer: Peer,
        task: asyncio.Task[None],
        clock: _FrameClock,
    ) -> bool:
        """Read once and answer every frame completed; False when the connection should close."""
        timeout, frame_due = self.idle_timeout, None
        if decoder.in_frame and self.frame_timeout is not None:
            frame_due = clock.started + self.frame_timeout - time.monotonic()
            timeout = frame_due if timeout is None else min(timeout, frame_due)
        try:
            data = await asyncio.wait_for(
                self._read(reader, decoder), max(timeout, 0) if timeout is not None else None
            )
        except TimeoutError:
            if frame_due is not None and frame_due <= (self.idle_timeout or frame_due):
                self.stats.frame_timeouts += 1
                log.warning(
                    "mllp frame not completed within %ss peer=%s discarded_bytes=%d",
                    self.frame_timeout,
                    peer,
                    decoder.pending_bytes,
                )
            else:
                log.info("mllp connection idle peer=%s timeout=%ss", peer, self.idle_timeout)
            return False
        if not data:
            return False
        junk_before = decoder.junk_bytes
        frames = decoder.feed(data)
        clock.note(decoder)
        held = min(decoder.pending_bytes, self.max_message_bytes)  # an oversized frame is not kept
        self.buffered_bytes += held - clock.held
        if held < clock.held:
            self._buffer_freed.set()
        clock.held = held
        if junk := decoder.junk_bytes - junk_before:
            self.stats.junk_bytes += junk
            log.warning("mllp junk outside frames discarded peer=%s bytes=%d", peer, junk)
        self._connections[task] = True  # stop() now waits for the ACK instead of cutting us off
        try:
            for frame in frames:
                reply = (
                    self._refuse(frame, peer)
                    if isinstance(frame, Oversized)
                    else await self._handle(frame, peer)
                )
                writer.write(encode(reply))
                await writer.drain()
                if self._stopping:
                    return False  # frames not yet answered will be resent by the sender
        finally:
            self._connections[task] = False
        return True

    async def _read(self, reader: asyncio.StreamReader, decoder: FrameDecoder) -> bytes:
        """The next bytes; in the middle of a frame, only while partial frames leave room."""
        while decoder.in_frame and self.buffered_bytes >= self.max_buffered_bytes:
            self._buffer_freed.clear()
            await self._buffer_freed.wait()
        return await reader.read(READ_SIZE)

    def _release(self, held: int) -> None:
        if held:
            self.buffered_bytes -= held
            self._buffer_freed.set()

    async def _handle(self, message: bytes, peer: Peer) -> bytes:
        # Each message is its own unit of work in the logs (gateway/logs.py) and traces (gateway/tracing.py),
        # as a request is over HTTP.
        cid = logs.new_correlation_id("mllp-")
        reset = logs.correlation_id.set(cid)
        attributes: dict[str, str | int] = {"net.peer": str(peer), "mllp.bytes": len(message)}
        attributes["gateway.correlation_id"] = cid
        try:
            with tracing.span("mllp.receive", attributes) as current:
                try:
                    reply = await self.handler(message, peer)
                except Exception as exc:
                    self.stats.handler_errors += 1
                    log.error(
                        "mllp handler failed, closing without ACK peer=%s bytes=%d error=%s",
                        peer,
                        len(message),
                        type(exc).__name__,
                    )
                    raise _HandlerFailed from exc
                self.stats.messages += 1
                code, control_id = _describe(reply)
                log.info(
                    "mllp message peer=%s bytes=%d ack=%s control_id=%s", peer, len(message), code, control_id
                )
                tracing.set_attributes(current, {"hl7.ack_code": code, "hl7.control_id": control_id})
                return reply
        finally:
            logs.correlation_id.reset(reset)

    def _refuse(self, frame: Oversized, peer: Peer) -> bytes:
        reason = f"Message too large: {frame.size} bytes, the limit is {self.max_message_bytes}"
        reply = self.nak_builder(frame.head, reason)
        self.stats.naks += 1
        _, control_id = _describe(reply)
        log.warning(
            "mllp message too large peer=%s bytes=%d ack=AR control_id=%s", peer, frame.size, control_id
        )
        return reply


class _FrameClock:
    """When the frame in progress on a connection began (by the server's monotonic clock)."""

    def __init__(self) -> None:
        self.started = 0.0
        self._begun = 0
        self.held = 0  # bytes of the frame in progress counted in the server's buffered_bytes

    def note(self, decoder: FrameDecoder) -> None:
        if decoder.frames_begun != self._begun:
            self._begun = decoder.frames_begun
            self.started = time.monotonic()


class _HandlerFailed(Exception):
    """The handler raised: the connection closes without an ACK."""


def _peer(writer: asyncio.StreamWriter) -> Peer:
    address = writer.get_extra_info("peername")
    if isinstance(address, tuple) and len(address) >= 2:
        return Peer(str(address[0]), int(address[1]))
    return Peer(str(address or "unknown"), 0)


def _describe(ack: bytes) -> tuple[str, str]:
    """MSA-1 and MSA-2 (the acknowledged control id) of an ACK, for the log; "?" when unreadable."""
    try:
        msa = next(s for s in Message(ack.decode("latin-1")).segments if s.name == "MSA")
    except (ER7Error, StopIteration):
        return "?", "?"
    return msa.raw(1) or "?", msa.raw(2) or "?"
