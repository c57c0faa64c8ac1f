"""The pharmacist measures: `Measure` definitions, `$evaluate-measure` (individual, a pharmacist's
patients, everyone), scopes, bad parameters, the audit trail, and the same figures on `/metrics`.

Dates are relative to today (UTC): the gauges cover the trailing GATEWAY_MEASURES_PERIOD_DAYS (365)
ending today, and a summary MeasureReport over that period must show the same PDC.

PDC, by hand (day 0 = the index date, the first fill in the period; the period ends today):
- p1: d1 today-100, 30 days -> days 0..29; d2 today-80 (a strength switch: 200 MG), 30 days, overlaps d1
  -> shifted to days 30..59; gap days 60..69; d3 today-30, 30 days -> days 70..99 (today-30 .. today-1).
  Covered 90 of 101 days (today-100 .. today) = 0.8911: adherent.
- p2: today-60, 10 days and today-30, 10 days: covered 20 of 61 days = 0.3279: not adherent.
- p3: one fill: in the initial population only.
Everyone: initial population 3, denominator 2, numerator 1 (0.5); mean PDC (90/101 + 20/61) / 2 = 0.6095.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from gateway.fhir import dates
from gateway.pharmacist import vocabulary as vocab
from gateway.service.gateway import Gateway
from gateway.service.pharmacist.matching import CARE_TEAM_CATEGORY, PHARMACIST_ASSIGNMENT
from gateway.transports.http.app import create_app
from tests import factories as f
from tests.api.test_patient_timeline import anc
from tests.conftest import ClientFactory

pytestmark = pytest.mark.asyncio

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
MEASURE = "https://specialty-gateway.org/fhir/Measure"
DUE = "https://specialty-gateway.org/fhir/StructureDefinition/pa-decision-due"
TODAY = datetime.now(UTC).date()
YEAR = {"periodStart": (TODAY - timedelta(days=364)).isoformat(), "periodEnd": TODAY.isoformat()}


def ago(days: int) -> str:
    return (TODAY - timedelta(days=days)).isoformat()


def instant(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


async def create(api: httpx.AsyncClient, resource: dict[str, Any]) -> dict[str, Any]:
    answer = await api.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert answer.status_code == 201, answer.text
    created: dict[str, Any] = answer.json()
    return created


async def put(api: httpx.AsyncClient, resource: dict[str, Any]) -> dict[str, Any]:
    answer = await api.put(f"/fhir/{resource['resourceType']}/{resource['id']}", json=resource)
    assert answer.status_code == 200, answer.text
    stored: dict[str, Any] = answer.json()
    return stored


def dispense(patient: str, handed_over: str, days: int, strength: int = 100, **extra: Any) -> dict[str, Any]:
    name = f"clozapine {strength} MG Oral Tablet"
    return {
        "resourceType": "MedicationDispense",
        "status": "completed",
        "medicationCodeableConcept": {
            "coding": [{"system": RXNORM, "code": f"c{strength}", "display": name}]
        },
        "subject": {"reference": f"Patient/{patient}"},
        "whenHandedOver": handed_over,
        "daysSupply": {"value": days, "unit": "day", "system": "http://unitsofmeasure.org", "code": "d"},
        **extra,
    }


async def evaluate(api: httpx.AsyncClient, measure: str, **params: str) -> dict[str, Any]:
    answer = await api.get(f"/fhir/Measure/{measure}/$evaluate-measure", params=params)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/fhir+json")
    report: dict[str, Any] = answer.json()
    assert report["resourceType"] == "MeasureReport" and report["status"] == "complete"
    return report


def group(report: dict[str, Any], code: str) -> dict[str, Any]:
    return next(g for g in report["group"] if g["code"]["coding"][0]["code"] == code)


def populations(report: dict[str, Any], code: str) -> dict[str, int]:
    return {p["code"]["coding"][0]["code"]: p["count"] for p in group(report, code)["population"]}


def score(report: dict[str, Any], code: str) -> float | None:
    found = group(report, code).get("measureScore")
    return None if found is None else float(found["value"])


def gauge(metrics: str, name: str, labels: str = "") -> float | None:
    match = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", metrics, re.MULTILINE)
    return float(match.group(1)) if match else None


async def adherence_story(api: httpx.AsyncClient) -> dict[str, str]:
    """Three patients' dispenses (module docstring); their ids."""
    ids = {name: (await create(api, f.patient()))["id"] for name in ("p1", "p2", "p3")}
    for resource in (
        dispense(ids["p1"], ago(100), 30),
        dispense(ids["p1"], ago(80), 30, strength=200),
        dispense(ids["p1"], ago(30), 30, strength=200),
        dispense(ids["p1"], ago(50), 30, status="cancelled"),  # not counted
        dispense(ids["p2"], ago(60), 10),
        dispense(ids["p2"], ago(30), 10),
        dispense(ids["p3"], ago(10), 30),
    ):
        await create(api, resource)
    return ids


