"""JSON micro-benchmark: orjson, which the gateway used on resources, against `gateway.fhir.jsonio`, which
keeps decimals as written.

Parses and writes a typical lab Observation as stored (meta, a value and a reference range: three
decimals), a Patient (no decimal at all) and a 100-entry transaction Bundle of Observations; and times
the check an update makes against the stored version when nothing changed (`same_content`) against the
plain dict comparison it replaced. Best of several rounds, microseconds per document, in this process."""

from __future__ import annotations

import re
import timeit
from collections.abc import Callable
from typing import Any

import orjson

from gateway.fhir import jsonio
from gateway.service.fhirapi.interactions import _without_meta_stamps, same_content

ROUNDS = 7


def _literal(text: str) -> str:
    return f"@{text}@"  # replaced by the bare literal once serialised


def _written(resource: Any) -> bytes:
    return re.sub(rb'"@([^"@]+)@"', rb"\1", orjson.dumps(resource))


def observation(n: int = 0, stored: bool = True) -> dict[str, Any]:
    unit = {"unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"}
    resource: dict[str, Any] = {
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
            "coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose [Mass/volume]"}],
            "text": "Glucose",
        },
        "subject": {"reference": f"Patient/bench-{n}"},
        "effectiveDateTime": "2024-05-01T08:00:00Z",
        "issued": "2024-05-01T09:30:00.000Z",
        "performer": [{"reference": "Organization/lab-1"}],
        "valueQuantity": {"value": _literal("7.20"), **unit},
        "interpretation": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation",
                        "code": "H",
                    }
                ]
            }
        ],
        "referenceRange": [
            {"low": {"value": _literal("3.90"), **unit}, "high": {"value": _literal("5.50"), **unit}}
        ],
        "note": [{"text": "fasting sample, dilution 1:10, 2.5 h after the dose"}],
    }
    if stored:
        meta = {"versionId": "3", "lastUpdated": "2024-05-01T10:00:00.123456Z"}
        resource = {"resourceType": "Observation", "id": f"obs-{n}", "meta": meta, **resource}
    return resource


def patient() -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": "pat-1",
        "meta": {"versionId": "1", "lastUpdated": "2024-05-01T10:00:00.123456Z"},
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.19.5", "value": "MRN-12345"}],
        "name": [{"family": "Chalmers", "given": ["Peter", "James"]}],
        "gender": "male",
        "birthDate": "1974-12-25",
        "address": [{"line": ["534 Erewhon St"], "city": "PleasantVille", "postalCode": "3999"}],
    }


def transaction(entries: int = 100) -> dict[str, Any]:
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:00000000-0000-4000-8000-{n:012d}",
                "resource": observation(n, stored=False),
                "request": {"method": "POST", "url": "Observation"},
            }
            for n in range(entries)
        ],
    }


def best_us(function: Callable[[Any], Any], argument: Any, number: int) -> float:
    timer = timeit.Timer(lambda: function(argument))
    return min(timer.repeat(repeat=ROUNDS, number=number)) / number * 1e6


def _unchanged_before(stored: bytes, resource: dict[str, Any]) -> bool:
    """The no-change check `plan_update` made before decimals kept their literals."""
    return bool(_without_meta_stamps(orjson.loads(stored)) == _without_meta_stamps(resource))


def run() -> None:
    documents = [
        ("Observation (3 decimals)", _written(observation()), 20_000),
        ("Patient (no decimal)", orjson.dumps(patient()), 20_000),
        ("transaction Bundle, 100 entries", _written(transaction()), 200),
    ]
    print("JSON parse and write, µs per document (best of 7): orjson -> jsonio")
    print(f"{'document':34} {'bytes':>7}  {'parse':>22}  {'write':>22}")
    for name, raw, number in documents:
        parsed_plain, parsed_literal = orjson.loads(raw), jsonio.loads(raw)
        assert jsonio.dumps(parsed_literal) == raw  # the point of it all
        parse = (best_us(orjson.loads, raw, number), best_us(jsonio.loads, raw, number))
        write = (best_us(orjson.dumps, parsed_plain, number), best_us(jsonio.dumps, parsed_literal, number))
        print(
            f"{name:34} {len(raw):7}  {parse[0]:7.1f} -> {parse[1]:7.1f} x{parse[1] / parse[0]:.1f}"
            f"  {write[0]:7.1f} -> {write[1]:7.1f} x{write[1] / write[0]:.1f}"
        )
    stored = _written(observation())
    resend = jsonio.loads(stored)
    before = best_us(lambda r: _unchanged_before(stored, r), resend, 20_000)
    after = best_us(lambda r: same_content(stored, r), resend, 20_000)
    print(f"update of an unchanged Observation, no-change check: {before:.1f} -> {after:.1f} µs")
