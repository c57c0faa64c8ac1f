"""Poison inputs against a real `gateway serve`: does everyone else still get served?

For each poison input, while one connection sends it, this process measures (for at least `WINDOW`
seconds, and until the poison is answered):

- `/healthz` latency, one request every 20 ms on a keep-alive connection (p50, p99, max);
- the ACK latency of another MLLP sender, one six-OBX ORU every 50 ms on its own connection (p50, p99);
- the server's peak memory, sampled every 25 ms from /proc: the serving process's RSS, and the PSS of
  it and its worker processes together (shared pages counted once, so the sum is what they really use).

The acceptance bar: `/healthz` p99 under 100 ms, the other sender acknowledged throughout, the serving
process under 500 MB. `python -m bench poison [--backends sqlite,postgresql]`.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from bench.harness import ClientCredentials, percentile, running_gateway, throwaway_database
from bench.hl7 import six_obx_oru
from bench.store import credentials

WINDOW = 4.0  # seconds measured at least per input
MB = 1024 * 1024
# The server under test: MLLP frames up to 8 MB (so the 5 MB ORU reaches the parser rather than the
# framing limit), short frame and header timeouts (so holding them can be seen ending).
ENV = {
    "GATEWAY_MLLP_MAX_BYTES": str(8 * MB),
    "GATEWAY_MLLP_FRAME_TIMEOUT_SECONDS": "5",
    "GATEWAY_HTTP_HEADER_TIMEOUT_SECONDS": "2",
}


def oru(control_id: str, results: list[str], extra: list[str] | None = None) -> str:
    segments = [
        "MSH|^~\\&|POISON|BENCH|GATEWAY|SPECIALTY RX|20240301083000-0500"
        f"||ORU^R01^ORU_R01|{control_id}|P|2.5.1",
        f"PID|1||PM-{control_id}^^^BENCH&2.16.840.1.113883.19.99&ISO^MR||Poison^Pat||19700101|F",
        f"ORC|RE|P{control_id}^EHR|F{control_id}^LAB",
        f"OBR|1|P{control_id}^EHR|F{control_id}^LAB|57021-8^CBC^LN|||20240301070000-0500"
        "|||||||||||||||20240301083000-0500|||F",
        *results,
        *(extra or []),
    ]
    return "\r".join(segments) + "\r"


def obx(n: int, value: str = "1.2", code: str = "751-8") -> str:
    return f"OBX|{n}|NM|{code}^Result^LN||{value}|10*3/uL^^UCUM|1.5-8.0|L|||F|||20240301080000-0500"


def frame(text: str | bytes) -> bytes:
    return b"\x0b" + (text.encode() if isinstance(text, str) else text) + b"\x1c\r"


# --- measuring ------------------------------------------------------------------------------------


def _rss(pid: int) -> int:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def _pss(pid: int) -> int:
    """Proportional set size: pages shared with other processes (forked workers) counted once overall."""
    with contextlib.suppress(OSError), open(f"/proc/{pid}/smaps_rollup") as rollup:
        for line in rollup:
            if line.startswith("Pss:"):
                return int(line.split()[1]) * 1024
    return 0


def _children(pid: int) -> list[int]:
    found: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            text = (task / "children").read_text().split()
            found += [int(child) for child in text]
    return found + [grandchild for child in found for grandchild in _children(child)]


@dataclass
class Probe:
    """Background measurements while one poison input is being sent."""

    health: list[float] = field(default_factory=list)
    health_failures: int = 0
    acks: list[float] = field(default_factory=list)
    ack_failures: int = 0
    rss: int = 0  # the serving process's peak RSS
    rss_total: int = 0  # peak PSS of the serving process and its workers together


async def _probe_health(base_url: str, probe: Probe, stop: asyncio.Event) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        while not stop.is_set():
            started = time.perf_counter()
            try:
                (await http.get(f"{base_url}/healthz")).raise_for_status()
                probe.health.append(time.perf_counter() - started)
            except httpx.HTTPError:
                probe.health_failures += 1
            await asyncio.sleep(0.02)


async def _other_sender(port: int, probe: Probe, stop: asyncio.Event) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while not stop.is_set():
            message = six_obx_oru(int(uuid.uuid4().int % 10**9))
            started = time.perf_counter()
            writer.write(frame(message))
            await writer.drain()
            try:
                reply = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 30)
            except (TimeoutError, asyncio.IncompleteReadError):
                probe.ack_failures += 1
                return
            if b"MSA|AA|" in reply:
                probe.acks.append(time.perf_counter() - started)
            else:
                probe.ack_failures += 1
            await asyncio.sleep(0.05)
    finally:
        writer.close()


async def _sample_rss(pid: int, probe: Probe, stop: asyncio.Event) -> None:
    while not stop.is_set():
        own = _rss(pid)
        probe.rss = max(probe.rss, own)
        together = _pss(pid) + sum(_pss(child) for child in _children(pid))
        probe.rss_total = max(probe.rss_total, together)
        await asyncio.sleep(0.025)


async def _probe_until(server_pid: int, base_url: str, mllp_port: int, done: Any) -> Probe:
    probe, stop = Probe(), asyncio.Event()
    tasks = [
        asyncio.create_task(_probe_health(base_url, probe, stop)),
        asyncio.create_task(_other_sender(mllp_port, probe, stop)),
        asyncio.create_task(_sample_rss(server_pid, probe, stop)),
    ]
    while not done.is_set():
        await asyncio.sleep(0.05)
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    return probe


def _probe_process(server_pid: int, base_url: str, mllp_port: int, done: Any, results: Any) -> None:
    """The probes, in a process of their own: the poison sender's work must not delay them."""
    results.put(asyncio.run(_probe_until(server_pid, base_url, mllp_port, done)))