async def pharmacist(api: httpx.AsyncClient, patients: list[str]) -> str:
    """A pharmacist (Practitioner and PractitionerRole) assigned to these patients; the Practitioner's id."""
    practitioner = (await create(api, {"resourceType": "Practitioner", "name": [{"family": "Rx"}]}))["id"]
    role = await create(
        api,
        {
            "resourceType": "PractitionerRole",
            "active": True,
            "practitioner": {"reference": f"Practitioner/{practitioner}"},
            "code": [{"coding": [{"system": "http://snomed.info/sct", "code": "46255001"}]}],
        },
    )
    for patient in patients:
        await create(
            api,
            {
                "resourceType": "CareTeam",
                "status": "active",
                "category": [{"coding": [{"system": CARE_TEAM_CATEGORY, "code": PHARMACIST_ASSIGNMENT}]}],
                "subject": {"reference": f"Patient/{patient}"},
                "participant": [
                    {"member": {"reference": f"PractitionerRole/{role['id']}"}, "period": {"start": ago(200)}}
                ],
            },
        )
    return str(practitioner)


# -- the definitions ----------------------------------------------------------------------------------


async def test_measures_are_served_read_only(api: httpx.AsyncClient, client_factory: ClientFactory) -> None:
    bundle = (await api.get("/fhir/Measure")).json()
    ids = sorted(e["resource"]["id"] for e in bundle["entry"])
    assert ids == ["alert-response", "monitoring-adherence", "pa-turnaround", "pdc", "time-to-first-dose"]
    assert bundle["total"] == 5
    anyone = await client_factory("system/Patient.r")  # any valid token: no patient data in a Measure
    pdc = (await anyone.get("/fhir/Measure/pdc")).json()
    assert pdc["url"] == f"{MEASURE}/pdc" and pdc["resourceType"] == "Measure"
    by_url = (await anyone.get("/fhir/Measure", params={"url": f"{MEASURE}/pa-turnaround"})).json()
    assert [e["resource"]["id"] for e in by_url["entry"]] == ["pa-turnaround"]
    assert (await api.get("/fhir/Measure/nope")).status_code == 404
    assert (await api.post("/fhir/Measure", json=pdc)).status_code in (404, 405)
    assert (await api.get("/fhir/Measure", headers={"Authorization": "Bearer nonsense"})).status_code == 401


async def test_the_capability_statement_lists_measure_and_evaluate_measure(api: httpx.AsyncClient) -> None:
    statement = (await api.get("/fhir/metadata")).json()
    measure = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Measure")
    assert {i["code"] for i in measure["interaction"]} == {"read", "search-type"}
    assert {
        "name": "evaluate-measure",
        "definition": "http://hl7.org/fhir/OperationDefinition/Measure-evaluate-measure",
    } in measure["operation"]


# -- PDC ----------------------------------------------------------------------------------------------


