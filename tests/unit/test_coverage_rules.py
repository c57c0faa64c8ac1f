"""Coverage rules: the loader refuses bad files with the file and rule named; the evaluation is pure."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gateway.pa.coverage import (
    CoverageRuleError,
    CoverageRules,
    PayerCoverage,
    evaluate,
    load_coverage_rules,
)

PROJECT = Path(__file__).resolve().parents[2]
NOW = datetime(2026, 3, 31, tzinfo=UTC)
RULE = """
rules:
  - id: standin-clozapine
    payer: standin
    drug: {class: antipsychotic}
    pa_required: true
    labs: [{code: 751-8, within_days: 30, display: ANC}]
    documents: [REMS enrollment]
    quantity_limit: {max: 60, per_days: 30}
"""


def write(tmp_path: Path, text: str, name: str = "rules.yaml") -> Path:
    (tmp_path / name).write_text(text, encoding="utf-8")
    return tmp_path


def test_the_shipped_rules_load_against_the_drug_lab_classes() -> None:
    rules = load_coverage_rules(
        PROJECT / "mappings" / "coverage", frozenset({"antipsychotic", "jak-inhibitor"})
    )
    assert [r.id for r in rules.rules] == ["acme-clozapine", "acme-adalimumab", "acme-tofacitinib"]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        # no payer and no insurer: the rule would apply to nobody (or, worse, be read as everybody)
        ("rules: [{id: r1, drug: {rxnorm: ['1']}, pa_required: true}]", "needs 'payer'"),
        # an unknown drug class never matches: refused instead of silently ignored
        ("rules: [{id: r1, payer: x, drug: {class: statin}, pa_required: true}]", "drug class 'statin'"),
        # unquoted RxNorm codes become numbers
        ("rules: [{id: r1, payer: x, drug: {rxnorm: [2626]}, pa_required: true}]", "quote codes"),
        # pa_required is not optional: the point of the rule
        ("rules: [{id: r1, payer: x, drug: {rxnorm: ['1']}}]", "'pa_required' must be true or false"),
        # a typo in a key
        (
            "rules: [{id: r1, payer: x, drug: {rxnorm: ['1']}, pa_required: true, auto_submitt: true}]",
            "unknown keys",
        ),
        # a lab with no look-back
        (
            "rules: [{id: r1, payer: x, drug: {rxnorm: ['1']}, pa_required: true, labs: [{code: '1-8'}]}]",
            "within_days",
        ),
        (
            "rules: [{id: r1, payer: x, drug: {rxnorm: ['1']}, pa_required: true,"
            " quantity_limit: {max: 0, per_days: 30}}]",
            "'max'",
        ),
        ("rules: [", "cannot be read as YAML"),
    ],
)
def test_bad_files_are_refused_naming_file_and_rule(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(CoverageRuleError) as caught:
        load_coverage_rules(write(tmp_path, text), frozenset({"antipsychotic"}))
    assert message in str(caught.value) and "rules.yaml" in str(caught.value)


def test_a_rule_id_used_in_two_files_is_refused(tmp_path: Path) -> None:
    write(tmp_path, RULE, "a.yaml")
    write(tmp_path, RULE, "b.yaml")
    with pytest.raises(CoverageRuleError, match="also used in"):
        load_coverage_rules(tmp_path)


def order(quantity: float = 60, days: float = 30) -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": "o1",
        "status": "active",
        "subject": {"reference": "Patient/p1"},
        "medicationCodeableConcept": {"text": "clozapine 100 MG Oral Tablet"},
        "dispenseRequest": {
            "quantity": {"value": quantity},
            "expectedSupplyDuration": {"value": days, "code": "d"},
        },
    }


def anc(obs_id: str, when: str, status: str = "final") -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": obs_id,
        "status": status,
        "code": {"coding": [{"system": "http://loinc.org", "code": "751-8"}]},
        "effectiveDateTime": when,
    }


def rules(tmp_path: Path) -> CoverageRules:
    return load_coverage_rules(write(tmp_path, RULE))


STANDIN = PayerCoverage("Coverage/c1", "standin", "Organization/i1", insurer_name="Stand-in Health Plan")


def test_the_latest_usable_lab_within_the_look_back_is_found(tmp_path: Path) -> None:
    labs = [anc("old", "2026-01-01"), anc("recent", "2026-03-20"), anc("prelim", "2026-03-30", "preliminary")]
    decision = evaluate(order(), None, frozenset({"antipsychotic"}), [STANDIN], labs, NOW, rules(tmp_path))
    assert decision is not None and decision.pa_required
    assert [f.reference for f in decision.labs_found] == ["Observation/recent"]
    assert decision.missing() == ["REMS enrollment"] and decision.quantity_over is None


def test_a_lab_outside_the_look_back_is_missing(tmp_path: Path) -> None:
    decision = evaluate(
        order(),
        None,
        frozenset({"antipsychotic"}),
        [STANDIN],
        [anc("old", "2026-01-01")],
        NOW,
        rules(tmp_path),
    )
    assert decision is not None and decision.missing() == ["ANC (751-8) within 30 days", "REMS enrollment"]


def test_quantity_is_scaled_to_the_days_supply(tmp_path: Path) -> None:
    # 60 tablets for 15 days is 120 per 30 days: over a 60-per-30-days limit
    decision = evaluate(
        order(60, 15), None, frozenset({"antipsychotic"}), [STANDIN], [], NOW, rules(tmp_path)
    )
    assert decision is not None and decision.quantity_over is not None and "120" in decision.quantity_over


@pytest.mark.parametrize(
    ("classes", "coverage"),
    [
        (frozenset(), STANDIN),  # a drug of no class the rule names
        (
            frozenset({"antipsychotic"}),
            PayerCoverage("Coverage/c2", "other", "Organization/i2"),
        ),  # other payer
    ],
)
def test_no_rule_no_decision(tmp_path: Path, classes: frozenset[str], coverage: PayerCoverage) -> None:
    assert evaluate(order(), None, classes, [coverage], [], NOW, rules(tmp_path)) is None


def test_a_plan_rule_applies_to_its_plan_only(tmp_path: Path) -> None:
    text = RULE.replace("payer: standin", "payer: standin\n    plan: GOLD")
    loaded = load_coverage_rules(write(tmp_path, text))
    gold = PayerCoverage("Coverage/c1", "standin", "Organization/i1", plans=("GOLD",))
    assert evaluate(order(), None, frozenset({"antipsychotic"}), [STANDIN], [], NOW, loaded) is None
    assert evaluate(order(), None, frozenset({"antipsychotic"}), [gold], [], NOW, loaded) is not None


def test_a_rule_may_name_the_insurer_by_identifier(tmp_path: Path) -> None:
    text = RULE.replace("payer: standin", "insurers: ['http://hl7.org/fhir/sid/us-npi|1234567893']")
    loaded = load_coverage_rules(write(tmp_path, text))
    by_npi = PayerCoverage(
        "Coverage/c1", None, "Organization/i1", ("http://hl7.org/fhir/sid/us-npi|1234567893",)
    )
    assert evaluate(order(), None, frozenset({"antipsychotic"}), [by_npi], [], NOW, loaded) is not None
