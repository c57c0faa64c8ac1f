"""Lab results for the abnormal, critical and medication-monitoring topics, against the real rules."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.mapping.monitoring import MonitoringRules, load_monitoring
from gateway.routing import units
from gateway.routing.labs import critical_reasons, is_abnormal, monitoring_alerts, observation_codes
from gateway.types import JSON

RULES = load_monitoring(Path(__file__).resolve().parents[2] / "mappings")
LOINC = "http://loinc.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
V3 = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"
UCUM = "http://unitsofmeasure.org"


def obs(
    code: str,
    value: float | None = None,
    unit: str | None = None,
    *,
    interpretation: str | None = None,
    low: float | None = None,
    high: float | None = None,
    range_unit: str | None = None,
    status: str = "final",
    patient: str = "Patient/p1",
    **extra: Any,
) -> JSON:
    resource: JSON = {
        "resourceType": "Observation",
        "status": status,
        "code": {"coding": [{"system": LOINC, "code": code}]},
        "subject": {"reference": patient},
    }
    if value is not None:
        resource["valueQuantity"] = {"value": value} | (
            {"unit": unit, "system": UCUM, "code": unit} if unit else {}
        )
    if interpretation:
        resource["interpretation"] = [{"coding": [{"system": V3, "code": interpretation}]}]
    limits = {
        key: {"value": limit} | ({"unit": range_unit or unit, "code": range_unit or unit} if unit else {})
        for key, limit in (("low", low), ("high", high))
        if limit is not None
    }
    if limits:
        resource["referenceRange"] = [limits]
    return resource | extra


def order(
    text: str | None = None,
    rxnorm: str | None = None,
    *,
    status: str = "active",
    id: str = "mr1",
    patient: str = "Patient/p1",
) -> JSON:
    concept: JSON = {}
    if text:
        concept["text"] = text
    if rxnorm:
        concept["coding"] = [{"system": RXNORM, "code": rxnorm}]
    return {
        "resourceType": "MedicationRequest",
        "id": id,
        "status": status,
        "intent": "order",
        "subject": {"reference": patient},
        "medicationCodeableConcept": concept,
    }


# --- abnormal -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("observation", "expected"),
    [
        (obs("2823-3", 4.0, "mmol/L", interpretation="H"), True),  # the flag wins over the value
        (obs("2823-3", 4.0, "mmol/L", interpretation="N", low=3.5, high=5.1), False),
        (obs("5196-1", interpretation="NEG"), False),  # a negative qualitative result is not abnormal
        (obs("2823-3", 5.6, "mmol/L", low=3.5, high=5.1), True),
        (obs("2823-3", 3.1, "mmol/L", low=3.5, high=5.1), True),
        (obs("2823-3", 4.2, "mmol/L", low=3.5, high=5.1), False),
        (obs("2823-3", 5.1, "mmol/L", low=3.5, high=5.1), False),  # the limit is inside the range
        (obs("6301-6", 3.2, high=1.1), True),  # no units on either side: compared as is
        (obs("751-8", 0.4, "10*3/uL", low=1500, range_unit="/uL"), True),  # 400/uL
        (obs("751-8", 2.0, "10*3/uL", low=1500, range_unit="/uL"), False),
        (obs("2345-7", 400, "mg/dL", high=6.1, range_unit="mmol/L"), False),  # no conversion: not compared
        (obs("2823-3", 4.0, "mmol/L"), False),  # no range, no flag
        (
            obs("2823-3", 5.0, "mmol/L", low=3.5, high=5.1, status="entered-in-error", interpretation="HH"),
            False,
        ),
        (obs("2823-3", 9.0, "mmol/L", interpretation="HH", status="cancelled"), False),
    ],
)
def test_is_abnormal(observation: JSON, expected: bool) -> None:
    assert is_abnormal(observation) is expected


def test_censored_values_only_answer_what_they_can() -> None:
    below_five = obs("1742-6", 5, "U/L", low=10, high=40)
    below_five["valueQuantity"]["comparator"] = "<"
    assert is_abnormal(below_five)  # < 5 is surely below 10
    below_five["referenceRange"] = [{"high": {"value": 3, "unit": "U/L", "code": "U/L"}}]
    assert not is_abnormal(below_five)  # < 5 may or may not be above 3


def test_observation_codes() -> None:
    observation = obs("751-8")
    observation["code"]["coding"].append({"code": "ANC"})
    assert observation_codes(observation) == {(LOINC, "751-8"), (None, "ANC")}
    assert observation_codes({"resourceType": "Observation"}) == set()


# --- critical -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("observation", "expected"),
    [
        (obs("1234-5", interpretation="HH"), ["interpretation HH"]),
        (obs("1234-5", interpretation="LL"), ["interpretation LL"]),
        (obs("1234-5", interpretation="H>"), []),  # significantly high is not a critical value
        (obs("1234-5", interpretation="H"), []),
        (obs("2823-3", 7.1, "mmol/L"), ["2823-3 7.1 mmol/L above critical 6.5"]),
        (obs("2823-3", 6.5, "mmol/L"), []),  # the limit itself is not critical
        (obs("2823-3", 2.1, "mmol/L"), ["2823-3 2.1 mmol/L below critical 2.5"]),
        (obs("2823-3", 7.1, "mmol/L", interpretation="HH"),
         ["interpretation HH", "2823-3 7.1 mmol/L above critical 6.5"]),
        (obs("751-8", 0.4, "10*3/uL"), ["751-8 0.4 10*3/uL (400 /uL) below critical 500"]),
        (obs("751-8", 0.6, "10*9/L"), []),  # 600/uL
        (obs("751-8", 0.4, "K/uL"), []),  # not a unit the converter knows: no guess
        (obs("718-7", 65, "g/L"), ["718-7 65 g/L (6.5 g/dL) below critical 7"]),
        (obs("2345-7", 30, "mmol/L"), []),  # glucose in mmol/L needs a molar mass: not compared
        (obs("2823-3", 7.1), []),  # no unit against a threshold with one: not compared
        (obs("6301-6", 6.2), ["6301-6 6.2 above critical 5"]),  # INR is a ratio
        (obs("2823-3", 7.1, "mmol/L", status="entered-in-error"), []),
    ],
)  # fmt: skip
def test_critical_reasons(observation: JSON, expected: list[str]) -> None:
    assert critical_reasons(observation, RULES) == expected


def test_lithium_critical_is_inclusive_and_meq_equals_mmol() -> None:
    observation = obs("14334-7")
    observation["valueQuantity"] = {"value": 2.0, "unit": "mEq/L"}  # text only, no UCUM code
    assert critical_reasons(observation, RULES) == ["14334-7 2 meq/L (2 mmol/L) at or above critical 2"]
    observation["valueQuantity"]["value"] = 1.9
    assert critical_reasons(observation, RULES) == []


def test_critical_code_needs_its_system() -> None:
    observation = obs("2823-3", 7.1, "mmol/L")
    observation["code"]["coding"][0]["system"] = "http://example.org/local-codes"
    assert critical_reasons(observation, RULES) == []


def test_no_rules_no_reasons() -> None:
    assert critical_reasons(obs("2823-3", 9.9, "mmol/L", interpretation="HH"), MonitoringRules()) == []


# --- drug-lab monitoring ------------------------------------------------------------------------------


def test_clozapine_anc_1200_is_the_monitor_band() -> None:
    (alert,) = monitoring_alerts(obs("751-8", 1200, "/uL"), [order("clozapine 100 MG Oral Tablet")], RULES)
    assert (alert.rule_id, alert.drug, alert.medication_request_id) == ("clozapine-anc", "clozapine", "mr1")
    assert (alert.band, alert.severity) == ("< 1500 /uL", "moderate")
    assert "three times weekly" in alert.action and "interrupt" not in alert.action
    assert (alert.lab_code, alert.value, alert.unit) == ("751-8", 1200.0, "/uL")
    assert "clozapine" in alert.source


@pytest.mark.parametrize(
    ("code", "value", "unit", "band", "severity"),
    [
        ("751-8", 0.4, "10*3/uL", "< 500 /uL", "critical"),
        ("751-8", 0.5, "10*3/uL", "< 1000 /uL", "high"),  # 500 is not below 500
        ("26499-4", 0.9, "10*9/L", "< 1000 /uL", "high"),
        ("751-8", 999, "/uL", "< 1000 /uL", "high"),
        ("751-8", 1499, "cells/uL", "< 1500 /uL", "moderate"),
    ],
)
def test_clozapine_bands_across_units(code: str, value: float, unit: str, band: str, severity: str) -> None:
    (alert,) = monitoring_alerts(obs(code, value, unit), [order(rxnorm="2626")], RULES)
    assert (alert.band, alert.severity, alert.value, alert.unit) == (
        band,
        severity,
        value,
        units.normalise(unit),
    )


def test_clozapine_no_rechallenge_band() -> None:
    (alert,) = monitoring_alerts(obs("751-8", 0.4, "10*3/uL"), [order("Clozaril")], RULES)
    assert "do not rechallenge" in alert.action


@pytest.mark.parametrize(
    "observation",
    [
        obs("751-8", 1500, "/uL"),  # normal enough
        obs("751-8", 0.4, "K/uL"),  # unit the converter does not know
        obs("751-8"),  # no value
        obs("751-8", 300, "/uL", status="entered-in-error"),
        obs("751-8", 300, "/uL", patient="Patient/someone-else"),
    ],
)
def test_clozapine_no_alert(observation: JSON) -> None:
    assert monitoring_alerts(observation, [order("clozapine")], RULES) == []


def test_methotrexate_alt_above_3x_uln_is_stop() -> None:
    alt = obs("1742-6", 130, "U/L", low=7, high=40)
    (alert,) = monitoring_alerts(alt, [order("Methotrexate 2.5 MG Oral Tablet")], RULES)
    assert (alert.rule_id, alert.band, alert.severity) == ("methotrexate-liver", "> 3x ULN", "high")
    assert "stop methotrexate" in alert.action


@pytest.mark.parametrize(
    "alt",
    [
        obs("1742-6", 110, "U/L", low=7, high=40),  # 2.75x
        obs("1742-6", 130, "U/L"),  # no reference range: no ULN to compare with
        obs("1742-6", 130, "U/L", high=40, range_unit="[IU]/L"),  # U and [IU] are not the same unit
    ],
)
def test_methotrexate_alt_without_alert(alt: JSON) -> None:
    assert monitoring_alerts(alt, [order("methotrexate")], RULES) == []


def test_leflunomide_alt_between_2x_and_3x_uln() -> None:
    (alert,) = monitoring_alerts(obs("1742-6", 100, "U/L", high=40), [order(rxnorm="27169")], RULES)
    assert (alert.rule_id, alert.band, alert.severity) == ("leflunomide-alt", "> 2x ULN", "moderate")


@pytest.mark.parametrize(
    "status", ["stopped", "completed", "on-hold", "cancelled", "draft", "entered-in-error"]
)
def test_only_active_orders_alert(status: str) -> None:
    assert monitoring_alerts(obs("751-8", 300, "/uL"), [order("clozapine", status=status)], RULES) == []


def test_name_match_is_case_insensitive_and_by_whole_word() -> None:
    lithium = obs("14334-7", 1.3, "mmol/L")
    (alert,) = monitoring_alerts(lithium, [order("LITHIUM CARBONATE 300 MG ER tablet")], RULES)
    assert (alert.rule_id, alert.band, alert.severity) == ("lithium-level", "> 1.2 meq/L", "moderate")
    assert monitoring_alerts(lithium, [order("Lithiumoid 5 mg")], RULES) == []


def test_lithium_toxicity_band_is_inclusive() -> None:
    (alert,) = monitoring_alerts(obs("14334-7", 1.5, "meq/L"), [order(rxnorm="42351")], RULES)
    assert (alert.band, alert.severity) == (">= 1.5 meq/L", "high")


def test_coding_display_matches_by_name() -> None:
    request = order()
    request["medicationCodeableConcept"] = {
        "coding": [{"system": RXNORM, "code": "197519", "display": "Imatinib 400 MG Oral Tablet"}]
    }
    (alert,) = monitoring_alerts(obs("777-3", 40, "10*3/uL"), [request], RULES)
    assert (alert.rule_id, alert.band, alert.medication_codes) == (
        "imatinib-platelets",
        "< 50 10*9/L",
        ((RXNORM, "197519"),),
    )


def test_drug_without_rule_gives_nothing() -> None:
    assert (
        monitoring_alerts(obs("751-8", 300, "/uL"), [order("atorvastatin 20 MG", rxnorm="83367")], RULES)
        == []
    )


def test_one_alert_per_matching_order() -> None:
    orders = [order("clozapine", id="a"), order("sertraline", id="b"), order("Versacloz suspension", id="c")]
    alerts = monitoring_alerts(obs("751-8", 800, "/uL"), orders, RULES)
    assert [(a.medication_request_id, a.band) for a in alerts] == [("a", "< 1000 /uL"), ("c", "< 1000 /uL")]


def test_anc_for_two_drugs_gives_each_its_own_band() -> None:
    orders = [order("clozapine", id="clz"), order("Xeljanz 5 mg", id="tofa")]
    alerts = monitoring_alerts(obs("751-8", 800, "/uL"), orders, RULES)
    assert {(a.rule_id, a.medication_request_id, a.severity) for a in alerts} == {
        ("clozapine-anc", "clz", "high"),
        ("tofacitinib-anc", "tofa", "moderate"),
    }


def test_medication_reference_resolves_through_the_map_and_contained() -> None:
    medication = {"resourceType": "Medication", "id": "m1", "code": {"text": "Humira Pen 40 MG/0.4ML"}}
    by_map = order()
    del by_map["medicationCodeableConcept"]
    by_map["medicationReference"] = {"reference": "Medication/m1"}
    positive = obs("71774-4", valueString="Positive")
    (alert,) = monitoring_alerts(positive, [by_map], RULES, {"Medication/m1": medication})
    assert (alert.rule_id, alert.band, alert.value) == ("tnf-inhibitor-igra", "positive", None)
    assert monitoring_alerts(positive, [by_map], RULES) == []  # unresolved: no guess

    contained = order()
    del contained["medicationCodeableConcept"]
    contained["contained"] = [
        {
            "resourceType": "Medication",
            "id": "med",
            "ingredient": [{"itemCodeableConcept": {"coding": [{"system": RXNORM, "code": "214555"}]}}],
        }
    ]
    contained["medicationReference"] = {"reference": "#med"}
    (alert,) = monitoring_alerts(positive, [contained], RULES)
    assert alert.rule_id == "tnf-inhibitor-igra"


SNOMED = "http://snomed.info/sct"


@pytest.mark.parametrize(
    ("observation", "expected"),
    [
        (obs("5196-1", valueCodeableConcept={"coding": [{"system": SNOMED, "code": "10828004"}]}), 1),
        (obs("5196-1", valueCodeableConcept={"text": "Reactive"}), 1),
        (obs("13952-7", valueString="DETECTED"), 1),
        (obs("5196-1", interpretation="POS"), 1),
        (obs("5196-1", valueString="Not detected"), 0),
        (obs("5196-1", valueCodeableConcept={"text": "Nonreactive"}), 0),
        (obs("5196-1", valueCodeableConcept={"coding": [{"system": SNOMED, "code": "260385009"}]}), 0),
        (obs("5196-1", interpretation="NEG"), 0),
        (obs("11011-4", valueString="Detected"), 0),  # HCV RNA is not one of the rule's labs
    ],
)
def test_hbv_marker_positive_for_hcv_daa(observation: JSON, expected: int) -> None:
    alerts = monitoring_alerts(observation, [order("Epclusa 400-100 MG tablet")], RULES)
    assert len(alerts) == expected
    assert all(a.rule_id == "hcv-daa-hbv" and a.severity == "high" for a in alerts)


def test_tofacitinib_hemoglobin_in_g_per_l() -> None:
    (alert,) = monitoring_alerts(obs("718-7", 75, "g/L"), [order(rxnorm="1357536")], RULES)
    assert (alert.band, alert.value, alert.unit) == ("< 8 g/dL", 75.0, "g/L")
    assert monitoring_alerts(obs("718-7", 85, "g/L"), [order(rxnorm="1357536")], RULES) == []


# --- units --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "source", "target", "monovalent", "expected"),
    [
        (0.4, "10*3/uL", "/uL", False, 400.0),
        (1.0, "10*9/L", "10*3/uL", False, 1.0),
        (1500, "/uL", "10*9/L", False, 1.5),
        (7.5, "g/dL", "g/L", False, 75.0),
        (120, "mg/dL", "g/dL", False, 0.12),
        (1.2, "mEq/L", "mmol/L", True, 1.2),
        (1.2, "mEq/L", "mmol/L", False, None),  # only the same number for ions with one charge
        (5.0, "mmol/L", "mg/dL", False, None),
        (3.0, "K/uL", "/uL", False, None),
        (3.0, "{weird}", "{weird}", False, 3.0),  # the same unit needs no table
        (3.0, None, "/uL", False, None),
    ],
)
def test_unit_conversion(
    value: float, source: str | None, target: str, monovalent: bool, expected: float | None
) -> None:
    assert units.convert(value, source, target, monovalent=monovalent) == expected
