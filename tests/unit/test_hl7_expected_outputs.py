"""Our output for the FHIR-Converter samples against the output that converter ships.

Each Observation's code, value, unit, interpretation, reference range, status and effective time, and each
MedicationRequest's medication, status and dosage text must match, except where mappings/README.md lists
a deliberate difference; then the gateway's own rule is checked instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gateway.adapters.hl7v2.er7 import Message, Segment
from gateway.adapters.hl7v2.translate import Produced, TranslationError, Translator
from gateway.fhir.dates import date_range
from gateway.mapping.files import load
from gateway.settings import PROJECT_ROOT
from tests.conftest import CORPUS

MAPPINGS = load(PROJECT_ROOT / "mappings")
TRANSLATOR = Translator(MAPPINGS)
UCUM = "http://unitsofmeasure.org"
GTS = "http://terminology.hl7.org/CodeSystem/v3-GTSAbbreviation"
V2_TABLE = "http://terminology.hl7.org/CodeSystem/v2-"
ALL_SAMPLES = sorted((CORPUS / "hl7v2" / "FHIR-Converter").glob("*.hl7"))
SUPPORTED = [p for p in ALL_SAMPLES if TRANSLATOR.supports(Message(p.read_text(encoding="utf-8")))]
OUT_OF_SCOPE = [p for p in ALL_SAMPLES if p not in SUPPORTED]
# Supported types the gateway refuses on purpose, with the reason it gives.
REFUSED = {
    # Its ORC was joined onto the end of the GT1 line ("...^LORC|NW|..."): an order without an ORC is no
    # order, and the sender is told so (AE) rather than getting an AA for a Patient alone.
    "MDHHS-OML-O21-1": "it has no ORC",
}
SAMPLES = [p for p in SUPPORTED if p.stem not in REFUSED]


def test_the_corpus_is_there() -> None:
    # Without it every comparison below would silently have nothing to compare.
    assert len(SAMPLES) >= 15, f"no FHIR-Converter samples under {CORPUS} (set GATEWAY_CORPUS_DIR)"


def _translate(path: Path) -> list[Produced]:
    return TRANSLATOR.translate(Message(path.read_text(encoding="utf-8"))).resources


@pytest.mark.parametrize("path", OUT_OF_SCOPE, ids=[p.stem for p in OUT_OF_SCOPE])
def test_samples_outside_the_gateways_scope_are_rejected(path: Path) -> None:
    with pytest.raises(TranslationError) as raised:
        _translate(path)
    assert raised.value.ack == "AR" and "not supported" in raised.value.text


@pytest.mark.parametrize("stem", sorted(REFUSED))
def test_broken_samples_are_refused_with_the_reason(stem: str) -> None:
    with pytest.raises(TranslationError) as raised:
        _translate(next(p for p in SUPPORTED if p.stem == stem))
    assert raised.value.ack == "AE" and REFUSED[stem] in raised.value.text


def _expected(path: Path) -> list[dict[str, Any]]:
    bundle = json.loads(path.with_suffix(".expected.json").read_text(encoding="utf-8"))
    return [e["resource"] for e in bundle["entry"]]


def _code(resource: dict[str, Any]) -> str:
    return str(resource.get("code", {}).get("coding", [{}])[0].get("code"))


def _instant(value: str | None) -> int | None:
    return date_range(value)[0] if value else None


def _value(resource: dict[str, Any]) -> tuple[str, Any] | None:
    for key, value in resource.items():
        if key.startswith("value"):
            return key, value
    return None


def _check_observation(ours: dict[str, Any], theirs: dict[str, Any], obx: Segment) -> None:
    where = f"OBX {_code(ours)}"
    # code: same code; same system unless theirs is invented (example.com)
    our_coding, their_coding = ours["code"]["coding"][0], theirs["code"]["coding"][0]
    assert our_coding["code"] == their_coding["code"], where
    if "example.com" not in their_coding.get("system", "example.com"):
        assert our_coding.get("system") == their_coding.get("system"), where
    # value
    their_value, our_value = _value(theirs), _value(ours)
    if their_value is None:
        # deliberate: a repeated OBX-5 keeps its first value
        assert our_value is None or len(obx.repetitions(5)) > 1, where
    else:
        assert our_value is not None and our_value[0] == their_value[0], where
        if our_value[0] == "valueQuantity":
            assert our_value[1]["value"] == their_value[1]["value"], where
            their_unit, our_unit = their_value[1].get("unit"), our_value[1].get("unit")
            if their_unit != our_unit:  # deliberate: UCUM where the units table knows the spelling
                mapped = MAPPINGS.tables.map("units", their_unit)
                assert isinstance(mapped, dict) and mapped["code"] == our_value[1]["code"], where
        elif our_value[0] == "valueCodeableConcept":
            assert [c["code"] for c in our_value[1]["coding"]] == [
                c["code"] for c in their_value[1]["coding"]
            ]
        elif our_value[0] == "valueDateTime":
            assert _instant(our_value[1]) == _instant(their_value[1]), where
        else:
            assert our_value[1] == their_value[1], where
    # interpretation
    codes = [
        sorted(c["code"] for i in r.get("interpretation", []) for c in i["coding"]) for r in (ours, theirs)
    ]
    assert codes[0] == codes[1], where
    # reference range: their bounds must be ours; text-only ranges keep the text (we add bounds on purpose)
    for our_range, their_range in zip(
        ours.get("referenceRange", []), theirs.get("referenceRange", []), strict=False
    ):
        for bound in ("low", "high"):
            if bound in their_range:
                assert our_range[bound]["value"] == their_range[bound]["value"], where
        if "text" in their_range:
            assert our_range["text"] == their_range["text"], where
    assert ours.get("referenceRange") or not theirs.get("referenceRange"), where
    assert obx.get(7) or not ours.get("referenceRange"), where  # a range only from OBX-7
    # status: deliberate for I and S (the IG's table 0085 mapping)
    if ours["status"] != theirs["status"]:
        assert theirs["status"] == "unknown" and obx.get(11).c(1) in ("I", "S"), where
        assert ours["status"] == MAPPINGS.tables.map("result-status", obx.get(11).c(1)), where
    # effective: the same instant; when OBX-14 is empty we take the specimen's time on purpose
    their_time = _instant(theirs.get("effectiveDateTime"))
    if their_time is not None:
        assert _instant(ours.get("effectiveDateTime")) == their_time, where
    elif ours.get("effectiveDateTime"):
        assert not obx.get(14), where


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_observations_match_the_reference_output(path: Path) -> None:
    produced = _translate(path)
    ours = [p for p in produced if p.resource["resourceType"] == "Observation"]
    theirs = [r for r in _expected(path) if r["resourceType"] == "Observation" and "code" in r]
    unmatched = list(ours)
    for expected in theirs:
        if _code(expected) in ("death-certificate", "autopsy", "coroner", "injury-incident"):
            continue  # FHIR-Converter's Observations from PDA (death) segments: outside this gateway's scope
        match = next((p for p in unmatched if _code(p.resource) == _code(expected)), None)
        assert match is not None, f"{path.stem}: no Observation for {_code(expected)}"
        unmatched.remove(match)
        assert match.source is not None and match.source.name == "OBX"
        _check_observation(match.resource, expected, match.source)
    for extra in unmatched:  # deliberate: every coded OBX is mapped (after SPM, RP, ED included)
        assert extra.source is not None and extra.source.name == "OBX" and extra.source.get(3)


def _by_reference(resources: list[dict[str, Any]], reference: str) -> dict[str, Any]:
    resource_type, _, rid = reference.partition("/")
    return next(r for r in resources if r["resourceType"] == resource_type and r["id"] == rid)


def _medication(
    request: dict[str, Any], resources: list[dict[str, Any]]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The ordered medication's concept and its ingredients' concepts, from the code or the Medication
    referenced. FHIR-Converter makes every ingredient a Medication of its own (itemReference)."""
    concept = request.get("medicationCodeableConcept")
    if concept is not None:
        return concept, []
    medication = _by_reference(resources, request["medicationReference"]["reference"])
    items = [
        i["itemCodeableConcept"]
        if "itemCodeableConcept" in i
        else _by_reference(resources, i["itemReference"]["reference"])["code"]
        for i in medication.get("ingredient", [])
    ]
    return medication["code"], items


