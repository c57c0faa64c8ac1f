"""The MLLP listener against real clients: python-hl7's MLLPClient, and raw sockets for abuse.

The handler is a fake pipeline that records what it receives and answers with `build_ack`. Its
behaviour is chosen by the message's control id: `FAIL...` raises, `SLOW...` waits for the test to
release it, anything else is acknowledged at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Callable

import pytest
import pytest_asyncio
from hl7.client import MLLPClient

from gateway.adapters.hl7v2.ack import build_ack, build_nak
from gateway.adapters.hl7v2.er7 import ER7Error, Message
from gateway.transports.mllp.framing import FrameDecoder, Oversized, encode
from gateway.transports.mllp.server import MLLPServer, Peer

HOST = "127.0.0.1"
TIMEOUT = 10.0  # generous: a failing test should fail, not hang


def adt(control_id: str, separator: str = "\r", bom: bool = False) -> str:
    lines = [
        f"MSH|^~\\&|LAB|HOSP|GW|CLINIC|20240101120000||ADT^A01^ADT_A01|{control_id}|P|2.5.1",
        "EVN|A01|20240101120000",
        "PID|1||MRN123^^^HOSP^MR||DOE^JANE||19800101|F",
    ]
    return ("\ufeff" if bom else "") + separator.join(lines) + separator


class FakePipeline:
    """Stands in for the ingest pipeline: records messages, answers AA (or AR when unreadable)."""

    def __init__(self) -> None:
        self.received: list[bytes] = []
        self.peers: list[Peer] = []
        self.release = asyncio.Event()
        self.waiting = 0  # SLOW messages currently held

    async def __call__(self, data: bytes, peer: Peer) -> bytes:
        text = data.decode("utf-8")
        try:
            message = Message(text)
        except ER7Error as exc:
            return build_nak(text, str(exc), control_id="NAK", timestamp="20240101").encode()
        if message.control_id.startswith("FAIL"):
            raise RuntimeError("store unavailable")
        if message.control_id.startswith("SLOW"):
            self.waiting += 1
            await self.release.wait()
            self.waiting -= 1
        self.received.append(data)
        self.peers.append(peer)
        return build_ack(message, "AA", control_id=f"ACK-{len(self.received)}", timestamp="20240101").encode()


@pytest.fixture
def pipeline() -> FakePipeline:
    return FakePipeline()


@pytest_asyncio.fixture
async def server(pipeline: FakePipeline) -> AsyncIterator[MLLPServer]:
    mllp = MLLPServer(pipeline)
    await mllp.start(HOST, 0)
    yield mllp
    pipeline.release.set()
    await mllp.stop()


def acknowledged(reply: bytes) -> tuple[str, str]:
    """(MSA-1, MSA-2) of one framed ACK."""
    [frame] = FrameDecoder(1 << 20).feed(reply)
    assert isinstance(frame, bytes)
    msa = next(s for s in Message(frame.decode()).segments if s.name == "MSA")
    return msa.raw(1), msa.raw(2)


def send_with_client(port: int, messages: list[str]) -> list[bytes]:
    """Send each message with python-hl7's MLLPClient, one at a time, and collect the framed replies."""
    replies = []
    with MLLPClient(HOST, port) as client:
        client.socket.settimeout(TIMEOUT)
        for message in messages:
            reply = client.send_message(message)
            while reply and not reply.endswith(b"\x1c\r"):  # MLLPClient reads once; an ACK may be split
                more = client.socket.recv(4096)
                if not more:
                    break
                reply += more
            replies.append(reply)
    return replies