async def test_an_individual_pdc_report_matches_the_hand_calculation(api: httpx.AsyncClient) -> None:
    ids = await adherence_story(api)
    report = await evaluate(api, "pdc", subject=f"Patient/{ids['p1']}", **YEAR)
    assert report["type"] == "individual" and report["subject"] == {"reference": f"Patient/{ids['p1']}"}
    assert report["measure"] == f"{MEASURE}/pdc" and report["period"] == {"start": ago(364), "end": ago(0)}
    assert populations(report, "adherent") == {"initial-population": 1, "denominator": 1, "numerator": 1}
    assert score(report, "adherent") == 1.0
    assert score(report, "pdc") == round(90 / 101, 4) == 0.8911
    stratum = group(report, "pdc")["stratifier"][0]["stratum"]
    assert [(s["value"]["text"], s["measureScore"]["value"]) for s in stratum] == [("clozapine", 0.8911)]
    assert len(report["evaluatedResource"]) == 3  # the three fills counted (not the cancelled one)
    p2 = await evaluate(api, "pdc", subject=f"Patient/{ids['p2']}", **YEAR)
    assert (score(p2, "adherent"), score(p2, "pdc")) == (0.0, round(20 / 61, 4))
    p3 = await evaluate(api, "pdc", subject=f"Patient/{ids['p3']}", **YEAR)
    assert populations(p3, "adherent") == {"initial-population": 1, "denominator": 0, "numerator": 0}
    assert score(p3, "pdc") is None


async def test_summaries_over_everyone_and_over_a_pharmacists_patients(api: httpx.AsyncClient) -> None:
    ids = await adherence_story(api)
    everyone = await evaluate(api, "pdc", **YEAR)
    assert everyone["type"] == "summary" and "subject" not in everyone
    assert populations(everyone, "adherent") == {"initial-population": 3, "denominator": 2, "numerator": 1}
    assert score(everyone, "adherent") == 0.5
    assert score(everyone, "pdc") == 0.6095
    assert "evaluatedResource" not in everyone
    mine = await pharmacist(api, [ids["p1"], ids["p3"]])
    theirs = await evaluate(api, "pdc", subject=f"Practitioner/{mine}", **YEAR)
    assert theirs["type"] == "summary" and theirs["subject"] == {"reference": f"Practitioner/{mine}"}
    assert populations(theirs, "adherent") == {"initial-population": 2, "denominator": 1, "numerator": 1}
    assert score(theirs, "pdc") == 0.8911
    same = await evaluate(api, "pdc", practitioner=f"Practitioner/{mine}", **YEAR)  # R4's own parameter
    assert same["group"] == theirs["group"]
    nobody = await pharmacist(api, [])
    empty = await evaluate(api, "pdc", subject=f"Practitioner/{nobody}", **YEAR)
    assert populations(empty, "adherent")["initial-population"] == 0 and score(empty, "pdc") is None


async def test_a_pharmacist_whose_assignment_ended_no_longer_counts_the_patient(
    api: httpx.AsyncClient,
) -> None:
    ids = await adherence_story(api)
    mine = await pharmacist(api, [ids["p1"]])
    team = (await api.get("/fhir/CareTeam", params={"patient": ids["p1"]})).json()["entry"][0]["resource"]
    team["participant"][0]["period"]["end"] = ago(1)
    await put(api, team)
    report = await evaluate(api, "pdc", subject=f"Practitioner/{mine}", **YEAR)
    assert populations(report, "adherent")["initial-population"] == 0


async def test_the_same_pdc_on_metrics_and_in_the_summary_report(
    gateway: Gateway, api: httpx.AsyncClient
) -> None:
    await adherence_story(api)
    report = await evaluate(api, "pdc", **YEAR)
    metrics = (await api.get("/metrics")).text
    assert gauge(metrics, "gateway_pdc_mean") == score(report, "pdc") == 0.6095
    assert gauge(metrics, "gateway_pdc_patients", '{band="adherent"}') == 1
    assert gauge(metrics, "gateway_pdc_patients", '{band="non_adherent"}') == 1
    assert gauge(metrics, "gateway_measures_period_days") == 365
    assert "Patient/" not in metrics and "clozapine" not in metrics  # aggregates only


