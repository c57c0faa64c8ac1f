"""The audit trail's costs, apart from the noise of a whole server: what recording an event costs the
task that records it (the hot path), and how fast the background writer stores events per backend
(and so how long each batch holds SQLite's write lock).

The event recorded is an HL7 v2 import's (the message and its Patient): the one the ingest hot path
makes for every message."""

from __future__ import annotations

import time
from typing import Any

from bench.harness import throwaway_database
from gateway.fhir import dates
from gateway.fhir.audit import AuditRecord, build
from gateway.service.fhirapi.audit import AuditLog
from gateway.store import migrate
from gateway.store.database import Database

EVENTS = 20_000
BATCH = 1_000


def import_record(n: int) -> AuditRecord:
    record = AuditRecord(recorded_us=dates.now_us(), kind="import", subtype="R01", agent="127.0.0.1:40000")
    record.agent_kind, record.address = "mllp", "127.0.0.1"
    record.message = (f"log-{n}", f"C{n}", "ORU^R01")
    record.touch("Patient", f"p{n % 500}")
    return record


def recording_cost_us() -> tuple[float, float]:
    """Microseconds per event: recording (the request's share), building the JSON (the writer's)."""
    records = []
    started = time.perf_counter()
    for n in range(EVENTS):
        record = import_record(n)
        record.finish(0, "ACK AA")
        records.append(record)
    recorded = (time.perf_counter() - started) / EVENTS
    started = time.perf_counter()
    for n, record in enumerate(records):
        build(record, f"e{n}", "http://127.0.0.1:8080/fhir")
    built = (time.perf_counter() - started) / EVENTS
    return recorded * 1e6, built * 1e6


async def writer(backend: str, postgres_url: str) -> dict[str, Any]:
    async with throwaway_database(backend, postgres_url) as url:
        db = Database(url)
        try:
            await migrate.upgrade(db)
            audit = AuditLog(db, observer="bench", batch=BATCH, capacity=EVENTS)
            for n in range(EVENTS):
                audit.record(import_record(n))
            started = time.perf_counter()
            await audit.flush()
            elapsed = time.perf_counter() - started
            await audit.stop()
        finally:
            await db.dispose()
    return {"backend": backend, "rate": EVENTS / elapsed, "batch_ms": elapsed / (EVENTS / BATCH) * 1000}


async def run(backends: list[str], postgres_url: str) -> None:
    print(f"Audit trail: {EVENTS} HL7 v2 import events, batches of {BATCH}\n")
    recorded, built = recording_cost_us()
    print(f"  recording, on the request's task: {recorded:.1f} us/event")
    print(f"  building the AuditEvent JSON, on the writer's: {built:.1f} us/event")
    for backend in backends:
        result = await writer(backend, postgres_url)
        print(
            f"  {backend}: writer stores {result['rate']:,.0f} events/s"
            f" ({result['batch_ms']:.0f} ms per batch of {BATCH}, JSON included)"
        )
