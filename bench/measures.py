"""The pharmacist measures' cost: `$evaluate-measure` for one patient, for a pharmacist's caseload and over
every patient, and one computation of the `/metrics` gauges, per backend.

The store holds PATIENTS patients, each with three clozapine dispenses in the last 120 days, an order with
its first dispense, an alert Task and a monitoring CarePlan of four activities with one result; one
pharmacist is assigned CASELOAD of them. Loaded in-process through transaction Bundles (validation and
indexing included), then timed in-process (no HTTP): what the figures show is the reading and computing.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from bench.harness import throwaway_database
from gateway.pharmacist import vocabulary as vocab
from gateway.service.access.context import RequestContext
from gateway.service.gateway import Gateway
from gateway.service.pharmacist.matching import CARE_TEAM_CATEGORY, PHARMACIST_ASSIGNMENT
from gateway.service.pharmacist.measure_gauges import MeasureGauges
from gateway.service.pharmacist.measures import MeasureService
from gateway.settings import Settings

PATIENTS = 2000
CASELOAD = 100
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
TODAY = datetime.now(UTC).date()
MONITORING = {"coding": [{"system": vocab.CARE_PLAN_CATEGORY, "code": vocab.MONITORING_CALENDAR}]}
YEAR = [("periodStart", (TODAY - timedelta(days=364)).isoformat()), ("periodEnd", TODAY.isoformat())]


def _ago(days: int) -> str:
    return (TODAY - timedelta(days=days)).isoformat()


def _entry(resource: dict[str, Any]) -> dict[str, Any]:
    full_url = f"urn:uuid:{uuid.uuid4()}"
    return {
        "fullUrl": full_url,
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"]},
    }


def patient_bundle(n: int, role: str | None) -> bytes:
    patient = _entry({"resourceType": "Patient", "identifier": [{"system": "urn:bench", "value": str(n)}]})
    subject = {"reference": patient["fullUrl"]}
    order = _entry(
        {
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "subject": subject,
            "medicationCodeableConcept": {"text": "clozapine 100 MG Oral Tablet"},
            "authoredOn": _ago(40),
        }
    )
    entries = [patient, order]
    for days, supply in ((120, 30), (85, 30), (40, 30)):
        dispense: dict[str, Any] = {
            "resourceType": "MedicationDispense",
            "status": "completed",
            "subject": subject,
            "medicationCodeableConcept": {
                "coding": [{"system": RXNORM, "code": "1", "display": "clozapine 100 MG"}]
            },
            "whenHandedOver": _ago(days - n % 7),
            "daysSupply": {
                "value": supply,
                "unit": "day",
                "system": "http://unitsofmeasure.org",
                "code": "d",
            },
        }
        if days == 40:
            dispense["authorizingPrescription"] = [{"reference": order["fullUrl"]}]
        entries.append(_entry(dispense))
    result = _entry(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "ANC"},
            "subject": subject,
            "effectiveDateTime": _ago(20),
        }
    )
    entries.append(result)
    entries.append(
        _entry(
            {
                "resourceType": "Task",
                "status": "accepted",
                "intent": "order",
                "for": subject,
                "code": {"coding": [{"system": vocab.WORK_ITEM_TYPE, "code": vocab.ALERT}]},
                "authoredOn": f"{_ago(n % 30)}T08:00:00Z",
            }
        )
    )
    activities = []
    for end in (60, 40, 20, 5):
        detail = {
            "kind": "ServiceRequest",
            "status": "completed" if end == 20 else "scheduled",
            "scheduledPeriod": {"start": _ago(end + 7), "end": _ago(end)},
        }
        activity: dict[str, Any] = {"detail": detail}
        if end == 20:
            activity["outcomeReference"] = [{"reference": result["fullUrl"]}]
        activities.append(activity)
    entries.append(
        _entry(
            {
                "resourceType": "CarePlan",
                "status": "active",
                "intent": "plan",
                "subject": subject,
                "category": [MONITORING],
                "activity": activities,
            }
        )
    )
    if role is not None:
        entries.append(
            _entry(
                {
                    "resourceType": "CareTeam",
                    "status": "active",
                    "subject": subject,
                    "category": [{"coding": [{"system": CARE_TEAM_CATEGORY, "code": PHARMACIST_ASSIGNMENT}]}],
                    "participant": [{"member": {"reference": role}, "period": {"start": _ago(200)}}],
                }
            )
        )
    return orjson.dumps({"resourceType": "Bundle", "type": "transaction", "entry": entries})


async def _timed(label: str, call: Any, repeat: int = 1) -> float:
    started = time.perf_counter()
    for _ in range(repeat):
        outcome = await call()
    elapsed = (time.perf_counter() - started) / repeat
    status = getattr(outcome, "status", "")
    print(f"    {label}: {elapsed * 1000:,.1f} ms {status}")
    return elapsed


async def one_backend(backend: str, postgres_url: str) -> None:
    async with throwaway_database(backend, postgres_url) as url:
        gateway = await Gateway.start(Settings(database_url=url))
        try:
            ctx = RequestContext(base_url="http://bench/fhir")
            body = b'{"resourceType": "Practitioner"}'
            practitioner = await gateway.fhir.create(ctx, "Practitioner", body, None)
            assert practitioner.stored is not None
            practitioner_id = practitioner.stored.id
            role_body = orjson.dumps(
                {
                    "resourceType": "PractitionerRole",
                    "practitioner": {"reference": f"Practitioner/{practitioner_id}"},
                }
            )
            role = await gateway.fhir.create(ctx, "PractitionerRole", role_body, None)
            assert role.stored is not None
            started = time.perf_counter()
            first_patient = ""
            for n in range(PATIENTS):
                answer = await gateway.bundles.process(
                    ctx, patient_bundle(n, f"PractitionerRole/{role.stored.id}" if n < CASELOAD else None)
                )
                assert answer.status == 200, answer.body
                if n == 0:
                    location = orjson.loads(answer.body or b"{}")["entry"][0]["response"]["location"]
                    first_patient = location.split("/")[1]
            print(f"  {backend}: loaded {PATIENTS} patients in {time.perf_counter() - started:.1f} s")
            service = MeasureService(gateway.fhir, gateway.profiles.resources())
            for measure in ("pdc", "time-to-first-dose", "alert-response", "monitoring-adherence"):
                print(f"   {measure}")
                await _timed(
                    "one patient",
                    lambda m=measure: service.evaluate(
                        ctx, m, [*YEAR, ("subject", f"Patient/{first_patient}")]
                    ),
                    repeat=5,
                )
                await _timed(
                    f"a pharmacist's {CASELOAD} patients",
                    lambda m=measure: service.evaluate(
                        ctx, m, [*YEAR, ("subject", f"Practitioner/{practitioner_id}")]
                    ),
                )
                await _timed(f"all {PATIENTS} patients", lambda m=measure: service.evaluate(ctx, m, YEAR))
            gauges = MeasureGauges(service, period_days=365, refresh_s=300)
            values = await gauges.compute(service.now())
            print(f"   /metrics gauges (four measures, everyone): {values.duration_s * 1000:,.0f} ms")
        finally:
            await gateway.close()


async def run(backends: list[str], postgres_url: str) -> None:
    print(f"Pharmacist measures: {PATIENTS} patients ({CASELOAD} assigned to one pharmacist), in-process\n")
    for backend in backends:
        await one_backend(backend, postgres_url)
