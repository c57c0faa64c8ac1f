"""CDS Hooks `order-sign` latency: POST /cds-services/specialty-pa through the whole HTTP app (bearer token,
routing, the store reads, the rules) in-process over ASGI, per backend.

The store holds PATIENTS patients, each with an active Coverage of the example payer (`acme-health` of
mappings/coverage/default.yaml) and LABS results (every fifth an ANC, the rest other codes, dates spread
over the last 90 days). Each call is one draft clozapine order of a random patient, Coverage read from the
store (no prefetch): the costlier path. The goal is p99 under 200 ms.
"""

from __future__ import annotations

import random
import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson

from bench.harness import percentile, throwaway_database, timed_concurrently
from gateway.pa.payers import parse_payers
from gateway.service.access.context import RequestContext
from gateway.service.gateway import Gateway
from gateway.settings import Settings
from gateway.transports.http.app import create_app

PATIENTS = 500
LABS = 25
CALLS = 1000
CONCURRENCY = (1, 8)
SCOPE = "system/Patient.rs system/Coverage.rs system/Observation.rs system/MedicationRequest.rs"
NOW = datetime.now(UTC)


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    return {
        "fullUrl": f"urn:uuid:{uuid.uuid4()}",
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }


def patient_bundle(n: int, insurer: str) -> bytes:
    patient = _entry({"resourceType": "Patient", "identifier": [{"system": "urn:bench", "value": str(n)}]})
    subject = {"reference": patient["fullUrl"]}
    coverage = _entry(
        {
            "resourceType": "Coverage",
            "status": "active",
            "beneficiary": subject,
            "payor": [{"reference": insurer}],
        }
    )
    labs = []
    for k in range(LABS):
        code = "751-8" if k % 5 == 0 else ("718-7", "777-3", "1742-6", "2160-0")[k % 4]
        labs.append(
            _entry(
                {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                    "subject": subject,
                    "effectiveDateTime": (NOW - timedelta(days=(n + k * 7) % 90)).isoformat(
                        timespec="seconds"
                    ),
                    "valueQuantity": {"value": 2.1, "unit": "10*3/uL", "system": "http://unitsofmeasure.org"},
                }
            )
        )
    return orjson.dumps(
        {"resourceType": "Bundle", "type": "transaction", "entry": [patient, coverage, *labs]}
    )


def order_sign(patient: str) -> dict[str, Any]:
    draft = {
        "resourceType": "MedicationRequest",
        "id": str(uuid.uuid4()),
        "status": "draft",
        "intent": "order",
        "subject": {"reference": f"Patient/{patient}"},
        "medicationCodeableConcept": {"text": "clozapine 100 MG Oral Tablet"},
        "dispenseRequest": {"quantity": {"value": 60}, "expectedSupplyDuration": {"value": 30, "code": "d"}},
    }
    return {
        "hook": "order-sign",
        "hookInstance": str(uuid.uuid4()),
        "context": {
            "userId": "Practitioner/bench",
            "patientId": patient,
            "draftOrders": {"resourceType": "Bundle", "type": "collection", "entry": [{"resource": draft}]},
        },
    }


async def one_backend(backend: str, postgres_url: str) -> None:
    async with throwaway_database(backend, postgres_url) as url:
        gateway = await Gateway.start(Settings(database_url=url))
        try:
            ctx = RequestContext(base_url="http://bench/fhir")
            insurer = await gateway.fhir.create(
                ctx, "Organization", b'{"resourceType": "Organization", "name": "Acme Health"}', None
            )
            assert insurer.stored is not None
            insurer_ref = f"Organization/{insurer.stored.id}"
            gateway.priorauth.payers = parse_payers(
                {
                    "payers": [
                        {
                            "name": "acme-health",
                            "base_url": "http://127.0.0.1:9/fhir",
                            "insurers": [insurer_ref],
                        }
                    ]
                }
            )
            started = time.perf_counter()
            patients = []
            for n in range(PATIENTS):
                answer = await gateway.bundles.process(ctx, patient_bundle(n, insurer_ref))
                assert answer.status == 200, answer.body
                patients.append(
                    orjson.loads(answer.body or b"{}")["entry"][0]["response"]["location"].split("/")[1]
                )
            print(
                f"  {backend}: loaded {PATIENTS} patients ({LABS} results each)"
                f" in {time.perf_counter() - started:.1f} s"
            )
            client = await gateway.auth.add_client("bench-cds", SCOPE)
            app = create_app(gateway.settings, gateway)
            async with httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app), base_url="http://bench"
            ) as http:
                token = await http.post(
                    "/auth/token",
                    data={"grant_type": "client_credentials"},
                    auth=(client.client_id, client.client_secret or ""),
                )
                http.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
                pick = random.Random(7)
                bodies = [orjson.dumps(order_sign(pick.choice(patients))) for _ in range(CALLS)]
                cards = 0

                async def call(i: int) -> None:
                    nonlocal cards
                    answer = await http.post(
                        "/cds-services/specialty-pa",
                        content=bodies[i],
                        headers={"Content-Type": "application/json"},
                    )
                    assert answer.status_code == 200, answer.text
                    cards += len(answer.json()["cards"])

                await timed_concurrently(20, 1, call)  # warm-up: caches, connections
                for concurrency in CONCURRENCY:
                    cards = 0
                    wall, latencies = await timed_concurrently(CALLS, concurrency, call)
                    print(
                        f"    order-sign x{CALLS}, {concurrency} at a time:"
                        f" p50 {percentile(latencies, 0.5) * 1000:.1f} ms"
                        f"  p99 {percentile(latencies, 0.99) * 1000:.1f} ms  {CALLS / wall:,.0f} calls/s"
                        f"  ({cards / CALLS:.1f} cards per call)"
                    )
        finally:
            await gateway.close()


async def run(backends: list[str], postgres_url: str) -> None:
    print(
        f"CDS Hooks order-sign: {PATIENTS} patients, {CALLS} calls, in-process over ASGI"
        " (goal: p99 < 200 ms)\n"
    )
    for backend in backends:
        await one_backend(backend, postgres_url)
