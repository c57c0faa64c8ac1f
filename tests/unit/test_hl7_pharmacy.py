"""Pharmacy orders through the translator: timing, dose units, route systems and compound components.

Messages are written here from the HL7 v2.5.1 definitions of ORC, RXE, TQ1, RXR and RXC; the mappings are
the shipped ones.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.adapters.hl7v2.er7 import Message
from gateway.adapters.hl7v2.translate import Translation, Translator
from gateway.mapping.files import load
from gateway.settings import PROJECT_ROOT

TRANSLATOR = Translator(load(PROJECT_ROOT / "mappings"))
UCUM = "http://unitsofmeasure.org"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def rde(*order: str, version: str = "2.5.1") -> str:
    """An RDE^O11 for one patient with the given order segments (ORC first)."""
    header = [
        "MSH|^~\\&|EHR|CITY HOSPITAL|GATEWAY|SPECIALTY RX|20240301083000-0500||RDE^O11^RDE_O11|RX-1|P|"
        + version,
        "PID|1||MRN-77^^^HOSP&2.16.840.1.113883.19.5&ISO^MR||Testperson^Alex||19800203|F",
    ]
    return "\r".join([*header, *order]) + "\r"


ORC = "ORC|NW|RX7001^EHR|||||||20240301090000-0500"


def translate(text: str) -> Translation:
    return TRANSLATOR.translate(Message(text))


def resources(translation: Translation, resource_type: str) -> list[dict[str, Any]]:
    return [p.resource for p in translation.resources if p.resource["resourceType"] == resource_type]


def dosage_of(text: str) -> dict[str, Any]:
    (request,) = resources(translate(text), "MedicationRequest")
    (dosage,) = request["dosageInstruction"]
    return dict(dosage)


# --- reproductions of what was seen to go wrong -------------------------------------------------------


def test_tq1_administration_times_become_time_of_day() -> None:
    dosage = dosage_of(
        rde(
            ORC,
            "RXE||2626^clozapine^RXNORM|100||mg^milligram^ISO+|TAB",
            "TQ1|1||TID|0800~1400~2000",
            "RXR|PO",
        )
    )
    assert dosage["timing"]["repeat"]["frequency"] == 3
    assert dosage["timing"]["repeat"]["timeOfDay"] == ["08:00:00", "14:00:00", "20:00:00"]


def test_an_empty_tq1_does_not_hide_the_timing_in_rxe_1() -> None:
    # TQ1 is required after RXE from 2.5 on; senders that keep the TQ in RXE-1 send it empty.
    dosage = dosage_of(rde(ORC, "RXE|1^TID&0800,1400,2000^^20240301|2626^clozapine^RXNORM|100||mg", "TQ1|1"))
    assert dosage["timing"]["code"]["coding"][0]["code"] == "TID"
    assert dosage["timing"]["repeat"]["frequency"] == 3
    assert dosage["timing"]["repeat"]["timeOfDay"] == ["08:00:00", "14:00:00", "20:00:00"]


def test_a_local_unit_code_does_not_replace_the_units_text() -> None:
    # RXE-5 as many pharmacy systems send it: their own unit number, then the text. When the text is not
    # in the units table the number used to become the unit ("43").
    dosage = dosage_of(rde(ORC, "RXE||745679^albuterol inhaler^RXNORM|2||43^puff^99UNT|INH", "TQ1|1||Q4H"))
    assert dosage["doseAndRate"][0]["doseQuantity"] == {"value": 2, "unit": "puff"}


def test_route_without_a_coding_system_is_table_0162() -> None:
    dosage = dosage_of(rde(ORC, "RXE||2626^clozapine^RXNORM|100||mg", "TQ1|1||TID", "RXR|PO^Oral"))
    assert dosage["route"] == {
        "coding": [
            {"system": "http://terminology.hl7.org/CodeSystem/v2-0162", "code": "PO", "display": "Oral"}
        ]
    }


def test_rxc_components_make_a_referenced_medication() -> None:
    translation = translate(
        rde(
            ORC,
            "RXE||CMPD-1^clozapine oral suspension (compounded)^L|50||mg|SUSP^Suspension",
            "TQ1|1||TID",
            "RXR|PO",
            "RXC|B|OP-50^oral suspending vehicle^L|100|mL^milliliter^UCUM",
            "RXC|A|2626^clozapine^RXNORM|5000|mg^milligram^UCUM",
        )
    )
    (medication,) = resources(translation, "Medication")
    (request,) = resources(translation, "MedicationRequest")
    assert request["medicationReference"]["reference"] == f"Medication/{medication['id']}"
    assert [i["itemCodeableConcept"]["coding"][0]["code"] for i in medication["ingredient"]] == [
        "OP-50",
        "2626",
    ]
    assert not [u for u in translation.unused if u.startswith("RXC")]


# --- timing ------------------------------------------------------------------------------------------

GTS = "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation"
V2_0335 = "http://terminology.hl7.org/CodeSystem/v2-0335"


def timing_of(tq1: str, rxe1: str = "", orc7: str = "") -> tuple[dict[str, Any], list[str]]:
    """The Dosage (timing, as-needed) and the problems for one order with the given timing fields."""
    orc = f"ORC|NW|RX7001^EHR|||||{orc7}||20240301090000-0500"
    rxe = f"RXE|{rxe1}|2626^clozapine^RXNORM|100||mg"
    translation = translate(rde(orc, rxe, *([tq1] if tq1 else [])))
    (request,) = resources(translation, "MedicationRequest")
    return request["dosageInstruction"][0], translation.problems


def coded(system: str, code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code, "display": display}]}


@pytest.mark.parametrize(
    ("tq1", "code", "repeat"),
    [
        # FHIR TimingAbbreviation codes keep that system
        (
            "TQ1|1||TID",
            coded(GTS, "TID", "three times a day"),
            {"frequency": 3, "period": 1, "periodUnit": "d"},
        ),
        ("TQ1|1||QD", coded(GTS, "QD", "daily"), {"frequency": 1, "period": 1, "periodUnit": "d"}),
        ("TQ1|1||Q4H", coded(GTS, "Q4H", "every 4 hours"), {"frequency": 1, "period": 4, "periodUnit": "h"}),
        (
            "TQ1|1||qod",
            coded(GTS, "QOD", "every other day"),
            {"frequency": 1, "period": 2, "periodUnit": "d"},
        ),
        # table 0335 patterns FHIR has no abbreviation for stay in v2-0335
        (
            "TQ1|1||Q12H",
            coded(V2_0335, "Q12H", "every 12 hours"),
            {"frequency": 1, "period": 12, "periodUnit": "h"},
        ),
        ("TQ1|1||QW", coded(V2_0335, "QW", "once a week"), {"frequency": 1, "period": 1, "periodUnit": "wk"}),
        ("TQ1|1||Once", coded(V2_0335, "ONCE", "one time only"), {"count": 1}),
        # times of day and meals are `when`
        (
            "TQ1|1||QAM",
            coded(V2_0335, "QAM", "every morning"),
            {"frequency": 1, "period": 1, "periodUnit": "d", "when": ["MORN"]},
        ),
        (
            "TQ1|1||QPM",
            coded(V2_0335, "QPM", "every evening"),
            {"frequency": 1, "period": 1, "periodUnit": "d", "when": ["EVE"]},
        ),
        (
            "TQ1|1||QHS",
            coded(V2_0335, "QHS", "every day at bedtime"),
            {"frequency": 1, "period": 1, "periodUnit": "d", "when": ["HS"]},
        ),
        ("TQ1|1||AC", coded(V2_0335, "AC", "before meals"), {"when": ["AC"]}),
        ("TQ1|1||PCV", coded(V2_0335, "PCV", "after dinner"), {"when": ["PCV"]}),
        # 0335's generic forms, understood without a table entry
        (
            "TQ1|1||Q3D",
            {"coding": [{"system": V2_0335, "code": "Q3D"}]},
            {"frequency": 1, "period": 3, "periodUnit": "d"},
        ),
        (
            "TQ1|1||Q30M",
            {"coding": [{"system": V2_0335, "code": "Q30M"}]},
            {"frequency": 1, "period": 30, "periodUnit": "min"},
        ),
        (
            "TQ1|1||5ID",
            {"coding": [{"system": V2_0335, "code": "5ID"}]},
            {"frequency": 5, "period": 1, "periodUnit": "d"},
        ),
        (
            "TQ1|1||Q1J135",
            {"coding": [{"system": V2_0335, "code": "Q1J135"}]},
            {"frequency": 3, "period": 1, "periodUnit": "wk", "dayOfWeek": ["mon", "wed", "fri"]},
        ),
        # explicit administration times (TQ1-4, repeating) become timeOfDay; QAM's `when` gives way (tim-10)
        (
            "TQ1|1||TID|0800~1400~2000",
            coded(GTS, "TID", "three times a day"),
            {
                "frequency": 3,
                "period": 1,
                "periodUnit": "d",
                "timeOfDay": ["08:00:00", "14:00:00", "20:00:00"],
            },
        ),
        (
            "TQ1|1||QAM|0730",
            coded(V2_0335, "QAM", "every morning"),
            {"frequency": 1, "period": 1, "periodUnit": "d", "timeOfDay": ["07:30:00"]},
        ),
        (
            "TQ1|1||BID|9:00~21:00",
            coded(GTS, "BID", "twice a day"),
            {"frequency": 2, "period": 1, "periodUnit": "d", "timeOfDay": ["09:00:00", "21:00:00"]},
        ),  # HH:MM is read as well
        # duration, start/end and total occurrences
        (
            "TQ1|1||BID|||10^d&day&UCUM",
            coded(GTS, "BID", "twice a day"),
            {
                "frequency": 2,
                "period": 1,
                "periodUnit": "d",
                "boundsDuration": {"value": 10, "unit": "day", "system": UCUM, "code": "d"},
            },
        ),
        (
            "TQ1|1||BID|||10^d|20240301|20240310",
            coded(GTS, "BID", "twice a day"),
            {
                "frequency": 2,
                "period": 1,
                "periodUnit": "d",
                "boundsPeriod": {"start": "2024-03-01", "end": "2024-03-10"},
            },
        ),  # the start/end win over the duration
        (
            "TQ1|1||Q6H|||||||||||8",
            coded(GTS, "Q6H", "every 6 hours"),
            {"frequency": 1, "period": 6, "periodUnit": "h", "count": 8},
        ),
        # an explicit period (RPT-5/6) and a meal event with its offset (RPT-8/9/10)
        (
            "TQ1|1||Q&Per period&HL70335^^^^90^min",
            coded(V2_0335, "Q", "Per period"),
            {"frequency": 1, "period": 90, "periodUnit": "min"},
        ),
        (
            "TQ1|1||Q&Per period&HL70335^^^^^^^ACM^30^min",
            coded(V2_0335, "Q", "Per period"),
            {"when": ["ACM"], "offset": 30},
        ),
    ],
)
def test_timing_from_tq1(tq1: str, code: dict[str, Any], repeat: dict[str, Any]) -> None:
    dosage, _ = timing_of(tq1)
    assert dosage["timing"]["code"] == code
    assert dosage["timing"].get("repeat", {}) == repeat


@pytest.mark.parametrize(
    ("tq1", "problem"),
    [
        ("TQ1|1||XQ7", "TQ1-3: repeat pattern 'XQ7' is not in table repeat-pattern"),  # kept, reported
        ("TQ1|1||TID|2500", "TQ1-4: administration time '2500' is not a time of day"),  # no such hour
        (
            "TQ1|1||TID|||3^widgets",
            "TQ1-6: '3^widgets' is not an amount of time",
        ),  # a Duration needs UCUM time
        ("TQ1|1||TID|||||||||||0", "TQ1-14: total occurrences '0' is not a positive whole number"),
        ("TQ1|1||TID~QHS", "TQ1-3: only the first repeat pattern is mapped, not 'QHS'"),
        ("TQ1|1||Q&x&HL70335^^^^^^^ICM", "TQ1-3: event 'ICM' is not in table event-timing"),  # no FHIR code
    ],
)
def test_timing_that_cannot_be_mapped_is_reported(tq1: str, problem: str) -> None:
    _, problems = timing_of(tq1)
    assert any(p.startswith(problem) for p in problems), problems


def test_an_unknown_pattern_keeps_its_code_without_a_repeat() -> None:
    dosage, _ = timing_of("TQ1|1||XQ7")
    assert dosage["timing"] == {"code": {"coding": [{"system": V2_0335, "code": "XQ7"}]}}


@pytest.mark.parametrize(
    ("tq1", "as_needed"),
    [
        ("TQ1|1||PRN", {"asNeededBoolean": True}),  # 0335 PRN
        ("TQ1|1||PRNQ6H", {"asNeededBoolean": True}),  # PRN<pattern>: as needed, at most every 6 hours
        ("TQ1|1||Q6H||||||PRN", {"asNeededBoolean": True}),  # 0485 PRN as the priority
        ("TQ1|1||Q6H|||||||pain", {"asNeededCodeableConcept": {"text": "pain"}}),  # TQ1-10 condition
        ("TQ1|1||Q6H", {}),
    ],
)
def test_as_needed(tq1: str, as_needed: dict[str, Any]) -> None:
    dosage, _ = timing_of(tq1)
    assert {k: v for k, v in dosage.items() if k.startswith("asNeeded")} == as_needed


def test_prn_with_a_pattern_keeps_the_patterns_repeat() -> None:
    dosage, _ = timing_of("TQ1|1||PRNQ6H")
    assert dosage["timing"] == {
        "code": {"coding": [{"system": V2_0335, "code": "PRNQ6H"}]},
        "repeat": {"frequency": 1, "period": 6, "periodUnit": "h"},
    }


@pytest.mark.parametrize(
    ("tq1", "rxe1", "orc7", "repeat"),
    [
        # the older TQ type in RXE-1: interval (RI: pattern & explicit times), duration, start
        (
            "",
            "1^BID&0900,2100^D10",
            "",
            {
                "frequency": 2,
                "period": 1,
                "periodUnit": "d",
                "timeOfDay": ["09:00:00", "21:00:00"],
                "boundsDuration": {"value": 10, "unit": "d", "system": UCUM, "code": "d"},
            },
        ),
        # ... or in ORC-7 when RXE-1 is empty; X<n> is a number of times
        ("", "", "1^Q6H^X4", {"frequency": 1, "period": 6, "periodUnit": "h", "count": 4}),
        # an empty TQ1 (required since 2.5) does not hide RXE-1
        (
            "TQ1|1",
            "1^TID^^20240301",
            "",
            {"frequency": 3, "period": 1, "periodUnit": "d", "boundsPeriod": {"start": "2024-03-01"}},
        ),
        # TQ1 wins part by part: its pattern, RXE-1's start
        (
            "TQ1|1||QID",
            "1^TID^^20240301",
            "",
            {"frequency": 4, "period": 1, "periodUnit": "d", "boundsPeriod": {"start": "2024-03-01"}},
        ),
    ],
)
def test_timing_from_the_older_tq_type(tq1: str, rxe1: str, orc7: str, repeat: dict[str, Any]) -> None:
    dosage, _ = timing_of(tq1, rxe1, orc7)
    assert dosage["timing"]["repeat"] == repeat


def test_words_in_place_of_a_pattern_are_text_not_a_code() -> None:
    dosage, problems = timing_of("", orc7="^3 times daily")
    assert dosage["timing"] == {"code": {"text": "3 times daily"}}
    assert any("'3 times daily' is not in table repeat-pattern" in p for p in problems)


def test_the_sig_is_written_from_dose_route_and_timing_when_the_prescriber_wrote_none() -> None:
    dosage = dosage_of(rde(ORC, "RXE||2626^clozapine^RXNORM|100||mg", "TQ1|1||BID|0800~2000", "RXR|PO^Oral"))
    assert dosage["text"] == "100 mg Oral BID at 08:00:00, 20:00:00"


# --- priority ----------------------------------------------------------------------------------------


def priority_of(tq1: str, rxe1: str = "") -> tuple[str | None, list[str]]:
    translation = translate(rde(ORC, f"RXE|{rxe1}|2626^clozapine^RXNORM|100||mg", *([tq1] if tq1 else [])))
    (request,) = resources(translation, "MedicationRequest")
    return request.get("priority"), translation.problems


@pytest.mark.parametrize(
    ("tq1", "rxe1", "priority"),
    [
        ("TQ1|1||TID||||||S^Stat^HL70485", "", "stat"),  # stat
        ("TQ1|1||TID||||||A", "", "asap"),  # ASAP
        ("TQ1|1||TID||||||R", "", "routine"),  # routine
        ("TQ1|1||TID||||||P", "", "urgent"),  # preoperative: due before the operation
        ("TQ1|1||TID||||||T", "", "urgent"),  # timing critical
        ("TQ1|1||TID||||||TM30", "", "urgent"),  # timing critical within 30 minutes
        ("TQ1|1||TID||||||C", "", "routine"),  # callback: no change of urgency
        ("TQ1|1||TID||||||PRN", "", None),  # as needed is not a priority
        ("", "1^TID^^^^S", "stat"),  # the older TQ's priority (TQ-6)
        ("TQ1|1||TID", "", None),  # none sent
    ],
)
def test_priority(tq1: str, rxe1: str, priority: str | None) -> None:
    assert priority_of(tq1, rxe1)[0] == priority


def test_an_unknown_priority_is_left_out_and_reported() -> None:
    priority, problems = priority_of("TQ1|1||TID||||||ROU")
    assert priority is None
    assert "TQ1-9: priority 'ROU' is not in table request-priority; left out" in problems


# --- dose and rate -----------------------------------------------------------------------------------


def mg(value: float) -> dict[str, Any]:
    return {"value": value, "unit": "mg", "system": UCUM, "code": "mg"}


@pytest.mark.parametrize(
    ("rxe", "tq1", "dose"),
    [
        ("100||mg^milligram^ISO+", "", {"doseQuantity": mg(100)}),  # a spelling table units knows
        ("100||MG^^ISO+", "", {"doseQuantity": mg(100)}),  # upper case, no text
        ("100||43^mg^99UNT", "", {"doseQuantity": mg(100)}),  # a local unit number: the text is the unit
        ("2||43^puff^99UNT", "", {"doseQuantity": {"value": 2, "unit": "puff"}}),  # unknown: the text
        (
            "5||mg/kg&x^milligram per kilogram^UCUM",
            "",
            {"doseQuantity": {"value": 5, "unit": "milligram per kilogram", "system": UCUM, "code": "mg/kg"}},
        ),  # coded in UCUM by the sender: taken as sent
        ("0.5||^^^^^^^^mL", "", {"doseQuantity": {"value": 0.5, "unit": "mL", "system": UCUM, "code": "mL"}}),
        (
            "1|2|TAB",
            "",
            {
                "doseRange": {
                    "low": {"value": 1, "unit": "tablet", "system": UCUM, "code": "{tbl}"},
                    "high": {"value": 2, "unit": "tablet", "system": UCUM, "code": "{tbl}"},
                }
            },
        ),
        ("||", "TQ1|1|2^mg|BID", {"doseQuantity": mg(2)}),  # no give amount: TQ1-2, the quantity per time
    ],
)
def test_dose(rxe: str, tq1: str, dose: dict[str, Any]) -> None:
    dosage = dosage_of(rde(ORC, f"RXE||2626^clozapine^RXNORM|{rxe}", *([tq1] if tq1 else [])))
    assert dosage["doseAndRate"] == [dose]


def test_the_rate_of_an_infusion() -> None:
    rxe = "RXE||11124^vancomycin^RXNORM|1||g||||||||||||||||||125|mL/hr^mL/hr"
    dosage = dosage_of(rde(ORC, rxe))
    assert dosage["doseAndRate"][0]["rateQuantity"] == {
        "value": 125,
        "unit": "mL/h",
        "system": UCUM,
        "code": "mL/h",
    }


def test_rxo_dose_units_likewise() -> None:
    dosage = dosage_of(rde(ORC, "RXO|2626^clozapine^RXNORM|25||7^mg^99UNT"))
    assert dosage["doseAndRate"] == [{"doseQuantity": mg(25)}]


# --- route, site, method -----------------------------------------------------------------------------

V2 = "http://terminology.hl7.org/CodeSystem/v2-"


@pytest.mark.parametrize(
    ("rxr", "version", "expected"),
    [
        ("RXR|IM^Intramuscular", "2.5.1", {"route": coded(V2 + "0162", "IM", "Intramuscular")}),  # table 0162
        ("RXR|IM^Intramuscular^HL70162", "2.5.1", {"route": coded(V2 + "0162", "IM", "Intramuscular")}),
        (
            "RXR|C28161^Intramuscular^NCIT",
            "2.5.1",
            {"route": {"coding": [{"code": "C28161", "display": "Intramuscular"}]}},
        ),  # the sender named another system: its code is not made a 0162 code
        (
            "RXR|IM^Intramuscular^L",
            "2.5.1",
            {"route": {"coding": [{"code": "IM", "display": "Intramuscular"}]}},
        ),
        (
            "RXR|IM|LD^Left deltoid",
            "2.5.1",
            {
                "route": {"coding": [{"system": V2 + "0162", "code": "IM"}]},
                "site": coded(V2 + "0163", "LD", "Left deltoid"),
            },
        ),  # site: table 0163 up to 2.5.1
        (
            "RXR|IM|LD^Left deltoid",
            "2.7",
            {
                "route": {"coding": [{"system": V2 + "0162", "code": "IM"}]},
                "site": coded(V2 + "0550", "LD", "Left deltoid"),
            },
        ),  # ... and table 0550 since 2.6
        (
            "RXR|IV|||IVP^IV push",
            "2.5.1",
            {
                "route": {"coding": [{"system": V2 + "0162", "code": "IV"}]},
                "method": coded(V2 + "0165", "IVP", "IV push"),
            },
        ),  # method: table 0165
    ],
)
def test_route_site_and_method(rxr: str, version: str, expected: dict[str, Any]) -> None:
    dosage = dosage_of(rde(ORC, "RXE||2626^clozapine^RXNORM|100||mg", rxr, version=version))
    assert {k: v for k, v in dosage.items() if k in ("route", "site", "method")} == expected


# --- compound and IV mixture components (RXC) --------------------------------------------------------

NS = "RXC|B|313002^sodium chloride 0.9 % injectable solution^RXNORM|250|mL"
VANCO = "RXC|A|11124^vancomycin^RXNORM|1|g"


def medication_of(*order: str) -> tuple[dict[str, Any], dict[str, Any], Translation]:
    translation = translate(rde(ORC, *order))
    (medication,) = resources(translation, "Medication")
    (request,) = resources(translation, "MedicationRequest")
    return medication, request, translation


def quantity(value: float, code: str, unit: str | None = None) -> dict[str, Any]:
    return {"value": value, "unit": unit or code, "system": UCUM, "code": code}


@pytest.mark.parametrize(
    ("components", "expected"),
    [
        # an IV mixture: the base (B) is not active and is all of one preparation; the additive (A) is active
        # and its amount is per the base's volume
        (
            [NS, VANCO],
            [
                {
                    "isActive": False,
                    "strength": {"numerator": quantity(250, "mL"), "denominator": {"value": 1}},
                },
                {
                    "isActive": True,
                    "strength": {"numerator": quantity(1, "g"), "denominator": quantity(250, "mL")},
                },
            ],
        ),
        # a strength in RXC-5/6 wins over the amount; mg/mL is 5 mg per 1 mL
        (
            ["RXC|A|11124^vancomycin^RXNORM|1|g|5|mg/mL"],
            [
                {
                    "isActive": True,
                    "strength": {"numerator": quantity(5, "mg"), "denominator": quantity(1, "mL")},
                }
            ],
        ),
        # RXC-8/9 (strength volume): 40 mg per 200 mL
        (
            ["RXC|A|7417^nicardipine^RXNORM|||40|mg||200|mL"],
            [
                {
                    "isActive": True,
                    "strength": {"numerator": quantity(40, "mg"), "denominator": quantity(200, "mL")},
                }
            ],
        ),
        # a strength that is not x/y: per one unit of the medication
        (
            ["RXC|A|4850^glucose^RXNORM|||5|%"],
            [{"isActive": True, "strength": {"numerator": quantity(5, "%"), "denominator": {"value": 1}}}],
        ),
        # no amount, no strength: the component alone
        (["RXC|A|11124^vancomycin^RXNORM"], [{"isActive": True}]),
    ],
)
def test_ingredients(components: list[str], expected: list[dict[str, Any]]) -> None:
    medication, _, _ = medication_of(
        "RXE||VANCO-NS^vancomycin in NS^L|1||g", "TQ1|1||Q12H", "RXR|IV", *components
    )
    found = [{k: v for k, v in i.items() if k != "itemCodeableConcept"} for i in medication["ingredient"]]
    assert found == expected


def test_the_medication_of_an_order_with_components() -> None:
    medication, request, translation = medication_of(
        "RXE||VANCO-NS^vancomycin 1 g in NS 250 mL^L|1||g|IVPB^IV piggyback^L",
        "TQ1|1||Q12H",
        "RXR|IV",
        NS,
        VANCO,
    )
    # the same order makes the same Medication, and two orders two
    again, _, _ = medication_of(
        "RXE||VANCO-NS^vancomycin 1 g in NS 250 mL^L|1||g", "TQ1|1||Q12H", "RXR|IV", VANCO
    )
    other = translate(rde("ORC|NW|RX7002^EHR", "RXE||VANCO-NS^vancomycin in NS^L|1||g", "TQ1|1||Q12H", VANCO))
    assert again["id"] == medication["id"] != resources(other, "Medication")[0]["id"]
    assert medication["code"] == {"coding": [{"code": "VANCO-NS", "display": "vancomycin 1 g in NS 250 mL"}]}
    assert medication["form"] == {"coding": [{"code": "IVPB", "display": "IV piggyback"}]}
    assert [i["itemCodeableConcept"]["coding"][0]["code"] for i in medication["ingredient"]] == [
        "313002",
        "11124",
    ]
    assert request["medicationReference"] == {
        "reference": f"Medication/{medication['id']}",
        "display": "vancomycin 1 g in NS 250 mL",
    }
    assert "medicationCodeableConcept" not in request
    # the Medication is produced before the request that references it
    order = [p.resource["resourceType"] for p in translation.resources]
    assert order.index("Medication") < order.index("MedicationRequest")


def test_an_order_without_components_keeps_its_code() -> None:
    translation = translate(rde(ORC, "RXE||2626^clozapine^RXNORM|100||mg", "TQ1|1||BID"))
    (request,) = resources(translation, "MedicationRequest")
    assert request["medicationCodeableConcept"]["coding"][0]["code"] == "2626"
    assert resources(translation, "Medication") == []


@pytest.mark.parametrize(
    ("order", "codes", "unused"),
    [
        # the encoded order's components win over the requested order's, which stay unused (and listed)
        (
            [
                "RXO|VANCO-NS^vancomycin in NS^L|1||g",
                "RXR|IV",
                "RXC|A|11124^vancomycin^RXNORM|1|g",
                "RXE||VANCO-NS^vancomycin in NS^L|1||g",
                "TQ1|1||Q12H",
                "RXR|IV",
                NS,
                VANCO,
            ],
            ["313002", "11124"],
            ["RXC#6"],
        ),
        # without an RXE, the requested order's components
        (["RXO|VANCO-NS^vancomycin in NS^L|1||g", "RXR|IV", NS, VANCO], ["313002", "11124"], []),
    ],
)
def test_which_components_describe_the_order(order: list[str], codes: list[str], unused: list[str]) -> None:
    medication, _, translation = medication_of(*order)
    assert [i["itemCodeableConcept"]["coding"][0]["code"] for i in medication["ingredient"]] == codes
    assert [u for u in translation.unused if u.startswith("RXC")] == unused


@pytest.mark.parametrize(
    ("rxc", "problem"),
    [
        ("RXC|X|11124^vancomycin^RXNORM|1|g", "RXC#7: component type 'X' is not A or B (table 0166)"),
        ("RXC|A||1|g", "RXC#7 has no component code (RXC-2); left out"),
    ],
)
def test_components_that_cannot_be_mapped_are_reported(rxc: str, problem: str) -> None:
    _, _, translation = medication_of("RXE||VANCO-NS^vancomycin in NS^L|1||g", "TQ1|1||Q12H", "RXR|IV", rxc)
    assert problem in translation.problems


def test_a_dispense_of_a_mixture_still_points_at_its_order() -> None:
    rds = rde(
        ORC,
        "RXE||VANCO-NS^vancomycin in NS^L|1||g",
        "TQ1|1||Q12H",
        "RXR|IV",
        NS,
        VANCO,
        "RXD|1|VANCO-NS^vancomycin in NS^L|20240301101500-0500|1|EA^each",
        "RXR|IV",
        "RXC|A|11124^vancomycin^RXNORM|1|g",
    ).replace("RDE^O11^RDE_O11", "RDS^O13^RDS_O13")
    translation = translate(rds)
    (medication,) = resources(translation, "Medication")
    (request,) = resources(translation, "MedicationRequest")
    (dispense,) = resources(translation, "MedicationDispense")
    assert request["medicationReference"]["reference"] == f"Medication/{medication['id']}"
    assert len(medication["ingredient"]) == 2  # the order's components, not the dispense's
    assert dispense["medicationCodeableConcept"]["coding"][0]["code"] == "VANCO-NS"
    assert dispense["authorizingPrescription"] == [{"reference": f"MedicationRequest/{request['id']}"}]
    assert dispense["dosageInstruction"][0]["timing"]["code"]["coding"][0]["code"] == "Q12H"
    assert [u for u in translation.unused if u.startswith("RXC")] == ["RXC#11"]  # the dispense's: listed


def test_each_dispense_of_an_rds_carries_only_its_own_rxd() -> None:
    """Two fills in one RDS^O13: each MedicationDispense has its own prescription number and quantity,
    once (the order's other RXD segments were in its scope, and repeated rules read them all)."""
    segments = [
        "MSH|^~\\&|PHARMACY|SPECIALTY RX|GATEWAY|SPECIALTY RX|20240305090000-0500||RDS^O13^RDS_O13|RDS-2|P|"
        "2.5.1",
        "PID|1||MRN-RDS^^^HOSP&2.16.840.1.113883.19.5&ISO^MR||Testperson^Alex||19800203|F",
        "ORC|RE|RX7001^EHR|||||||20240301090000-0500",
        "RXE|^BID^^20240301|2555^clozapine 100 MG Oral Tablet^RXNORM|100||mg^mg^UCUM|TAB|||||60|TAB^tablet|2",
        "RXD|1|2555^clozapine 100 MG Oral Tablet^RXNORM|20240302|28|TAB^tablet^UCUM||RXNUM-1|1",
        "RXD|2|2555^clozapine 100 MG Oral Tablet^RXNORM|20240330|30|TAB^tablet^UCUM||RXNUM-2|0",
    ]
    dispenses = resources(translate("\r".join(segments) + "\r"), "MedicationDispense")
    assert [(d["identifier"], d["quantity"]["value"]) for d in dispenses] == [
        ([{"value": "RXNUM-1"}], 28),
        ([{"value": "RXNUM-2"}], 30),
    ]


def test_an_rds_without_the_order_segments_dispenses_against_the_order_orc_names() -> None:
    """RXO and RXE are optional in RDS^O13: a pharmacy that sends only ORC and RXD still records the fill,
    against the MedicationRequest its ORC names (the one the RDE^O11 made), without writing an order."""
    (order,) = resources(
        translate(rde(ORC, "RXE||2555^clozapine 100 MG Oral Tablet^RXNORM|100||mg^mg^UCUM|TAB")),
        "MedicationRequest",
    )
    segments = [
        "MSH|^~\\&|EHR|CITY HOSPITAL|GATEWAY|SPECIALTY RX|20240305090000-0500||RDS^O13^RDS_O13|RDS-3|P|2.5.1",
        "PID|1||MRN-77^^^HOSP&2.16.840.1.113883.19.5&ISO^MR||Testperson^Alex||19800203|F",
        "ORC|RE|RX7001^EHR|||||||20240301090000-0500",
        "RXD|1|2555^clozapine 100 MG Oral Tablet^RXNORM|20240302|28|TAB^tablet^UCUM||RXNUM-9|1",
    ]
    translation = translate("\r".join(segments) + "\r")
    assert resources(translation, "MedicationRequest") == []
    (dispense,) = resources(translation, "MedicationDispense")
    assert dispense["authorizingPrescription"] == [{"reference": f"MedicationRequest/{order['id']}"}]
    assert dispense["medicationCodeableConcept"]["coding"][0]["code"] == "2555"