async def measured(
    server_pid: int, base_url: str, mllp_port: int, poison: Awaitable[str]
) -> tuple[Probe, str]:
    context = multiprocessing.get_context("spawn")
    done, results = context.Event(), context.Queue()
    prober = context.Process(target=_probe_process, args=(server_pid, base_url, mllp_port, done, results))
    prober.start()
    await asyncio.sleep(1.5)  # the probe process starts and begins measuring
    started = time.perf_counter()
    outcome = await poison
    await asyncio.sleep(max(0.0, WINDOW - (time.perf_counter() - started)))
    done.set()
    probe: Probe = await asyncio.to_thread(results.get, True, 60)
    await asyncio.to_thread(prober.join, 10)
    return probe, outcome


# --- the poison inputs ----------------------------------------------------------------------------


async def mllp_exchange(port: int, payload: str | bytes) -> str:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(frame(payload))
        await writer.drain()
        reply = await asyncio.wait_for(reader.readuntil(b"\x1c\r"), 120)
    except (TimeoutError, asyncio.IncompleteReadError, ConnectionError) as exc:
        return f"no answer ({type(exc).__name__})"
    finally:
        writer.close()
    text = reply.decode("latin-1")
    msa = next((s for s in text.split("\r") if s.startswith("MSA")), "MSA|?")
    err = next((s for s in text.split("\r") if s.startswith("ERR")), "")
    code = err.split("|")[3].split("^")[0] if err.count("|") >= 3 else ""
    return f"{msa.split('|')[1]} {code}".strip()


async def partial_frames(port: int, count: int, size: int) -> str:
    """`count` connections each holding an unfinished frame of `size` bytes, then one more."""
    writers: list[asyncio.StreamWriter] = []
    readers: list[asyncio.StreamReader] = []
    chunk = b"\x0bMSH|^~\\&|HOLD|BENCH|GW|RX|20240301||ORU^R01|H|P|2.5.1\r" + b"Z" * (size - 60)
    for _ in range(count):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(chunk)
        readers.append(reader)
        writers.append(writer)
    # One more while all of them are held (before waiting for the writes to drain: the server stops
    # reading connections past its buffer budget, and the frame timeout drops them in the end).
    extra_reader, extra = await asyncio.open_connection("127.0.0.1", port)
    try:
        refused = await asyncio.wait_for(extra_reader.read(1), 2) == b""
    except TimeoutError:
        refused = False  # accepted and waiting for a frame
    extra.close()
    await asyncio.gather(*(w.drain() for w in writers), return_exceptions=True)  # a reset: dropped already
    started = time.perf_counter()
    closed = await asyncio.gather(*(asyncio.wait_for(r.read(1), 30) for r in readers), return_exceptions=True)
    dropped = sum(1 for c in closed if c == b"" or isinstance(c, ConnectionError))
    held = time.perf_counter() - started
    for writer in writers:
        writer.close()
    return f"one more refused: {refused}; {dropped}/{count} dropped after {held:.1f}s more"


async def slow_headers(base_url: str, count: int) -> str:
    host, port = base_url.rsplit("/", 1)[-1].split(":")
    streams = [await asyncio.open_connection(host, int(port)) for _ in range(count)]
    started = time.perf_counter()
    for _, writer in streams:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
    closed = 0
    for _ in range(100):  # a header line every 100 ms, for at most 10 s
        for reader, writer in streams:
            if not reader.at_eof():
                with contextlib.suppress(ConnectionError):
                    writer.write(b"X-Slow: 1\r\n")
        await asyncio.sleep(0.1)
        closed = sum(1 for reader, _ in streams if reader.at_eof())
        if closed == count:
            break
    for _, writer in streams:
        writer.close()
    return f"{closed}/{count} closed after {time.perf_counter() - started:.1f}s"


async def http_post(http: httpx.AsyncClient, path: str, body: bytes, content_type: str) -> str:
    answer = await http.post(path, content=body, headers={"Content-Type": content_type}, timeout=120)
    return f"HTTP {answer.status_code}, {len(answer.content)} bytes"


