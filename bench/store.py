"""FHIR store benchmark: creates/s, reads/s and search-by-patient latency at growing store sizes.

Everything goes through a real `gateway serve` process over HTTP, as a client would see it. Stored
Observations are spread over patients, 100 each, so a search by patient always matches the same number of
resources whatever the store size: the figure shows how search cost grows with the store, not the result.
"""

from __future__ import annotations

import asyncio
import random
import time
import uuid
from typing import Any

import httpx

from bench.harness import (
    ClientCredentials,
    describe_ms,
    percentile,
    running_gateway,
    throwaway_database,
    timed_concurrently,
)
from gateway.service.access.clients import AuthService
from gateway.store import migrate
from gateway.store.database import Database

DEFAULT_PG_URL = "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
OBS_PER_PATIENT = 100
CREATES = 2000
READS = 5000
SEARCHES = 400
CONCURRENCY = 16
BUNDLE_SIZE = 250


def observation(patient_id: str, n: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/observation-category",
                        "code": "laboratory",
                    }
                ]
            }
        ],
        "code": {
            "coding": [{"system": "http://loinc.org", "code": random.choice(["718-7", "751-8", "1742-6"])}]
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": f"2024-{1 + n % 12:02d}-{1 + n % 28:02d}T08:00:00Z",
        "valueQuantity": {
            "value": round(random.uniform(1, 20), 1),
            "unit": "g/dL",
            "system": "http://unitsofmeasure.org",
            "code": "g/dL",
        },
    }


async def credentials(database_url: str, base_url: str) -> ClientCredentials:
    db = Database(database_url)
    try:
        await migrate.upgrade(db)
        client = await AuthService(db).add_client(f"bench-{uuid.uuid4().hex[:6]}", "system/*.cruds")
    finally:
        await db.dispose()
    return ClientCredentials(f"{base_url}/auth/token", client.client_id, client.client_secret or "")


class StoreBench:
    def __init__(self, http: httpx.AsyncClient) -> None:
        self.http = http
        self.stored = 0
        self.full_patients: list[str] = []  # patients with OBS_PER_PATIENT observations
        self.sample_ids: list[str] = []

    async def new_patient(self) -> str:
        answer = await self.http.post("/Patient", json={"resourceType": "Patient", "gender": "unknown"})
        answer.raise_for_status()
        return str(answer.json()["id"])

    async def creates(self) -> float:
        patients = [await self.new_patient() for _ in range(CREATES // OBS_PER_PATIENT)]

        async def create(i: int) -> None:
            answer = await self.http.post("/Observation", json=observation(patients[i // OBS_PER_PATIENT], i))
            answer.raise_for_status()
            if i % 10 == 0:
                self.sample_ids.append(answer.json()["id"])

        wall, _ = await timed_concurrently(CREATES, CONCURRENCY, create)
        self.stored += CREATES
        self.full_patients += patients
        return CREATES / wall

    async def fill_to(self, target: int) -> float:
        """Add whole patients' worth of observations through transaction Bundles until `target` are stored."""
        started, added = time.perf_counter(), 0
        while self.stored + OBS_PER_PATIENT <= target:
            patients = [
                await self.new_patient() for _ in range(min(4, (target - self.stored) // OBS_PER_PATIENT))
            ]
            entries = [
                {"resource": observation(p, n), "request": {"method": "POST", "url": "Observation"}}
                for p in patients
                for n in range(OBS_PER_PATIENT)
            ]
            chunks = [entries[i : i + BUNDLE_SIZE] for i in range(0, len(entries), BUNDLE_SIZE)]
            answers = await asyncio.gather(
                *[
                    self.http.post(
                        "",
                        json={"resourceType": "Bundle", "type": "transaction", "entry": chunk},
                        headers={"Prefer": "return=minimal"},
                    )
                    for chunk in chunks
                ]
            )
            for answer in answers:
                answer.raise_for_status()
            self.full_patients += patients
            self.stored += len(entries)
            added += len(entries)
        return added / max(time.perf_counter() - started, 1e-9)

    async def reads(self) -> float:
        async def read(i: int) -> None:
            (await self.http.get(f"/Observation/{random.choice(self.sample_ids)}")).raise_for_status()

        wall, _ = await timed_concurrently(READS, CONCURRENCY, read)
        return READS / wall

    async def searches(self) -> list[float]:
        async def search(i: int) -> None:
            answer = await self.http.get(
                "/Observation", params={"patient": random.choice(self.full_patients)}
            )
            answer.raise_for_status()
            assert answer.json()["total"] == OBS_PER_PATIENT

        await timed_concurrently(20, 1, search)  # warm caches and pools
        _, latencies = await timed_concurrently(SEARCHES, 1, search)
        return latencies


async def bench_backend(backend: str, sizes: list[int], postgres_url: str) -> dict[str, Any]:
    result: dict[str, Any] = {"backend": backend, "search": {}}
    async with throwaway_database(backend, postgres_url) as url, running_gateway(url) as server:
        auth = await credentials(url, server.base_url)
        limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
        async with httpx.AsyncClient(
            base_url=f"{server.base_url}/fhir",
            auth=auth,
            limits=limits,
            timeout=120,
        ) as http:
            bench = StoreBench(http)
            result["creates_per_s"] = await bench.creates()
            print(
                f"  {backend}: {result['creates_per_s']:.0f} creates/s (single POSTs, {CONCURRENCY} clients)"
            )
            for size in sizes:
                rate = await bench.fill_to(size)
                print(f"  {backend}: filled to {bench.stored} Observations ({rate:.0f}/s in Bundles)")
                if "reads_per_s" not in result:
                    result["reads_per_s"] = await bench.reads()
                    print(f"  {backend}: {result['reads_per_s']:.0f} reads/s ({CONCURRENCY} clients)")
                latencies = await bench.searches()
                result["search"][size] = latencies
                print(f"  {backend}: search by patient at {size}: {describe_ms(latencies)}")
    return result


async def run(backends: list[str], sizes: list[int], postgres_url: str) -> None:
    random.seed(7)
    print(f"FHIR store benchmark: sizes {sizes}, {OBS_PER_PATIENT} Observations per patient\n")
    results = [await bench_backend(b, sizes, postgres_url) for b in backends]
    print(
        "\nbackend     creates/s  reads/s  " + "  ".join(f"search p50 @{s:>7}" for s in sizes) + "  ratio p50"
    )
    for r in results:
        p50s = [percentile(r["search"][s], 0.5) * 1000 for s in sizes]
        cells = "  ".join(f"{p:>15.2f} ms" for p in p50s)
        ratio = p50s[-1] / p50s[0]
        rates = f"{r['creates_per_s']:>10.0f} {r['reads_per_s']:>8.0f}"
        print(f"{r['backend']:<10} {rates}  {cells}  {ratio:>8.2f}x")
