"""Loading `mappings/monitoring/`: the real files, and the errors a broken file gets."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from gateway.mapping.files import MappingError
from gateway.mapping.monitoring import MonitoringRules, load_monitoring
from gateway.routing import units

MAPPINGS = Path(__file__).resolve().parents[2] / "mappings"


@pytest.fixture(scope="module")
def rules() -> MonitoringRules:
    return load_monitoring(MAPPINGS)


def test_real_critical_file(rules: MonitoringRules) -> None:
    assert rules.critical_interpretations == {"HH", "LL", "AA"}
    by_code = {t.code: t for t in rules.critical_thresholds}
    assert len(by_code) == len(rules.critical_thresholds) >= 10
    potassium = by_code["2823-3"]
    assert (potassium.system, potassium.unit, potassium.low, potassium.high) == (
        "http://loinc.org",
        "mmol/L",
        2.5,
        6.5,
    )
    assert not potassium.inclusive
    assert by_code["14334-7"].inclusive and by_code["14334-7"].monovalent
    assert by_code["6301-6"].unit is None  # INR is a ratio


def test_real_drug_lab_file(rules: MonitoringRules) -> None:
    by_id = {rule.id: rule for rule in rules.drug_lab}
    assert len(by_id) == len(rules.drug_lab)
    clozapine = by_id["clozapine-anc"]
    assert [b.describe() for b in clozapine.bands] == ["< 500 /uL", "< 1000 /uL", "< 1500 /uL"]
    assert [b.severity for b in clozapine.bands] == ["critical", "high", "moderate"]
    assert {(c.system, c.code) for c in clozapine.medication_codes} == {
        ("http://www.nlm.nih.gov/research/umls/rxnorm", "2626")
    }
    assert "clozaril" in clozapine.names
    assert {lab.code for lab in clozapine.labs} == {"751-8", "26499-4"}
    assert [b.describe() for b in by_id["lithium-level"].bands] == [">= 1.5 meq/L", "> 1.2 meq/L"]
    assert by_id["methotrexate-liver"].bands[0].describe() == "> 3x ULN"
    assert by_id["hcv-daa-hbv"].bands[0].condition == "positive"
    assert by_id["tnf-inhibitor-igra"].note and "confirm locally" in by_id["tnf-inhibitor-igra"].note


def test_every_unit_in_the_real_files_converts(rules: MonitoringRules) -> None:
    # A unit the converter does not know would make its band silently never hold.
    used = {t.unit for t in rules.critical_thresholds} | {b.unit for r in rules.drug_lab for b in r.bands}
    unknown = {unit for unit in used if unit is not None and not units.is_known(unit)}
    assert not unknown


def test_every_band_has_a_source_and_an_action(rules: MonitoringRules) -> None:
    for rule in rules.drug_lab:
        for band in rule.bands:
            assert band.source.strip() and band.action.strip(), rule.id


def test_missing_folder_or_file_means_no_rules(tmp_path: Path) -> None:
    assert load_monitoring(tmp_path) == MonitoringRules()
    (tmp_path / "monitoring").mkdir()
    (tmp_path / "monitoring" / "critical.yaml").write_text("interpretations: [HH]\n", encoding="utf-8")
    loaded = load_monitoring(tmp_path)
    assert loaded.critical_interpretations == {"HH"}
    assert loaded.drug_lab == ()


POTASSIUM = "thresholds: [{code: 2823-3, system: http://loinc.org, display: K"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
GOOD_BAND = "{when: {below: 500}, unit: /uL, severity: high, action: stop}"


def _rule(**overrides: str) -> str:
    fields = {
        "id": "r1",
        "drug": "clozapine",
        "names": "[clozapine]",
        "labs": "[{system: http://loinc.org, code: 751-8}]",
        "source": "label",
        "bands": f"[{GOOD_BAND}]",
    } | overrides
    body = "\n".join(f"    {key}: {value}" for key, value in fields.items())
    return f"rules:\n  - {body.lstrip()}\n"


@pytest.mark.parametrize(
    ("file", "content", "expected"),
    [
        ("critical.yaml", POTASSIUM + "}]",
         "thresholds[0] (2823-3): needs 'low' and/or 'high'"),
        ("critical.yaml", POTASSIUM + ", low: 7, high: 3}]",
         "thresholds[0] (2823-3): 'low' (7) must be below 'high' (3)"),
        ("critical.yaml", POTASSIUM + ", high: '6.5'}]",
         "thresholds[0] (2823-3): 'high' must be a number"),
        ("critical.yaml", POTASSIUM + ", hihg: 6}]",
         "thresholds[0] (2823-3): unknown keys ['hihg']"),
        ("critical.yaml", "interpretations: HH", "'interpretations' must be a list"),
        ("critical.yaml", "thresholds: {code: 1}", "'thresholds' must be a list"),
        ("drug-lab.yaml", "rules: [\n  - {id: [", "cannot be read as YAML"),
        ("drug-lab.yaml", _rule(medications=f"[{{system: {RXNORM}, code: 2626}}]"),
         "rules[0] (r1): medications[0]: 'code' must be a non-empty string (quote it)"),
        ("drug-lab.yaml", _rule(bands="[{when: {under: 500}, unit: /uL, severity: high, action: stop}]"),
         "rules[0] (r1): bands[0]: 'when' needs exactly one of"),
        ("drug-lab.yaml", _rule(bands="[{when: {below: 5, above: 9}, unit: /uL, severity: high, action: x}]"),
         "rules[0] (r1): bands[0]: 'when' needs exactly one of"),
        ("drug-lab.yaml", _rule(bands="[{when: {below: 500}, severity: high, action: stop}]"),
         "rules[0] (r1): bands[0]: 'below' needs a 'unit'"),
        ("drug-lab.yaml", _rule(bands="[{when: {above_uln: 3}, unit: U/L, severity: high, action: stop}]"),
         "rules[0] (r1): bands[0]: 'unit' is only for below / above / at_least"),
        ("drug-lab.yaml", _rule(bands="[{when: {below: 500}, unit: /uL, severity: urgent, action: stop}]"),
         "rules[0] (r1): bands[0]: 'severity' must be one of"),
        ("drug-lab.yaml", _rule(bands=f"[{GOOD_BAND.replace('high', 'moderate')}, "
                                      "{when: {below: 100}, unit: /uL, severity: critical, action: x}]"),
         "rules[0] (r1): bands[1] is more severe than bands[0]"),
        ("drug-lab.yaml", _rule(source="null"), "rules[0] (r1): bands[0]: needs a 'source'"),
        ("drug-lab.yaml", _rule(names="[]"), "rules[0] (r1): needs 'medications' (RxNorm"),
        ("drug-lab.yaml", _rule(labs="[]"), "rules[0] (r1): 'labs' must be a non-empty list"),
        ("drug-lab.yaml", _rule(dose="10 mg"), "rules[0] (r1): unknown keys ['dose']"),
        ("drug-lab.yaml", _rule() + _rule().removeprefix("rules:\n"), "rules[1]: id 'r1' is used twice"),
    ],
)  # fmt: skip
def test_broken_file_names_file_and_entry(tmp_path: Path, file: str, content: str, expected: str) -> None:
    folder = tmp_path / "monitoring"
    folder.mkdir()
    (folder / file).write_text(textwrap.dedent(content), encoding="utf-8")
    with pytest.raises(MappingError) as caught:
        load_monitoring(tmp_path)
    message = str(caught.value)
    assert message.startswith(str(folder / file) + ":")
    assert expected in message


def test_the_same_rule_text_is_accepted(tmp_path: Path) -> None:
    # The broken-file cases above are one edit away from this valid rule, so each error is that edit's.
    folder = tmp_path / "monitoring"
    folder.mkdir()
    (folder / "drug-lab.yaml").write_text(_rule(), encoding="utf-8")
    (rule,) = load_monitoring(tmp_path).drug_lab
    assert (rule.id, rule.names, rule.bands[0].describe(), rule.bands[0].source) == (
        "r1",
        ("clozapine",),
        "< 500 /uL",
        "label",
    )
