"""The console patient page's assembly (pure): header facts, orders marked specialty, PA expiry, and the
chart of a monitored lab with the drug's thresholds converted to the results' unit."""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Any

from gateway.mapping.monitoring import load_monitoring
from gateway.pa.lifecycle import BUSINESS_STATUS_SYSTEM
from gateway.routing.labs import WITHDRAWN_STATUSES
from gateway.transports.http.console import patient_view as view

RULES = load_monitoring(Path(__file__).resolve().parents[2] / "mappings")
CLOZAPINE = next(r for r in RULES.drug_lab if r.id == "clozapine-anc")


def anc(value: float, when: str, unit: str = "10*3/uL", status: str = "final") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": "751-8"}], "text": "ANC"},
        "effectiveDateTime": when,
        "valueQuantity": {"value": value, "unit": unit, "system": "http://unitsofmeasure.org", "code": unit},
        "referenceRange": [{"low": {"value": 1.5}, "high": {"value": 8.0}}],
    }


def test_the_anc_chart_has_the_label_thresholds_in_the_results_unit() -> None:
    observations = [
        anc(2.1, "2026-01-05T08:00:00Z"),
        anc(1.2, "2026-01-19T08:00:00Z"),
        anc(0.3, "2026-01-12T08:00:00Z", status="entered-in-error"),  # withdrawn: not drawn
        anc(1600, "2026-01-12T09:00:00Z", unit="/uL"),  # another unit: converted, not dropped
    ]
    (spec,) = view.chart_specs(observations, [CLOZAPINE], WITHDRAWN_STATUSES)
    assert [p[1] for p in spec.series] == [2.1, 1600, 1.2]
    assert spec.unit_factors == {"/uL": 0.001}
    assert spec.threshold_unit == "/uL" and spec.threshold_factor == 1000
    assert sorted(t[0] for t in spec.thresholds) == [500, 1000, 1500]
    assert all(t[3] == "below" for t in spec.thresholds)
    assert spec.reference_range == (1.5, 8.0)  # the latest result's


def test_header_orders_and_prior_auths() -> None:
    patient = {
        "resourceType": "Patient",
        "id": "p1",
        "name": [{"family": "Garcia", "given": ["Maria"]}],
        "identifier": [{"system": "urn:mrn", "value": "MRN-1"}],
        "communication": [{"language": {"text": "Spanish"}, "preferred": True}],
        "address": [{"state": "TX"}],
    }
    facts = view.header(patient)
    assert (facts.name, facts.language, facts.state) == ("Maria Garcia", "Spanish", "TX")
    assert facts.identifiers == (("urn:mrn", "MRN-1"),)
    requests = [
        {"resourceType": "MedicationRequest", "id": "o1", "status": "active", "authoredOn": "2026-01-01",
         "medicationCodeableConcept": {"text": "clozapine 100 MG Oral Tablet"}},
        {"resourceType": "MedicationRequest", "id": "o2", "status": "active", "authoredOn": "2026-01-02",
         "medicationCodeableConcept": {"text": "vitamin D 1000 unit"}},
        {"resourceType": "MedicationRequest", "id": "o3", "status": "stopped",
         "medicationCodeableConcept": {"text": "clozapine 25 MG"}},
    ]  # fmt: skip
    found = view.orders(requests, RULES, {})
    assert [(o.id, o.specialty) for o in found] == [("o2", False), ("o1", True)]
    task = {
        "resourceType": "Task", "id": "t1",
        "code": {"coding": [{"code": "prior-authorization"}]},
        "businessStatus": {"coding": [{"system": BUSINESS_STATUS_SYSTEM, "code": "approved"}]},
        "restriction": {"period": {"end": "2026-03-01"}},
    }  # fmt: skip
    (pa,) = view.prior_auths([task], date(2026, 2, 20))
    assert pa.expires == "2026-03-01" and pa.days_left == 9