async def test_a_scrape_within_the_refresh_interval_does_not_recompute(
    gateway: Gateway, api: httpx.AsyncClient
) -> None:
    ids = await adherence_story(api)
    first = (await api.get("/metrics")).text
    computed = gauge(first, "gateway_measures_computed_timestamp_seconds")
    await create(api, dispense(ids["p3"], ago(5), 30))  # p3 now has two fills: the denominator grows
    second = (await api.get("/metrics")).text
    assert gauge(second, "gateway_measures_computed_timestamp_seconds") == computed
    assert gauge(second, "gateway_pdc_patients", '{band="non_adherent"}') == 1  # the cached figures
    fresh_app = create_app(gateway.settings.model_copy(update={"measures_refresh_seconds": 0}), gateway)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=fresh_app), base_url="http://t") as fresh:
        recomputed = (await fresh.get("/metrics")).text
    # p3: today-10 (30 days) and today-5 (30 days, shifted to today+20): 11 of 11 days -> adherent.
    assert gauge(recomputed, "gateway_pdc_patients", '{band="adherent"}') == 2


# -- time to first dose -------------------------------------------------------------------------------


async def test_time_to_first_dose_per_order_and_on_metrics(gateway: Gateway, api: httpx.AsyncClient) -> None:
    # o1 authored 50 h ago, dispensed 2 h ago (48 h; a later dispense does not count); o2 authored 10 h ago,
    # dispensed 4 h ago (6 h); o3 not dispensed. Median and mean: 27 h.
    now = datetime.now(UTC).replace(microsecond=0)
    patient = (await create(api, f.patient()))["id"]
    orders = []
    for hours in (50, 10, 5):
        orders.append(
            (
                await create(
                    api, f.medication_request(patient, authoredOn=instant(now - timedelta(hours=hours)))
                )
            )["id"]
        )
    for order, hours in ((orders[0], 2), (orders[0], 1), (orders[1], 4)):
        authorized = {"authorizingPrescription": [{"reference": f"MedicationRequest/{order}"}]}
        await create(api, dispense(patient, instant(now - timedelta(hours=hours)), 30, **authorized))
    report = await evaluate(api, "time-to-first-dose", subject=f"Patient/{patient}", **YEAR)
    assert populations(report, "time-to-first-dose") == {
        "initial-population": 3,
        "measure-population": 3,
        "measure-population-exclusion": 1,
        "measure-observation": 2,
    }
    assert group(report, "time-to-first-dose")["measureScore"] == {
        "value": 27.0,
        "unit": "h",
        "system": "http://unitsofmeasure.org",
        "code": "h",
    }
    metrics = (await api.get("/metrics")).text
    assert gauge(metrics, "gateway_time_to_first_dose_seconds", '{statistic="median"}') == 27 * 3600
    assert gauge(metrics, "gateway_time_to_first_dose_seconds", '{statistic="mean"}') == 27 * 3600
    assert gauge(metrics, "gateway_first_dose_waiting") == 1


# -- PA turnaround ------------------------------------------------------------------------------------


async def test_pa_turnaround_reuses_the_tracking_of_pa_tasks(api: httpx.AsyncClient) -> None:
    # One request decided before its due date (on time), one still waiting past its due date (late).
    patient = (await create(api, f.patient()))["id"]
    order = (await create(api, f.medication_request(patient)))["id"]
    tomorrow = instant(datetime.now(UTC) + timedelta(days=1))
    yesterday = instant(datetime.now(UTC) - timedelta(days=1))
    decided = await create(
        api, f.pa_task(patient, order, extension=[{"url": DUE, "valueDateTime": tomorrow}])
    )
    await create(api, f.pa_task(patient, order, extension=[{"url": DUE, "valueDateTime": yesterday}]))
    approved = f.pa_task(patient, order, status="completed", business_status="approved")
    approved["id"], approved["extension"] = decided["id"], decided["extension"]
    await put(api, approved)
    report = await evaluate(api, "pa-turnaround", subject=f"Patient/{patient}", **YEAR)
    assert populations(report, "decided-on-time") == {
        "initial-population": 2,
        "denominator": 2,
        "denominator-exclusion": 0,
        "numerator": 1,
    }
    assert score(report, "decided-on-time") == 0.5
    assert populations(report, "turnaround")["measure-observation"] == 1
    turnaround = (await api.get("/fhir/Task/$pa-turnaround")).json()
    parts = {p["name"]: p for p in turnaround["parameter"][0]["part"]}
    assert parts["decided"]["valueInteger"] == 1 and parts["overdue"]["valueInteger"] == 1
    assert score(report, "turnaround") == round(parts["median-hours"]["valueDecimal"], 2)


