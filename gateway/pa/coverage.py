"""Payers' coverage rules for specialty drugs (`mappings/coverage/*.yaml`) and their pure evaluation.

    rules:
      - id: acme-clozapine                  # unique across all files
        payer: acme-health                  # a payers-file `name`, or "*" for any payer; and/or
        insurers: [Organization/acme, "http://hl7.org/fhir/sid/us-npi|1234567893"]
        plan: GOLD-PPO                      # optional: a Coverage.class value (any class type)
        drug: {rxnorm: ["2626"], class: antipsychotic}   # codes and/or a drug-lab.yaml drug_class
        pa_required: true
        labs: [{system: http://loinc.org, code: 751-8, within_days: 30, display: ANC}]
        documents: [REMS patient enrollment]
        quantity_limit: {max: 60, per_days: 30}
        auto_submit: false
        source: Acme formulary 2026, antipsychotics

The first rule that matches wins (files by name, rules in order): list a plan's rules before the payer's.
Every entry is checked at start (unknown key, missing payer or drug, unknown drug class): a typo stops
the start with the file and the rule named, instead of a rule that silently never fires.

`evaluate` is pure: the caller gathers the order, its Medication, the drug classes it belongs to (from the
drug-lab rules), the patient's Coverages (with the payer each one resolves to) and recent Observations.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from gateway.fhir import dates

RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"
ANY_PAYER = "*"
DAY_US = 86_400_000_000
# Results a payer accepts as evidence: a preliminary or withdrawn result is not one.
USABLE_STATUSES = frozenset({"final", "amended", "corrected"})
_RULE_KEYS = {
    "id", "payer", "insurers", "plan", "drug", "pa_required", "labs", "documents", "quantity_limit",
    "auto_submit", "source", "note",
}  # fmt: skip
_DRUG_KEYS = {"rxnorm", "class"}
_LAB_KEYS = {"system", "code", "within_days", "display"}
_LIMIT_KEYS = {"max", "per_days"}
_SUPPLY_DAYS = {"d": 1, "day": 1, "days": 1, "wk": 7, "week": 7, "weeks": 7, "mo": 30, "month": 30}


class CoverageRuleError(ValueError):
    """A coverage rules file that cannot be used; the message names the file and the rule."""


@dataclass(frozen=True, slots=True)
class LabRequirement:
    system: str
    code: str
    within_days: int
    display: str

    def describe(self) -> str:
        return f"{self.display} ({self.code}) within {self.within_days} days"


@dataclass(frozen=True, slots=True)
class QuantityLimit:
    max: float
    per_days: int


@dataclass(frozen=True, slots=True)
class CoverageRule:
    id: str
    payers: tuple[str, ...]  # payers-file names; ("*",) for any payer
    insurers: tuple[str, ...]  # Organization references or identifiers (system|value)
    plan: str | None
    rxnorm: tuple[str, ...]
    drug_class: str | None
    pa_required: bool
    labs: tuple[LabRequirement, ...] = ()
    documents: tuple[str, ...] = ()
    quantity_limit: QuantityLimit | None = None
    auto_submit: bool = False
    source: str | None = None


@dataclass(frozen=True, slots=True)
class CoverageRules:
    rules: tuple[CoverageRule, ...] = ()

    def drug_classes(self) -> frozenset[str]:
        return frozenset(r.drug_class for r in self.rules if r.drug_class)


@dataclass(frozen=True, slots=True)
class PayerCoverage:
    """One of the patient's active Coverages, as the rules see it."""

    reference: str  # Coverage/id
    payer: str | None  # the payers-file name its insurer resolves to
    insurer: str | None  # Organization/id
    insurer_identifiers: tuple[str, ...] = ()
    plans: tuple[str, ...] = ()  # Coverage.class values
    insurer_name: str | None = None


@dataclass(frozen=True, slots=True)
class FoundLab:
    requirement: LabRequirement
    reference: str  # Observation/id


