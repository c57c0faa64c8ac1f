"""Drug classes of orders, as pharmacist matching reads them from the drug-lab monitoring rules."""

from __future__ import annotations

from pathlib import Path

from gateway.mapping.monitoring import load_monitoring
from gateway.routing.labs import ordered_rules

RULES = load_monitoring(Path(__file__).resolve().parents[2] / "mappings")


def classes(request: dict[str, object]) -> set[str | None]:
    return {rule.drug_class for rule in ordered_rules(request, RULES)}


def test_every_shipped_rule_names_its_drug_class() -> None:
    assert all(rule.drug_class for rule in RULES.drug_lab)


def test_an_order_is_classed_by_name_or_by_code() -> None:
    assert classes({"medicationCodeableConcept": {"text": "Clozapine 100 MG Oral Tablet"}}) == {
        "antipsychotic"
    }
    rxnorm = {"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "27169"}
    assert classes({"medicationCodeableConcept": {"coding": [rxnorm]}}) == {"dmard"}
    assert classes({"medicationCodeableConcept": {"text": "amoxicillin 500 MG"}}) == set()