# -- alert response -----------------------------------------------------------------------------------


def alert(patient: str, authored: datetime) -> dict[str, Any]:
    return {
        "resourceType": "Task",
        "status": "ready",
        "intent": "order",
        "priority": "stat",
        "code": {"coding": [{"system": vocab.WORK_ITEM_TYPE, "code": vocab.ALERT}]},
        "for": {"reference": f"Patient/{patient}"},
        "authoredOn": instant(authored),
    }


async def test_alert_acknowledge_and_resolve_times_come_from_the_task_history(api: httpx.AsyncClient) -> None:
    # A pharmacist's way: accept (with an owner), start, complete (with a note). Another alert stays open.
    now = datetime.now(UTC).replace(microsecond=0)
    patient = (await create(api, f.patient()))["id"]
    role = (await create(api, {"resourceType": "PractitionerRole", "active": True}))["id"]
    task = await create(api, alert(patient, now - timedelta(hours=3)))
    await create(api, alert(patient, now - timedelta(hours=1)))
    owner = {"owner": {"reference": f"PractitionerRole/{role}"}}
    accepted = await put(api, {**task, **owner, "status": "accepted"})
    await put(api, {**accepted, "status": "in-progress"})
    note = [{"text": "called the prescriber; dose held", "time": instant(datetime.now(UTC))}]
    completed = await put(api, {**accepted, "status": "completed", "note": note})

    def hours_to(version: dict[str, Any]) -> float:
        stored_us = dates.date_range(version["meta"]["lastUpdated"])[0]
        return round((stored_us - dates.date_range(task["authoredOn"])[0]) / 3.6e9, 2)

    report = await evaluate(api, "alert-response", subject=f"Patient/{patient}", **YEAR)
    assert populations(report, "acknowledge") == {
        "initial-population": 2,
        "measure-population": 2,
        "measure-population-exclusion": 1,
        "measure-observation": 1,
    }
    assert score(report, "acknowledge") == hours_to(accepted)
    assert score(report, "resolve") == hours_to(completed)
    acknowledged = score(report, "acknowledge")
    assert acknowledged is not None and 2.99 <= acknowledged <= 3.1  # accepted about 3 h after authoredOn
    evaluated = [r["reference"] for r in report["evaluatedResource"]]
    assert len(evaluated) == 2 and f"Task/{task['id']}" in evaluated
    metrics = (await api.get("/metrics")).text
    assert gauge(metrics, "gateway_alerts_unacknowledged") == 1
    median = gauge(metrics, "gateway_alert_acknowledge_seconds", '{statistic="median"}')
    assert median is not None and round(median / 3600, 2) == score(report, "acknowledge")


async def test_an_alert_the_gateway_raised_counts_once_the_pharmacist_answers_it(
    api: httpx.AsyncClient,
) -> None:
    # A low ANC on clozapine opens an alert Task owned by the assigned pharmacist (README, alerts).
    patient = (await create(api, f.patient()))["id"]
    await create(api, f.medication_request(patient))
    await pharmacist(api, [patient])
    await create(api, anc(patient, 1.2, instant(datetime.now(UTC)), "L"))
    found = await api.get("/fhir/Task", params={"patient": patient, "code": f"{vocab.WORK_ITEM_TYPE}|alert"})
    (raised,) = [e["resource"] for e in found.json()["entry"] if e["search"]["mode"] == "match"]
    before = await evaluate(api, "alert-response", subject=f"Patient/{patient}", **YEAR)
    assert populations(before, "acknowledge")["measure-population-exclusion"] == 1
    accepted = await put(api, {**raised, "status": "accepted"})
    note = [*raised.get("note", []), {"text": "repeat ANC ordered", "time": instant(datetime.now(UTC))}]
    await put(api, {**accepted, "status": "completed", "note": note})
    after = await evaluate(api, "alert-response", subject=f"Patient/{patient}", **YEAR)
    assert populations(after, "acknowledge")["measure-observation"] == 1
    assert populations(after, "resolve")["measure-observation"] == 1
    acknowledged = score(after, "acknowledge")
    assert acknowledged is not None and acknowledged < 1  # hours: accepted right after it was raised


