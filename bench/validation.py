"""Validation micro-benchmark: the cost of validating what HL7 v2 ingest produces, in this process.

Translates `MESSAGES` six-OBX ORUs (the message of the `hl7` benchmark: each its own patient, order and
control id) once, then validates every resource they produce with one warm `Validator` carrying the
gateway's profiles and the base R4 rules, as the ingest pipeline does. Prints CPU time (process time)
per message and per resource, best of several rounds; the translation is not timed.
"""

from __future__ import annotations

import time
from typing import Any

from bench.hl7 import six_obx_oru
from gateway.adapters.hl7v2.er7 import Message
from gateway.adapters.hl7v2.translate import Translator
from gateway.fhir.base_rules import BaseRules
from gateway.fhir.profiles import ProfileSet
from gateway.fhir.validation import Validator
from gateway.mapping.files import load
from gateway.settings import PROJECT_ROOT

MESSAGES = 3000
ROUNDS = 5


def produced_resources(count: int) -> list[list[dict[str, Any]]]:
    """The resources of `count` six-OBX ORUs, per message."""
    translator = Translator(load(PROJECT_ROOT / "mappings"))
    return [
        [p.resource for p in translator.translate(Message(six_obx_oru(n))).resources] for n in range(count)
    ]


def run() -> None:
    messages = produced_resources(MESSAGES)
    profiles_dir = PROJECT_ROOT / "profiles"
    validator = Validator(ProfileSet.load(profiles_dir), BaseRules.load(profiles_dir / "r4"))
    per_message = len(messages[0])
    errors = sum(1 for resources in messages for r in resources for i in validator.validate(r) if i.is_error)
    best = float("inf")
    for _ in range(ROUNDS):
        started = time.process_time()
        for resources in messages:
            for resource in resources:
                validator.validate(resource)
        best = min(best, time.process_time() - started)
    print(f"validation of a six-OBX ORU's {per_message} resources, {MESSAGES} messages, best of {ROUNDS}:")
    per_resource_us = best / MESSAGES / per_message * 1e6
    print(f"  {best / MESSAGES * 1e3:.3f} ms CPU per message, {per_resource_us:.1f} us per resource")
    print(f"  error issues in the produced resources: {errors}")
