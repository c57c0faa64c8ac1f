"""HL7 v2 ingest benchmark: messages/s end to end over MLLP (ACK after commit) for a six-OBX ORU,
next to hl7apy's bare `parse_message` rate on the same message.

A real `gateway serve` process per backend; the load comes from concurrent MLLP connections in this
process, each sending its next message when the previous ACK arrives (what interface engines do).
Every message has its own control id, patient and order, so each one creates resources.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from typing import Any

from bench.harness import percentile, running_gateway, throwaway_database

CONNECTIONS = 16
MESSAGES = 6000
WARMUP = 300
OBX = [
    ("718-7", "Hemoglobin", "13.2", "g/dL", "12.0-16.0", "N"),
    ("789-8", "Erythrocytes", "4.6", "10*6/uL", "4.2-5.4", "N"),
    ("6690-2", "Leukocytes", "3.1", "10*3/uL", "4.5-11.0", "L"),
    ("751-8", "Neutrophils", "1.2", "10*3/uL", "1.5-8.0", "L"),
    ("777-3", "Platelets", "210", "10*3/uL", "150-400", "N"),
    ("731-0", "Lymphocytes", "0.9", "10*3/uL", "1.0-4.8", "L"),
]


def six_obx_oru(n: int) -> str:
    segments = [
        "MSH|^~\\&|BENCHLAB|BENCH FACILITY|GATEWAY|SPECIALTY RX|20240301083000-0500"
        f"||ORU^R01^ORU_R01|B{n}|P|2.5.1",
        f"PID|1||BM{n % 2000}^^^BENCH&2.16.840.1.113883.19.99&ISO^MR||Benchmark^Pat||19700101|F",
        f"ORC|RE|P{n}^EHR|F{n}^LAB",
        f"OBR|1|P{n}^EHR|F{n}^LAB|57021-8^CBC W Auto Differential panel^LN|||20240301070000-0500"
        "|||||||||||||||20240301083000-0500|||F",  # OBR-22 report time, OBR-25 status
    ]
    for i, (code, name, value, unit, rng, flag) in enumerate(OBX, start=1):
        segments.append(
            f"OBX|{i}|NM|{code}^{name}^LN||{value}|{unit}^^UCUM|{rng}|{flag}|||F|||20240301080000-0500"
        )
    return "\r".join(segments) + "\r"


def hl7apy_parse_rate(seconds: float = 3.0) -> float:
    from hl7apy.parser import parse_message

    text = six_obx_oru(1)
    parse_message(text)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        parse_message(text)
        count += 1
    return count / (time.perf_counter() - started)


async def _send(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, message: str) -> bytes:
    writer.write(b"\x0b" + message.encode() + b"\x1c\x0d")
    await writer.drain()
    return await reader.readuntil(b"\x1c\x0d")


async def mllp_load(port: int, first: int, count: int) -> tuple[float, list[float]]:
    """Send `count` messages over CONNECTIONS connections; (messages/s, ACK latencies)."""
    latencies: list[float] = []
    next_n = first

    async def connection() -> None:
        nonlocal next_n
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
        try:
            while next_n < first + count:
                n = next_n
                next_n += 1
                sent = time.perf_counter()
                ack = await _send(reader, writer, six_obx_oru(n))
                latencies.append(time.perf_counter() - sent)
                if b"MSA|AA" not in ack:
                    raise RuntimeError(f"message {n} not accepted: {ack[:300]!r}")
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*[connection() for _ in range(CONNECTIONS)])
    return count / (time.perf_counter() - started), latencies


async def bench_backend(backend: str, postgres_url: str) -> dict[str, Any]:
    async with throwaway_database(backend, postgres_url) as url, running_gateway(url) as server:
        await mllp_load(server.mllp_port, 0, WARMUP)
        rate, latencies = await mllp_load(server.mllp_port, WARMUP, MESSAGES)
    return {"backend": backend, "rate": rate, "latencies": latencies}


async def run(backends: list[str], postgres_url: str) -> None:
    print(f"HL7 v2 ingest: six-OBX ORU^R01, {MESSAGES} messages over {CONNECTIONS} MLLP connections\n")
    parse_rate = hl7apy_parse_rate()
    print(f"  hl7apy parse_message alone: {parse_rate:,.0f} messages/s ({1000 / parse_rate:.2f} ms each)")
    results = []
    for backend in backends:
        result = await bench_backend(backend, postgres_url)
        lat = result["latencies"]
        print(
            f"  {backend}: {result['rate']:,.0f} messages/s end to end (ACK after commit);"
            f" ACK latency p50 {percentile(lat, 0.5) * 1000:.1f} ms,"
            f" p99 {percentile(lat, 0.99) * 1000:.1f} ms,"
            f" mean {statistics.fmean(lat) * 1000:.1f} ms"
        )
        results.append(result)
    print("\nbackend     messages/s   x hl7apy parse")
    for result in results:
        print(f"{result['backend']:<10} {result['rate']:>11,.0f}   {result['rate'] / parse_rate:>13.1f}x")