@dataclass(frozen=True, slots=True)
class CoverageDecision:
    rule: CoverageRule
    coverage: PayerCoverage
    labs_found: tuple[FoundLab, ...]
    labs_missing: tuple[LabRequirement, ...]
    quantity_over: str | None  # why the order exceeds the limit, None when within it (or no limit)

    @property
    def pa_required(self) -> bool:
        return self.rule.pa_required

    @property
    def payer_label(self) -> str:
        return self.coverage.insurer_name or self.coverage.payer or "the payer"

    def missing(self) -> list[str]:
        """What the request still lacks, as a pharmacist reads it: labs, then the expected documents."""
        return [lab.describe() for lab in self.labs_missing] + list(self.rule.documents)


# -- loading --------------------------------------------------------------------------------------------


def _fail(where: str, message: str) -> CoverageRuleError:
    return CoverageRuleError(f"{where}: {message}")


def _text(where: str, entry: dict[str, Any], key: str, *, required: bool = False) -> str | None:
    value = entry.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        # YAML reads 2626 as a number: codes must be quoted to stay what was written.
        hint = " (quote it)" if isinstance(value, int | float) and not isinstance(value, bool) else ""
        raise _fail(where, f"'{key}' must be a non-empty string{hint}, got {value!r}")
    return value.strip()


def _strings(where: str, value: Any, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) and v.strip() for v in value):
        raise _fail(
            where, f"'{key}' must be a string or a list of non-empty strings (quote codes), got {value!r}"
        )
    return tuple(v.strip() for v in value)