def inputs(
    port: int, base_url: str, http: httpx.AsyncClient
) -> list[tuple[str, Callable[[], Awaitable[str]]]]:
    big = oru("BIG70K", [obx(n) for n in range(1, 70_001)])
    at_cap = oru("ATCAP", [obx(n, code=f"{10000 + n}-1") for n in range(1, 1997)])
    gets = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": "Patient"}}],
    }
    import orjson

    batch_1000 = orjson.dumps({**gets, "entry": gets["entry"] * 1000})
    batch_500 = orjson.dumps({**gets, "entry": gets["entry"] * 500})
    columns = "task_id,decision," + ",".join(f"c{n}" for n in range(100_000))
    return [
        (
            "NTE with \\.sp100000000\\ (MLLP)",
            lambda: mllp_exchange(port, oru("SP", [obx(1)], ["NTE|1||a\\.sp100000000\\b"])),
        ),
        ("NM of 4,300 digits (MLLP)", lambda: mllp_exchange(port, oru("NM", [obx(1, "9" * 4300)]))),
        (
            "NUL byte in OBX-3 (MLLP)",
            lambda: mllp_exchange(port, oru("NUL", [obx(1).replace("Result", "Re\x00sult")])),
        ),
        (f"ORU of 70,000 OBX, {len(big) / MB:.1f} MB (MLLP)", lambda: mllp_exchange(port, big)),
        (
            f"ORU of 1,996 OBX at the segment cap, {len(at_cap) / 1024:.0f} KB (MLLP)",
            lambda: mllp_exchange(port, at_cap),
        ),
        (
            "CSV status file with 1e1000000 (POST /payer/files)",
            lambda: http_post(
                http,
                "/payer/files",
                b"task_id,decision,authorized_quantity\nt1,approved,1e1000000\n",
                "text/csv",
            ),
        ),
        (
            "CSV header of 100,000 columns (POST /payer/files)",
            lambda: http_post(http, "/payer/files", (columns + "\nt1,approved\n").encode(), "text/csv"),
        ),
        (
            f"batch of 1,000 GETs, {len(batch_1000) // 1024} KB (POST /fhir)",
            lambda: http_post(http, "/fhir", batch_1000, "application/fhir+json"),
        ),
        (
            "batch of 500 GETs (POST /fhir)",
            lambda: http_post(http, "/fhir", batch_500, "application/fhir+json"),
        ),
        (
            "50 partial 4.5 MB frames held open, a 51st connection",
            lambda: partial_frames(port, 50, int(4.5 * MB)),
        ),
        ("100 HTTP clients trickling headers", lambda: slow_headers(base_url, 100)),
    ]


async def _seed(http: httpx.AsyncClient, count: int) -> None:
    """Patients for the batch GETs to return (a page of 20 each)."""
    for n in range(count):
        patient = {
            "resourceType": "Patient",
            "identifier": [{"system": "urn:bench", "value": f"P{n}"}],
            "name": [{"family": "Bench", "given": ["Pat"]}],
            "gender": "female",
        }
        (await http.post("/fhir/Patient", json=patient)).raise_for_status()


async def run(backends: list[str], postgres_url: str) -> None:
    print("Poison inputs against `gateway serve` (one sender of poison; /healthz every 20 ms; another")
    print("MLLP sender every 50 ms; peak RSS of the serving process, peak PSS of it and its workers)")
    for backend in backends:
        async with throwaway_database(backend, postgres_url) as url, running_gateway(url, ENV) as server:
            auth: ClientCredentials = await credentials(url, server.base_url)
            async with httpx.AsyncClient(base_url=server.base_url, auth=auth, timeout=120) as http:
                await _seed(http, 40)
                await asyncio.sleep(3)  # let the worker processes warm up
                print(f"\n{backend}:")
                print(
                    f"  {'input':58} {'answer':44} {'healthz p50/p99/max ms':>24}"
                    f" {'other ACK p50/p99 ms':>21}"
                    f" {'RSS MB':>7} {'PSS all':>8}"
                )
                for name, poison in inputs(server.mllp_port, server.base_url, http):
                    probe, outcome = await measured(
                        server.process.pid, server.base_url, server.mllp_port, poison()
                    )
                    health = (
                        "/".join(f"{percentile(probe.health, q) * 1000:.0f}" for q in (0.5, 0.99, 1.0))
                        if probe.health
                        else "-"
                    )
                    if probe.health_failures:
                        health += f" ({probe.health_failures} failed)"
                    acks = (
                        f"{percentile(probe.acks, 0.5) * 1000:.0f}/{percentile(probe.acks, 0.99) * 1000:.0f}"
                        if probe.acks
                        else "-"
                    ) + (f" ({probe.ack_failures} failed)" if probe.ack_failures else "")
                    print(
                        f"  {name:58} {outcome[:44]:44} {health:>24} {acks:>21}"
                        f" {probe.rss / MB:7.0f} {probe.rss_total / MB:8.0f}"
                    )