# -- monitoring adherence ------------------------------------------------------------------------------


def activity(end_days_ago: int, status: str, result: str | None = None) -> dict[str, Any]:
    found: dict[str, Any] = {
        "detail": {
            "kind": "ServiceRequest",
            "code": {"coding": [{"system": "http://loinc.org", "code": "751-8"}]},
            "status": status,
            "scheduledPeriod": {"start": ago(end_days_ago + 3), "end": ago(end_days_ago)},
        }
    }
    if result:
        found["outcomeReference"] = [{"reference": f"Observation/{result}"}]
    return found


async def monitoring_story(api: httpx.AsyncClient) -> str:
    """A monitoring CarePlan: on time, late, missed, cancelled, still open (1 of 3 owed on time)."""
    patient = (await create(api, f.patient()))["id"]
    early = (await create(api, f.lab_observation(patient, code="751-8", effective=ago(11))))["id"]
    late = (await create(api, f.lab_observation(patient, code="751-8", effective=ago(18))))["id"]
    await create(
        api,
        {
            "resourceType": "CarePlan",
            "status": "active",
            "intent": "plan",
            "category": [
                {"coding": [{"system": vocab.CARE_PLAN_CATEGORY, "code": vocab.MONITORING_CALENDAR}]}
            ],
            "subject": {"reference": f"Patient/{patient}"},
            "activity": [
                activity(10, "completed", early),
                activity(20, "completed", late),
                activity(5, "scheduled"),
                activity(3, "cancelled"),
                activity(-5, "scheduled"),
            ],
        },
    )
    return str(patient)


async def test_monitoring_labs_on_time_in_a_report_and_on_metrics(api: httpx.AsyncClient) -> None:
    patient = await monitoring_story(api)
    # A period ending in ten days holds the activity still open (its window ends in five days).
    ahead = {"periodStart": YEAR["periodStart"], "periodEnd": ago(-10)}
    report = await evaluate(api, "monitoring-adherence", subject=f"Patient/{patient}", **ahead)
    assert populations(report, "on-time") == {
        "initial-population": 5,
        "denominator": 4,
        "denominator-exclusion": 1,
        "numerator": 1,
    }
    assert score(report, "on-time") == 0.3333
    everyone = await evaluate(api, "monitoring-adherence", **YEAR)
    assert score(everyone, "on-time") == 0.3333
    metrics = (await api.get("/metrics")).text
    assert gauge(metrics, "gateway_monitoring_on_time_ratio") == 0.3333
    assert gauge(metrics, "gateway_monitoring_owed") == 3


# -- authorization, parameters, audit ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("measure", "scopes", "missing"),
    [
        ("pdc", "system/Patient.r system/MedicationDispense.r", "system/Medication.r"),
        ("pdc", "system/MedicationDispense.r system/Medication.r", "system/Patient.r"),
        ("monitoring-adherence", "system/Patient.r system/CarePlan.r", "system/Observation.r"),
        ("alert-response", "system/Patient.r system/Task.s", "system/Task.r"),
        ("time-to-first-dose", "system/Patient.r system/MedicationRequest.r", "system/MedicationDispense.r"),
    ],
)
async def test_a_token_without_read_on_a_type_the_measure_reads_gets_403(
    api: httpx.AsyncClient, client_factory: ClientFactory, measure: str, scopes: str, missing: str
) -> None:
    patient = (await create(api, f.patient()))["id"]
    narrow = await client_factory(scopes)
    answer = await narrow.get(
        f"/fhir/Measure/{measure}/$evaluate-measure", params={"subject": f"Patient/{patient}", **YEAR}
    )
    assert answer.status_code == 403, answer.text
    assert answer.json()["resourceType"] == "OperationOutcome" and missing in answer.text