def _keys(where: str, value: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise _fail(where, f"must be a mapping, got {value!r}")
    unknown = set(value) - allowed
    if unknown:
        raise _fail(where, f"unknown keys {sorted(map(str, unknown))} (allowed: {sorted(allowed)})")
    return value


def _flag(where: str, entry: dict[str, Any], key: str, *, required: bool = False) -> bool:
    if key not in entry and not required:
        return False
    value = entry.get(key)
    if not isinstance(value, bool):
        raise _fail(where, f"'{key}' must be true or false, got {value!r}")
    return value


def _whole(where: str, value: Any, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise _fail(where, f"'{key}' must be a whole number >= 1, got {value!r}")
    return value


def _lab(where: str, value: Any) -> LabRequirement:
    entry = _keys(where, value, _LAB_KEYS)
    code = _text(where, entry, "code", required=True)
    assert code is not None
    return LabRequirement(
        system=_text(where, entry, "system") or "http://loinc.org",
        code=code,
        within_days=_whole(where, entry.get("within_days"), "within_days"),
        display=_text(where, entry, "display") or code,
    )


def _limit(where: str, value: Any) -> QuantityLimit | None:
    if value is None:
        return None
    where = f"{where}: quantity_limit"
    entry = _keys(where, value, _LIMIT_KEYS)
    most = entry.get("max")
    if isinstance(most, bool) or not isinstance(most, int | float) or most <= 0:
        raise _fail(where, f"'max' must be a positive number, got {most!r}")
    return QuantityLimit(float(most), _whole(where, entry.get("per_days"), "per_days"))


def _rule(where: str, value: Any, known_classes: frozenset[str] | None) -> CoverageRule:
    entry = _keys(where, value, _RULE_KEYS)
    rule_id = _text(where, entry, "id", required=True)
    assert rule_id is not None
    payers = _strings(where, entry.get("payer"), "payer")
    insurers = _strings(where, entry.get("insurers"), "insurers")
    if not payers and not insurers:
        raise _fail(where, f"needs 'payer' (a payers-file name, or {ANY_PAYER!r} for any) and/or 'insurers'")
    drug = _keys(f"{where}: drug", entry.get("drug"), _DRUG_KEYS)
    rxnorm = _strings(f"{where}: drug", drug.get("rxnorm"), "rxnorm")
    drug_class = _text(f"{where}: drug", drug, "class")
    if not rxnorm and drug_class is None:
        raise _fail(where, "'drug' needs 'rxnorm' codes and/or a 'class'")
    if drug_class is not None and known_classes is not None and drug_class not in known_classes:
        raise _fail(
            where,
            f"drug class {drug_class!r} is not a drug_class of mappings/monitoring/drug-lab.yaml"
            f" (known: {sorted(known_classes)})",
        )
    labs = entry.get("labs") or []
    if not isinstance(labs, list):
        raise _fail(where, "'labs' must be a list")
    return CoverageRule(
        id=rule_id,
        payers=payers,
        insurers=insurers,
        plan=_text(where, entry, "plan"),
        rxnorm=rxnorm,
        drug_class=drug_class,
        pa_required=_flag(where, entry, "pa_required", required=True),
        labs=tuple(_lab(f"{where}: labs[{i}]", lab) for i, lab in enumerate(labs)),
        documents=_strings(where, entry.get("documents"), "documents"),
        quantity_limit=_limit(where, entry.get("quantity_limit")),
        auto_submit=_flag(where, entry, "auto_submit"),
        source=_text(where, entry, "source"),
    )


def _load_file(path: Path, known_classes: frozenset[str] | None) -> list[CoverageRule]:
    try:
        content = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CoverageRuleError(f"{path}: cannot be read as YAML: {exc}") from exc
    if content is None:
        return []
    content = _keys(str(path), content, {"description", "rules"})
    entries = content.get("rules") or []
    if not isinstance(entries, list):
        raise CoverageRuleError(f"{path}: 'rules' must be a list")
    rules = []
    for index, entry in enumerate(entries):
        label = entry.get("id") if isinstance(entry, dict) else None
        rules.append(_rule(f"{path}: rules[{index}] ({label})", entry, known_classes))
    return rules


def load_coverage_rules(folder: Path, known_classes: frozenset[str] | None = None) -> CoverageRules:
    """Load and check every `*.yaml` in `folder` (absent: no rules). `known_classes`: the drug classes a
    rule may name (those of the drug-lab rules); None accepts any."""
    if not folder.is_dir():
        return CoverageRules()
    rules: list[CoverageRule] = []
    seen: dict[str, Path] = {}
    for path in sorted(folder.glob("*.yaml")):
        for rule in _load_file(path, known_classes):
            if rule.id in seen:
                raise CoverageRuleError(f"{path}: rule id {rule.id!r} is also used in {seen[rule.id]}")
            seen[rule.id] = path
            rules.append(rule)
    return CoverageRules(tuple(rules))


# -- evaluating ------------------------------------------------------------------------------------------


def _codings(concept: Any) -> list[dict[str, Any]]:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    return [c for c in codings or [] if isinstance(c, dict)]


def order_rxnorm_codes(order: dict[str, Any], medication: dict[str, Any] | None) -> frozenset[str]:
    """RxNorm codes the order names: its concept, its Medication's code and ingredients."""
    concepts = [order.get("medicationCodeableConcept")]
    if medication:
        concepts.append(medication.get("code"))
        concepts += [
            i.get("itemCodeableConcept") for i in medication.get("ingredient") or [] if isinstance(i, dict)
        ]
    return frozenset(
        str(c["code"])
        for concept in concepts
        for c in _codings(concept)
        if c.get("system") == RXNORM and c.get("code")
    )


def _payer_matches(rule: CoverageRule, coverage: PayerCoverage) -> bool:
    if ANY_PAYER in rule.payers or (coverage.payer is not None and coverage.payer in rule.payers):
        return True
    return bool(set(rule.insurers) & ({coverage.insurer} | set(coverage.insurer_identifiers)))


def _drug_matches(rule: CoverageRule, codes: frozenset[str], classes: frozenset[str]) -> bool:
    return bool(codes & set(rule.rxnorm)) or (rule.drug_class is not None and rule.drug_class in classes)


def concerns_drug(rules: CoverageRules, codes: frozenset[str], classes: frozenset[str]) -> bool:
    """Whether any rule is about this drug: most orders are not, and need no coverage or lab read."""
    return any(_drug_matches(rule, codes, classes) for rule in rules.rules)


def _rule_matches(
    rule: CoverageRule, coverage: PayerCoverage, codes: frozenset[str], classes: frozenset[str]
) -> bool:
    if rule.plan is not None and rule.plan not in coverage.plans:
        return False
    return _drug_matches(rule, codes, classes) and _payer_matches(rule, coverage)


def _effective_us(observation: dict[str, Any]) -> int | None:
    period = observation.get("effectivePeriod") or {}
    for value in (
        observation.get("effectiveDateTime"),
        period.get("end"),
        period.get("start"),
        observation.get("issued"),
    ):
        if isinstance(value, str):
            try:
                return dates.date_range(value)[1]
            except dates.DateFormatError:
                return None
    return None


def _latest(requirement: LabRequirement, observations: list[dict[str, Any]], now_us: int) -> str | None:
    since = now_us - requirement.within_days * DAY_US
    best: tuple[int, str] | None = None
    for obs in observations:
        if obs.get("status") not in USABLE_STATUSES or not any(
            c.get("system") == requirement.system and c.get("code") == requirement.code
            for c in _codings(obs.get("code"))
        ):
            continue
        when = _effective_us(obs)
        if when is not None and when >= since and (best is None or when > best[0]):
            best = (when, f"Observation/{obs['id']}")
    return best[1] if best else None


def quantity_over(order: dict[str, Any], limit: QuantityLimit | None) -> str | None:
    """Why the dispense quantity exceeds `limit` (scaled to its days' supply); None when it does not."""
    dispense = order.get("dispenseRequest") or {}
    quantity = (dispense.get("quantity") or {}).get("value")
    if limit is None or isinstance(quantity, bool) or not isinstance(quantity, int | float):
        return None
    supply = dispense.get("expectedSupplyDuration") or {}
    unit = str(supply.get("code") or supply.get("unit") or "d").casefold()
    days = supply.get("value")
    # Without a days' supply the quantity is taken as one limit period's.
    if isinstance(days, int | float) and not isinstance(days, bool) and days > 0 and unit in _SUPPLY_DAYS:
        scaled = float(quantity) * limit.per_days / (float(days) * _SUPPLY_DAYS[unit])
    else:
        scaled = float(quantity)
    if scaled <= limit.max:
        return None
    return f"{scaled:g} per {limit.per_days} days ordered; the payer allows {limit.max:g}"


def evaluate(
    order: dict[str, Any],
    medication: dict[str, Any] | None,
    drug_classes: frozenset[str],
    coverages: list[PayerCoverage],
    observations: list[dict[str, Any]],
    now: datetime,
    rules: CoverageRules,
) -> CoverageDecision | None:
    """The first rule (in coverage order, then rule order) for this order; None when no rule applies."""
    codes = order_rxnorm_codes(order, medication)
    for coverage in coverages:
        rule = next((r for r in rules.rules if _rule_matches(r, coverage, codes, drug_classes)), None)
        if rule is None:
            continue
        now_us = dates.to_us(now)
        found, missing = [], []
        for requirement in rule.labs:
            reference = _latest(requirement, observations, now_us)
            if reference:
                found.append(FoundLab(requirement, reference))
            else:
                missing.append(requirement)
        return CoverageDecision(
            rule, coverage, tuple(found), tuple(missing), quantity_over(order, rule.quantity_limit)
        )
    return None


def lab_codes(rules: CoverageRules) -> list[str]:
    """Every lab code any rule asks for (to load only those Observations)."""
    return sorted({lab.code for rule in rules.rules for lab in rule.labs})


_WORD = re.compile(r"\s+")


def summary(text: str, limit: int = 140) -> str:
    """A one-line text of at most `limit` characters (CDS Hooks card summaries: < 140)."""
    text = _WORD.sub(" ", text).strip()
    return text if len(text) < limit else text[: limit - 2].rstrip() + "…"
