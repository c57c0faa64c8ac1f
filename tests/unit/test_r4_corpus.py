"""Nothing the gateway produces from the HL7 v2 corpus is refused by the base R4 rules or its profiles."""

from __future__ import annotations

from collections import Counter

from gateway.adapters.hl7v2.er7 import Message
from gateway.adapters.hl7v2.translate import TranslationError, Translator
from gateway.fhir.profiles import ProfileSet
from gateway.fhir.validation import Validator
from gateway.mapping.files import load
from gateway.settings import PROJECT_ROOT
from tests.conftest import CORPUS


def test_every_resource_translated_from_the_corpus_is_valid_r4() -> None:
    translator = Translator(load(PROJECT_ROOT / "mappings"))
    validator = Validator(ProfileSet.load(PROJECT_ROOT / "profiles"))
    paths = sorted((CORPUS / "hl7v2").glob("*/*.hl7"))
    assert len(paths) >= 40, f"no corpus under {CORPUS} (set GATEWAY_CORPUS_DIR)"
    kinds: Counter[str] = Counter()
    errors = []
    for path in paths:
        try:
            translation = translator.translate(Message(path.read_text(encoding="utf-8")))
        except TranslationError:
            continue  # refused before validation, for reasons of its own (the fidelity tests name them)
        for produced in translation.resources:
            resource = produced.resource
            kinds[resource["resourceType"]] += 1
            errors += [
                (path.name, e, i.diagnostics)
                for i in validator.validate(resource)
                if i.is_error
                for e in i.expression
            ]
    assert errors == []
    # the check is not vacuous: the corpus yields results, orders, patients and pharmacy resources
    assert sum(kinds.values()) >= 200
    assert {"Patient", "Observation", "DiagnosticReport", "ServiceRequest", "MedicationRequest"} <= set(kinds)