async def test_a_pharmacists_summary_needs_read_on_the_assignment_types(
    api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    mine = await pharmacist(api, [])
    narrow = await client_factory("system/MedicationDispense.r system/Medication.r system/Practitioner.r")
    answer = await narrow.get(
        "/fhir/Measure/pdc/$evaluate-measure", params={"subject": f"Practitioner/{mine}", **YEAR}
    )
    assert answer.status_code == 403
    assert "system/CareTeam.r" in answer.text and "system/PractitionerRole.r" in answer.text
    everyone = await narrow.get("/fhir/Measure/pdc/$evaluate-measure", params=YEAR)
    assert everyone.status_code == 200  # a summary over everyone reads no Patient or CareTeam


@pytest.mark.parametrize(
    "params",
    [
        {"periodEnd": "2026-12-31"},
        {"periodStart": "2026-01-01"},
        {"periodStart": "2026-13-01", "periodEnd": "2026-12-31"},
        {"periodStart": "yesterday", "periodEnd": "2026-12-31"},
        {"periodStart": "2026-03-01", "periodEnd": "2026-02-01"},
        {"periodStart": "2000-01-01", "periodEnd": "2026-12-31"},
        {"periodStart": "2026", "periodEnd": "2026", "subject": "Group/g1"},
        {"periodStart": "2026", "periodEnd": "2026", "subject": "Patient/bad id"},
        {"periodStart": "2026", "periodEnd": "2026", "reportType": "subject-list"},
        {"periodStart": "2026", "periodEnd": "2026", "reportType": "subject"},
        {"periodStart": "2026", "periodEnd": "2026", "reportType": "everything"},
        {"periodStart": "2026", "periodEnd": "2026", "lastReceivedOn": "2026-01-01"},
        {"periodStart": "2026", "periodEnd": "2026", "colour": "blue"},
        {"periodStart": "2026", "periodEnd": "2026", "measure": f"{MEASURE}/pa-turnaround"},
    ],
)
async def test_bad_parameters_are_400_with_an_operation_outcome(
    api: httpx.AsyncClient, params: dict[str, str]
) -> None:
    answer = await api.get("/fhir/Measure/pdc/$evaluate-measure", params=params)
    assert answer.status_code == 400, answer.text
    assert answer.json()["resourceType"] == "OperationOutcome"


async def test_repeated_parameters_unknown_subjects_and_measures(api: httpx.AsyncClient) -> None:
    twice = await api.get(
        "/fhir/Measure/pdc/$evaluate-measure?periodStart=2026&periodStart=2025&periodEnd=2026"
    )
    assert twice.status_code == 400
    unknown = await api.get(
        "/fhir/Measure/pdc/$evaluate-measure",
        params={"subject": "Patient/nobody", "periodStart": "2026", "periodEnd": "2026"},
    )
    assert unknown.status_code == 404
    assert (await api.get("/fhir/Measure/nope/$evaluate-measure", params=YEAR)).status_code == 404


async def test_the_type_level_operation_takes_the_measure_parameter(api: httpx.AsyncClient) -> None:
    ids = await adherence_story(api)
    answer = await api.get(
        "/fhir/Measure/$evaluate-measure",
        params={"measure": f"{MEASURE}/pdc", "subject": f"Patient/{ids['p1']}", **YEAR},
    )
    assert answer.status_code == 200 and score(answer.json(), "pdc") == 0.8911
    assert (await api.get("/fhir/Measure/$evaluate-measure", params=YEAR)).status_code == 400


async def test_a_year_written_as_yyyy_covers_the_whole_year(api: httpx.AsyncClient) -> None:
    report = await evaluate(api, "pdc", periodStart="2025", periodEnd="2025-02")
    assert report["period"] == {"start": "2025-01-01", "end": "2025-02-28"}


async def test_evaluations_are_audited_as_reads_of_their_subject(
    gateway: Gateway, api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    ids = await adherence_story(api)
    await evaluate(api, "pdc", subject=f"Patient/{ids['p1']}", **YEAR)
    await gateway.audit.flush()
    auditor = await client_factory("audit/events.read")
    found = (
        await auditor.get("/fhir/AuditEvent", params={"patient": ids["p1"], "subtype": "operation"})
    ).json()
    events = [e["resource"] for e in found.get("entry", [])]
    event = next(
        e for e in events if any("$evaluate-measure" in x.get("description", "") for x in e.get("entity", []))
    )
    assert event["action"] == "R" and event["outcome"] == "0"
    assert any(x.get("what", {}).get("reference") == f"Patient/{ids['p1']}" for x in event["entity"])