def _ours(request: dict[str, Any], produced: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What to resolve our request's Medication in: the gateway produces it just before its request (the
    corpus has messages whose two orders share a placer number, and so their ids)."""
    at = next(i for i, r in enumerate(produced) if r is request)
    return produced[at - 1 : at] if "medicationReference" in request else []


def _codes(concepts: list[dict[str, Any]]) -> list[str]:
    return [c["coding"][0]["code"] for c in concepts]


def _check_quantity(ours: dict[str, Any], theirs: dict[str, Any], where: str) -> None:
    """Same value; the unit theirs (the sender's text), or UCUM where the units table knows their spelling.
    Their non-UCUM unit codes (SNOMED CT dose forms) are not kept: a unit code is UCUM or nothing here."""
    assert ours["value"] == theirs["value"], where
    if ours.get("unit") != theirs.get("unit"):
        mapped = MAPPINGS.tables.map("units", theirs.get("unit", ""))
        assert isinstance(mapped, dict) and mapped["code"] == ours.get("code"), where


def _check_timing(ours: dict[str, Any], theirs: dict[str, Any], where: str) -> None:
    if "code" in theirs:
        their_coding, our_coding = theirs["code"]["coding"][0], ours["code"]["coding"][0]
        assert our_coding["code"] == their_coding["code"], where
        if our_coding.get("system") != their_coding.get("system"):
            # deliberate: FHIR's TimingAbbreviation where table repeat-pattern marks the code as one
            assert (
                our_coding["system"] == GTS
                and MAPPINGS.tables.map("repeat-pattern", our_coding["code"])["gts"]
            )
    their_repeat, our_repeat = theirs.get("repeat", {}), ours.get("repeat", {})
    for key in ("frequency", "period", "periodUnit", "count"):
        if key in their_repeat:
            assert our_repeat.get(key) == their_repeat[key], f"{where}: {key}"
    # deliberate: explicit times (TQ1-4) are mapped where they map none, and `when` gives way to them (tim-10)
    assert set(their_repeat.get("timeOfDay", [])) <= set(our_repeat.get("timeOfDay", [])), where
    if "when" in their_repeat:
        assert our_repeat.get("when") == their_repeat["when"] or our_repeat.get("timeOfDay"), where
    for bound in ("start", "end"):
        their_bound = their_repeat.get("boundsPeriod", {}).get(bound)
        if their_bound:
            assert _instant(our_repeat["boundsPeriod"][bound]) == _instant(their_bound), where
    if "boundsDuration" in their_repeat:
        # deliberate: a Duration's unit is a UCUM unit of time ("d"; theirs writes the sender's "D")
        ours_duration = our_repeat["boundsDuration"]
        assert ours_duration["value"] == their_repeat["boundsDuration"]["value"], where
        assert ours_duration["system"] == UCUM and ours_duration["code"] in ("s", "min", "h", "d", "wk", "mo")


def _check_dosage(ours: dict[str, Any], theirs: dict[str, Any], where: str) -> None:
    """Timing, dose, rate, route and site of the first Dosage."""
    if "timing" in theirs:
        _check_timing(ours["timing"], theirs["timing"], where)
    for their_rate in theirs.get("doseAndRate", [])[:1]:
        our_rate = ours["doseAndRate"][0]
        if "doseQuantity" in their_rate:
            _check_quantity(our_rate["doseQuantity"], their_rate["doseQuantity"], where)
        for bound in ("low", "high"):
            if "doseRange" in their_rate:
                _check_quantity(our_rate["doseRange"][bound], their_rate["doseRange"][bound], where)
        if "rateQuantity" in our_rate:  # their RXO "rate" is RXO-21/22, a strength; ours is RXE-23/24
            _check_quantity(our_rate["rateQuantity"], their_rate["rateQuantity"], where)
    for element in ("route", "site"):
        if element in theirs:
            their_coding, our_coding = theirs[element]["coding"][0], ours[element]["coding"][0]
            assert our_coding["code"] == their_coding["code"], f"{where}: {element}"
            # deliberate: a code sent without a coding system is the code of the field's HL7 table
            assert our_coding["system"].startswith(V2_TABLE), f"{where}: {element}"


@pytest.mark.parametrize("path", SAMPLES, ids=[p.stem for p in SAMPLES])
def test_medication_requests_match_the_reference_output(path: Path) -> None:
    produced = [p.resource for p in _translate(path)]
    expected = _expected(path)
    ours = [r for r in produced if r["resourceType"] == "MedicationRequest"]
    theirs = [r for r in expected if r["resourceType"] == "MedicationRequest"]
    if not theirs:
        assert not ours
        return
    for request in ours:
        # deliberate: a Medication resource only for compounds and mixtures (orders with RXC), else the code
        concept, items = _medication(request, _ours(request, produced))
        code = concept["coding"][0]["code"]
        # deliberate: one MedicationRequest per order; FHIR-Converter's one of the same intent is the match
        match = next(
            t
            for t in theirs
            if t["intent"] == request["intent"] and _codes([_medication(t, expected)[0]])[0] == code
        )
        where = f"{path.stem} {request['intent']} {code}"
        if items:  # the same components, as ingredient codes rather than Medications of their own
            assert _codes(items) == _codes(_medication(match, expected)[1]), where
        assert request["status"] == match["status"]
        assert request.get("priority") == match.get("priority"), where
        for our_dosage, their_dosage in zip(
            request.get("dosageInstruction", [])[:1], match.get("dosageInstruction", [])[:1], strict=False
        ):
            _check_dosage(our_dosage, their_dosage, where)
        ours_text = " ".join(d.get("text", "") for d in request.get("dosageInstruction", []))
        for dosage in match.get("dosageInstruction", []):
            # deliberate: the SIG holds the administration instructions (their patientInstruction) and TQ1-11;
            # their text's first part is RXO-6, instructions to the pharmacy, which we keep as a note
            if dosage.get("patientInstruction") and request["intent"] == "original-order":
                assert dosage["patientInstruction"] in ours_text
            pharmacy_part, _, tq1_part = (dosage.get("text") or "").partition("+")
            if tq1_part and "Text instruction" in tq1_part:
                assert tq1_part in ours_text
            if pharmacy_part and request["intent"] == "original-order":
                notes = [n["text"] for n in request.get("note", [])]
                assert f"Pharmacy instructions: {pharmacy_part}" in notes
