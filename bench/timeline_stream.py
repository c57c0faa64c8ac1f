"""Live timeline benchmark: from the ACK of an ORU^R01 (sent after the commit) to the arrival of its entry on
an open `$timeline?_stream=true` server-sent event stream.

A real `gateway serve` per backend; one patient; one stream open on it; ORU^R01 messages with one OBX
each, sent one at a time over MLLP with python-hl7's client, the next once the previous entry arrived.
Each OBX carries its message's number as its value, so an event maps back to its message through the
entry's summary. Latency = arrival of the event - arrival of the ACK, both in this process
(time.perf_counter): how long after the sender knew the result was stored a stream heard of it. It can
be negative: the stream is woken at the commit, the ACK is written after it. Measured twice: with the
stream on the process that stored the message (woken after the commit), and on a second process on the
same database (it finds the commit by polling, every GATEWAY_TIMELINE_STREAM_POLL_SECONDS).
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import hl7
import httpx
import orjson
from hl7.mllp import open_hl7_connection

from bench.harness import percentile, running_gateway, throwaway_database
from bench.store import credentials

MESSAGES = 300  # per backend, the stream on the writing process
OTHER_PROCESS_MESSAGES = 60  # the stream on another process (each waits for its next poll)
WARMUP = 10
TIMEOUT_S = 10.0
MRN = "TLS-BENCH-1"
POLL_S = 0.5  # GATEWAY_TIMELINE_STREAM_POLL_SECONDS as shipped
VALUE = re.compile(r"^Neutrophils (\d+) ")


def oru(n: int) -> str:
    segments = [
        "MSH|^~\\&|BENCHLAB|BENCH FACILITY|GATEWAY|SPECIALTY RX|20240301083000-0500"
        f"||ORU^R01^ORU_R01|TS{n}|P|2.5.1",
        f"PID|1||{MRN}^^^BENCH&2.16.840.1.113883.19.99&ISO^MR||Benchmark^Pat||19700101|F",
        f"ORC|RE|TP{n}^EHR|TF{n}^LAB",
        f"OBR|1|TP{n}^EHR|TF{n}^LAB|57021-8^CBC W Auto Differential panel^LN|||20240301070000-0500"
        "|||||||||||||||20240301083000-0500|||F",
        f"OBX|1|NM|751-8^Neutrophils^LN||{1000 + n}|10*3/uL^^UCUM|1.5-8.0|H|||F|||20240301080000-0500",
    ]
    return "\r".join(segments) + "\r"


class Mllp:
    def __init__(self, reader: hl7.mllp.HL7StreamReader, writer: hl7.mllp.HL7StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    async def send(self, message: str) -> None:
        self.writer.writemessage(hl7.parse(message))
        await self.writer.drain()
        ack = await asyncio.wait_for(self.reader.readmessage(), TIMEOUT_S)
        code = str(ack.segment("MSA")[1])
        if code != "AA":
            raise RuntimeError(f"message not accepted: {code}")


@asynccontextmanager
async def mllp(port: int) -> AsyncIterator[Mllp]:
    reader, writer = await open_hl7_connection("127.0.0.1", port)
    try:
        yield Mllp(reader, writer)
    finally:
        writer.close()


class Listener:
    """Reads a stream; records when each message's observation entry arrived."""

    def __init__(self) -> None:
        self.arrived: dict[int, float] = {}
        self.waiting: dict[int, asyncio.Future[float]] = {}
        self.ready = asyncio.Event()

    async def run(self, http: httpx.AsyncClient, url: str, token: str) -> None:
        headers = {"Authorization": f"Bearer {token}", "Accept": "text/event-stream"}
        async with http.stream("GET", url, params={"_stream": "true"}, headers=headers) as response:
            response.raise_for_status()
            self.ready.set()
            async for line in response.aiter_lines():
                if not line.startswith("data: "):
                    continue
                at = time.perf_counter()
                entry = orjson.loads(line[6:])
                found = VALUE.match(entry["summary"]) if entry["kind"] == "observation" else None
                if found is None:
                    continue
                n = int(found.group(1)) - 1000
                self.arrived[n] = at
                waiter = self.waiting.pop(n, None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(at)

    async def arrival(self, n: int) -> float:
        if n in self.arrived:
            return self.arrived[n]
        waiter = self.waiting.setdefault(n, asyncio.get_running_loop().create_future())
        return await asyncio.wait_for(waiter, TIMEOUT_S)


async def measure(
    sender: Mllp, base_url: str, patient: str, token: str, first: int, count: int, pause: float = 0.0
) -> list[float]:
    listener = Listener()
    async with httpx.AsyncClient(timeout=httpx.Timeout(TIMEOUT_S, read=None)) as http:
        reading = asyncio.create_task(
            listener.run(http, f"{base_url}/fhir/Patient/{patient}/$timeline", token)
        )
        await asyncio.wait_for(listener.ready.wait(), TIMEOUT_S)
        latencies: list[float] = []
        try:
            for n in range(first, first + count):
                if pause:
                    await asyncio.sleep(random.uniform(0, pause))  # not in step with the other's polls
                await sender.send(oru(n))
                acked = time.perf_counter()
                latencies.append(await listener.arrival(n) - acked)
        finally:
            reading.cancel()
    return latencies


async def bench_backend(backend: str, postgres_url: str) -> dict[str, list[float]]:
    async with throwaway_database(backend, postgres_url) as url, running_gateway(url) as server:
        auth = await credentials(url, server.base_url)
        async with (
            httpx.AsyncClient(base_url=f"{server.base_url}/fhir", auth=auth) as api,
            mllp(server.mllp_port) as sender,
        ):
            await sender.send(oru(0))  # the patient
            found = (await api.get("/Patient", params={"identifier": MRN})).json()
            patient = found["entry"][0]["resource"]["id"]
            await api.get("/metadata")
            token = auth.token
            await measure(sender, server.base_url, patient, token, 1, WARMUP)
            same = await measure(sender, server.base_url, patient, token, 1 + WARMUP, MESSAGES)
            async with running_gateway(url) as other:
                first = 1 + WARMUP + MESSAGES
                await measure(sender, other.base_url, patient, token, first, 2)  # its pools and caches
                elsewhere = await measure(
                    sender, other.base_url, patient, token, first + 2, OTHER_PROCESS_MESSAGES, pause=POLL_S
                )
    return {"same process": same, "other process": elsewhere}


def describe(values: list[float]) -> str:
    return (
        f"p50 {percentile(values, 0.5) * 1000:7.2f} ms  p99 {percentile(values, 0.99) * 1000:7.2f} ms"
        f"  max {max(values) * 1000:7.2f} ms  n={len(values)}"
    )


async def run(backends: list[str], postgres_url: str) -> None:
    print("Live timeline: ORU^R01 over MLLP, ACK (after commit) -> entry on an open $timeline?_stream=true\n")
    for backend in backends:
        results = await bench_backend(backend, postgres_url)
        for where, values in results.items():
            print(f"  {backend:<10} stream on the {where:<13} {describe(values)}")