def connect(port: int) -> socket.socket:
    sock = socket.create_connection((HOST, port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # so small writes leave as separate segments
    return sock


def read_frames(sock: socket.socket, count: int) -> list[bytes | Oversized]:
    """Read until `count` frames have arrived (or the server closes the connection)."""
    decoder = FrameDecoder(1 << 20)
    frames: list[bytes | Oversized] = []
    while len(frames) < count:
        data = sock.recv(65536)
        if not data:
            break
        frames += decoder.feed(data)
    return frames


def is_closed_by_server(sock: socket.socket) -> bool:
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


async def eventually(condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


# --- framing (pure) ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("chunks", "frames", "junk"),
    [
        ([b"\x0babc\x1c\r"], [b"abc"], 0),
        ([b"\x0babc\x1c", b"\r"], [b"abc"], 0),  # end block split between two reads
        ([b"\x0ba\x1cb\x1c\r"], [b"a\x1cb"], 0),  # FS without CR is content
        ([b"\x0ba\x1c", b"b\x1c\r"], [b"a\x1cb"], 0),  # ... also when it ends a read
        ([b"xy\x0ba\x1c\r\r\n\x0bb\x1c\r"], [b"a", b"b"], 4),  # junk before and between frames
        ([b"\x0babandoned\x0bnew\x1c\r"], [b"new"], 10),  # a new start block restarts the frame
        ([b"\x0ba\x1cb\x0bnew\x1c\r"], [b"new"], 4),  # ... also after an FS that is content
        ([b"\x0ba\x1c", b"\x1c\r\x0bb\x1c\r"], [b"a\x1c", b"b"], 0),  # a held FS that is content
        ([b"\x0bab", b"cd", b"\x1c\r"], [b"abcd"], 0),  # pieces joined once, in order
        ([b"\x0b\x1c\r"], [b""], 0),
    ],
)
def test_decoder_frames(chunks: list[bytes], frames: list[bytes], junk: int) -> None:
    decoder = FrameDecoder(100)

    found = [frame for chunk in chunks for frame in decoder.feed(chunk)]

    assert found == frames
    assert decoder.junk_bytes == junk
    assert decoder.pending_bytes == 0


def test_decoder_limit_is_inclusive_and_keeps_only_the_head_of_a_larger_message() -> None:
    decoder = FrameDecoder(10)

    assert decoder.feed(encode(b"0123456789")) == [b"0123456789"]
    assert decoder.feed(b"\x0bMSH|" + b"x" * 5000) == []
    assert decoder.pending_bytes == 5004
    [oversized] = decoder.feed(b"y" * 100 + b"\x1c\r")
    assert isinstance(oversized, Oversized)
    assert oversized.size == 5104
    assert oversized.head.startswith(b"MSH|xxx") and len(oversized.head) == 4096
    assert decoder.feed(encode(b"next")) == [b"next"]


# --- the server ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "message",
    [
        adt("CR-1"),
        adt("LF-1", separator="\n"),
        adt("CRLF-1", separator="\r\n"),
        adt("BOM-1", bom=True),
        adt("UTF8-1").replace("DOE^JANE", "MÜLLER^ZOË"),
    ],
    ids=["cr", "lf", "crlf", "bom", "utf8"],
)
async def test_message_arrives_byte_for_byte_and_is_acknowledged(
    server: MLLPServer, pipeline: FakePipeline, message: str
) -> None:
    [reply] = await asyncio.to_thread(send_with_client, server.port, [message])

    assert pipeline.received == [message.encode()]
    assert acknowledged(reply) == ("AA", Message(message).control_id)
    assert pipeline.peers[0].host == HOST


async def test_acks_follow_the_order_of_messages_on_a_connection(
    server: MLLPServer, pipeline: FakePipeline
) -> None:
    ids = [f"SEQ-{n}" for n in range(20)]

    replies = await asyncio.to_thread(send_with_client, server.port, [adt(i) for i in ids])

    assert [acknowledged(r)[1] for r in replies] == ids
    assert server.stats.messages == 20


async def test_two_messages_in_one_write_get_two_acks_in_order(
    server: MLLPServer, pipeline: FakePipeline
) -> None:
    def exchange() -> list[bytes | Oversized]:
        with connect(server.port) as sock:
            sock.sendall(encode(adt("PAIR-1").encode()) + encode(adt("PAIR-2").encode()))
            return read_frames(sock, 2)

    frames = await asyncio.to_thread(exchange)

    assert [acknowledged(encode(f)) for f in frames if isinstance(f, bytes)] == [
        ("AA", "PAIR-1"),
        ("AA", "PAIR-2"),
    ]
    assert len(pipeline.received) == 2


async def test_message_split_across_many_writes_arrives_whole(
    server: MLLPServer, pipeline: FakePipeline
) -> None:
    framed = encode(adt("SPLIT-1").encode())

    def exchange() -> list[bytes | Oversized]:
        with connect(server.port) as sock:
            for i in range(0, len(framed), 7):
                sock.sendall(framed[i : i + 7])
                time.sleep(0.002)
            return read_frames(sock, 1)

    [frame] = await asyncio.to_thread(exchange)

    assert pipeline.received == [adt("SPLIT-1").encode()]
    assert isinstance(frame, bytes) and acknowledged(encode(frame)) == ("AA", "SPLIT-1")


@pytest.mark.parametrize(
    "junk",
    [
        b"GET / HTTP/1.1\r\nHost: gateway\r\n\r\n",  # a stray HTTP probe
        bytes(range(256)),  # binary, including a start block that never ends
    ],
    ids=["text", "binary"],
)
async def test_junk_outside_frames_is_dropped_and_the_next_frame_served(
    server: MLLPServer, pipeline: FakePipeline, junk: bytes
) -> None:
    def exchange() -> list[bytes | Oversized]:
        with connect(server.port) as sock:
            sock.sendall(junk)
            time.sleep(0.05)  # let the junk arrive alone
            sock.sendall(encode(adt("AFTER-JUNK").encode()))
            return read_frames(sock, 1)

    [frame] = await asyncio.to_thread(exchange)

    assert isinstance(frame, bytes) and acknowledged(encode(frame)) == ("AA", "AFTER-JUNK")
    assert pipeline.received == [adt("AFTER-JUNK").encode()]
    assert server.stats.junk_bytes == len(junk)


async def test_oversized_message_gets_ar_and_the_connection_keeps_working(
    server: MLLPServer, pipeline: FakePipeline
) -> None:
    huge = adt("HUGE-1") + "OBX|1|ED|PDF||^AP^PDF^Base64^" + "A" * (10 * 1024 * 1024) + "\r"

    def exchange() -> list[bytes | Oversized]:
        with connect(server.port) as sock:
            sock.sendall(encode(huge.encode()))
            [nak] = read_frames(sock, 1)
            sock.sendall(encode(adt("AFTER-HUGE").encode()))
            return [nak, *read_frames(sock, 1)]

    nak, ack = await asyncio.to_thread(exchange)

    assert isinstance(nak, bytes) and isinstance(ack, bytes)
    assert acknowledged(encode(nak)) == ("AR", "HUGE-1")
    refusal = Message(nak.decode())
    assert [refusal.msh.raw(n) for n in (3, 4, 5, 6)] == ["GW", "CLINIC", "LAB", "HOSP"]
    err = next(s for s in refusal.segments if s.name == "ERR")
    assert err[3].c(1) == "104" and "too large" in err[8].text
    assert acknowledged(encode(ack)) == ("AA", "AFTER-HUGE")
    assert pipeline.received == [adt("AFTER-HUGE").encode()]
    assert server.stats.naks == 1


async def test_half_message_then_disconnect_is_never_handled_and_others_are_served(
    server: MLLPServer, pipeline: FakePipeline, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.mllp")
    half = encode(adt("HALF-1").encode())[:60]
    broken = connect(server.port)
    broken.sendall(half)
    await eventually(lambda: server.open_connections == 1)

    [reply] = await asyncio.to_thread(send_with_client, server.port, [adt("WHOLE-1")])
    broken.close()
    await eventually(lambda: server.open_connections == 0)

    assert acknowledged(reply) == ("AA", "WHOLE-1")
    assert pipeline.received == [adt("WHOLE-1").encode()]
    assert f"discarded_bytes={len(half) - 1}" in caplog.text  # the start block is not message data
    assert "DOE" not in caplog.text and "MRN123" not in caplog.text  # logs never carry content


async def test_handler_failure_closes_only_that_connection(
    server: MLLPServer, pipeline: FakePipeline
) -> None:
    def failing() -> bool:
        with connect(server.port) as sock:
            sock.sendall(encode(adt("FAIL-1").encode()))
            return is_closed_by_server(sock)

    with connect(server.port) as bystander:
        closed = await asyncio.to_thread(failing)

        def still_served() -> list[bytes | Oversized]:
            bystander.sendall(encode(adt("BYSTANDER-1").encode()))
            return read_frames(bystander, 1)

        [frame] = await asyncio.to_thread(still_served)

    assert closed, "the connection whose message failed is closed without an ACK"
    assert isinstance(frame, bytes) and acknowledged(encode(frame)) == ("AA", "BYSTANDER-1")
    assert server.stats.handler_errors == 1
    [again] = await asyncio.to_thread(send_with_client, server.port, [adt("RETRY-1")])
    assert acknowledged(again) == ("AA", "RETRY-1")


async def test_slow_handler_on_one_connection_does_not_delay_another(
    server: MLLPServer, pipeline: FakePipeline
) -> None:
    slow = asyncio.create_task(asyncio.to_thread(send_with_client, server.port, [adt("SLOW-1")]))
    await eventually(lambda: pipeline.waiting == 1)

    [fast] = await asyncio.to_thread(send_with_client, server.port, [adt("FAST-1")])

    assert acknowledged(fast) == ("AA", "FAST-1")
    assert not slow.done(), "the slow message is still being handled"
    pipeline.release.set()
    [late] = await slow
    assert acknowledged(late) == ("AA", "SLOW-1")


async def test_many_connections_at_once(server: MLLPServer, pipeline: FakePipeline) -> None:
    batches = [[adt(f"C{c}-M{m}") for m in range(5)] for c in range(10)]

    results = await asyncio.gather(*(asyncio.to_thread(send_with_client, server.port, b) for b in batches))

    for batch, replies in zip(batches, results, strict=True):
        assert [acknowledged(r)[1] for r in replies] == [Message(m).control_id for m in batch]
    assert len(pipeline.received) == 50
    assert server.stats.connections == 10


async def test_idle_connection_is_closed(pipeline: FakePipeline) -> None:
    mllp = MLLPServer(pipeline, idle_timeout=0.2)
    await mllp.start(HOST, 0)
    try:
        with connect(mllp.port) as sock:
            closed = await asyncio.to_thread(is_closed_by_server, sock)
    finally:
        await mllp.stop()

    assert closed


async def test_stop_closes_idle_and_mid_frame_connections_and_the_listener(
    server: MLLPServer, pipeline: FakePipeline
) -> None:
    port = server.port
    with connect(port) as idle, connect(port) as mid_frame:
        idle.sendall(encode(adt("BEFORE-STOP").encode()))
        await asyncio.to_thread(read_frames, idle, 1)
        mid_frame.sendall(b"\x0bMSH|^~\\&|partial")
        await eventually(lambda: server.open_connections == 2)

        await asyncio.wait_for(server.stop(), TIMEOUT)

        assert await asyncio.to_thread(is_closed_by_server, idle)
        assert await asyncio.to_thread(is_closed_by_server, mid_frame)
    with pytest.raises(ConnectionRefusedError):
        connect(port).close()
    assert pipeline.received == [adt("BEFORE-STOP").encode()]


async def test_stop_lets_a_message_in_progress_get_its_ack(
    server: MLLPServer, pipeline: FakePipeline
) -> None:
    in_flight = asyncio.create_task(asyncio.to_thread(send_with_client, server.port, [adt("SLOW-STOP")]))
    await eventually(lambda: pipeline.waiting == 1)

    stopping = asyncio.create_task(server.stop())
    await asyncio.sleep(0.05)
    assert not stopping.done(), "stop waits for the message being stored"
    pipeline.release.set()
    await asyncio.wait_for(stopping, TIMEOUT)

    [reply] = await in_flight
    assert acknowledged(reply) == ("AA", "SLOW-STOP")


# --- bounded: connection cap, frame and idle timeouts ------------------------------------------------


async def test_connections_over_the_cap_are_refused_at_once_and_logged(
    pipeline: FakePipeline, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.mllp")
    mllp = MLLPServer(pipeline, max_connections=2)
    await mllp.start(HOST, 0)
    try:
        first, second = connect(mllp.port), connect(mllp.port)
        await eventually(lambda: mllp.open_connections == 2)
        with connect(mllp.port) as third:
            assert await asyncio.to_thread(is_closed_by_server, third)
        assert mllp.stats.refused == 1
        assert "refused" in caplog.text and "max_connections=2" in caplog.text
        first.close()
        await eventually(lambda: mllp.open_connections == 1)
        [reply] = await asyncio.to_thread(send_with_client, mllp.port, [adt("AFTER-CAP")])
        assert acknowledged(reply) == ("AA", "AFTER-CAP")
        second.close()
    finally:
        await mllp.stop()


async def test_a_partial_frame_held_past_the_frame_timeout_is_dropped_and_the_connection_closed(
    pipeline: FakePipeline, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway.mllp")
    mllp = MLLPServer(pipeline, frame_timeout=0.3, idle_timeout=60)
    await mllp.start(HOST, 0)
    framed = encode(adt("TRICKLE-1").encode())
    try:

        def trickle() -> bool:
            """A byte every 50 ms: each read is recent, the frame as a whole is not."""
            with connect(mllp.port) as sock:
                for byte in framed[:-2]:
                    try:
                        sock.sendall(bytes([byte]))
                    except OSError:
                        return True
                    time.sleep(0.05)
                return is_closed_by_server(sock)

        assert await asyncio.to_thread(trickle)
    finally:
        await mllp.stop()
    assert pipeline.received == []
    assert mllp.stats.frame_timeouts == 1
    assert "frame not completed" in caplog.text


async def test_a_frame_completed_in_time_is_served_although_slow(pipeline: FakePipeline) -> None:
    mllp = MLLPServer(pipeline, frame_timeout=5.0)
    await mllp.start(HOST, 0)
    framed = encode(adt("STEADY-1").encode())
    try:

        def slowly() -> list[bytes | Oversized]:
            with connect(mllp.port) as sock:
                for i in range(0, len(framed), 40):
                    sock.sendall(framed[i : i + 40])
                    time.sleep(0.05)
                return read_frames(sock, 1)

        [frame] = await asyncio.to_thread(slowly)
    finally:
        await mllp.stop()
    assert isinstance(frame, bytes) and acknowledged(encode(frame)) == ("AA", "STEADY-1")


async def test_partial_frames_hold_at_most_the_buffer_budget_and_small_messages_still_flow(
    pipeline: FakePipeline,
) -> None:
    mllp = MLLPServer(pipeline, max_buffered_bytes=100_000, frame_timeout=2.0)
    await mllp.start(HOST, 0)
    holders = [connect(mllp.port) for _ in range(4)]
    try:
        for sock in holders:  # each starts a 1 MB message and sends 300 KB of it
            sock.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                sock.send(b"\x0bMSH|^~\\&|A|B|C|D|20240101||ADT^A01|H|P|2.5\r" + b"Z" * 300_000)
        await asyncio.sleep(0.3)
        assert 0 < mllp.buffered_bytes <= 100_000 + 4 * 64 * 1024  # a read per connection past it at most
        [reply] = await asyncio.to_thread(send_with_client, mllp.port, [adt("SMALL-1")])
        assert acknowledged(reply) == ("AA", "SMALL-1")
        await eventually(lambda: mllp.stats.frame_timeouts == 4)
        assert mllp.buffered_bytes == 0
    finally:
        for sock in holders:
            sock.close()
        await mllp.stop()
