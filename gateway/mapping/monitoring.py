"""Reading `mappings/monitoring/`: critical-value thresholds and drug-lab monitoring rules.

    mappings/monitoring/
      critical.yaml   {interpretations: [codes], thresholds: [{code, system, display, unit, low, high, ...}]}
      drug-lab.yaml   {rules: [{id, drug, drug_class, medications, names, labs, bands, source, note,
                                schedule}]}

A rule's optional `schedule` ({baseline, phases: [{until_month, every}], grace_days, source}) is the
monitoring calendar for the drug; the dates are worked out in `gateway.pharmacist.schedule`.

Like the rest of `mappings/`, every entry is checked when loaded: a typo stops the start with the file
and the entry named, instead of a rule that silently never fires. The rules are plain frozen data; the
evaluation lives in `gateway.routing.labs`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any, Literal, cast

import yaml

from gateway.mapping.files import MappingError

CRITICAL_FILE = "critical.yaml"
DRUG_LAB_FILE = "drug-lab.yaml"

Severity = Literal["critical", "high", "moderate"]
Condition = Literal["below", "above", "at_least", "above_uln", "positive"]
IntervalUnit = Literal["day", "week", "month"]

SEVERITY_RANK: dict[str, int] = {"critical": 3, "high": 2, "moderate": 1}
_ABSOLUTE: frozenset[str] = frozenset({"below", "above", "at_least"})
_CONDITIONS: frozenset[str] = _ABSOLUTE | {"above_uln", "positive"}
_THRESHOLD_KEYS = {"code", "system", "display", "unit", "low", "high", "inclusive", "monovalent"}
_RULE_KEYS = {
    "id",
    "drug",
    "drug_class",
    "medications",
    "names",
    "labs",
    "bands",
    "source",
    "note",
    "schedule",
}
_SCHEDULE_KEYS = {"baseline", "phases", "grace_days", "source"}
_PHASE_KEYS = {"until_month", "every"}
_EVERY = re.compile(r"^(?P<count>[1-9]\d*)\s+(?P<unit>day|week|month)s?$")
_BAND_KEYS = {"when", "unit", "action", "severity", "source", "monovalent"}


@dataclass(frozen=True, slots=True)
class Code:
    system: str
    code: str


@dataclass(frozen=True, slots=True)
class CriticalThreshold:
    """Critical when the value (in `unit`) is below `low` or above `high`; at the limit too if inclusive."""

    system: str
    code: str
    display: str
    unit: str | None
    low: float | None = None
    high: float | None = None
    inclusive: bool = False
    monovalent: bool = False  # meq/L and mmol/L are the same number for this analyte


@dataclass(frozen=True, slots=True)
class Band:
    condition: Condition
    limit: float | None  # the threshold, or the factor of ULN; None for `positive`
    unit: str | None  # UCUM; only for below / above / at_least
    action: str
    severity: Severity
    source: str
    monovalent: bool = False

    def describe(self) -> str:
        """The band as a pharmacist reads it: "< 1000 /uL", ">= 1.5 meq/L", "> 3x ULN", "positive"."""
        if self.condition == "positive":
            return "positive"
        limit = f"{self.limit:g}"
        if self.condition == "above_uln":
            return "> ULN" if self.limit == 1 else f"> {limit}x ULN"
        operator = {"below": "<", "above": ">", "at_least": ">="}[self.condition]
        return f"{operator} {limit} {self.unit}" if self.unit else f"{operator} {limit}"


@dataclass(frozen=True, slots=True)
class Every:
    """An interval between scheduled labs: `count` days, weeks or calendar months."""

    count: int
    unit: IntervalUnit

    def describe(self) -> str:
        return f"{self.count} {self.unit}" + ("s" if self.count != 1 else "")


@dataclass(frozen=True, slots=True)
class Phase:
    """Labs every `every` until `until_month` months after the start (None: for as long as the order)."""

    every: Every
    until_month: int | None


@dataclass(frozen=True, slots=True)
class Schedule:
    """When a drug's labs are due: a baseline at the start (if `baseline`), then the phases in order; a lab
    not received `grace_days` after its due date is overdue."""

    phases: tuple[Phase, ...]
    baseline: bool
    grace_days: int
    source: str


@dataclass(frozen=True, slots=True)
class DrugLabRule:
    id: str
    drug: str
    medication_codes: tuple[Code, ...]
    names: tuple[str, ...]  # matched case-insensitively as words in the medication's name
    labs: tuple[Code, ...]
    bands: tuple[Band, ...]  # most severe first
    note: str | None = None
    schedule: Schedule | None = None
    drug_class: str | None = None  # the class code pharmacist matching compares with role specialties


@dataclass(frozen=True, slots=True)
class MonitoringRules:
    critical_interpretations: frozenset[str] = frozenset()
    critical_thresholds: tuple[CriticalThreshold, ...] = ()
    drug_lab: tuple[DrugLabRule, ...] = ()


def _read(path: Path) -> Any:
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise MappingError(f"{path}: cannot be read as YAML: {exc}") from exc


def _entries(path: Path, content: dict[str, Any], key: str) -> list[Any]:
    value = content.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise MappingError(f"{path}: '{key}' must be a list")
    return value


def _text(where: str, entry: dict[str, Any], key: str, required: bool = True) -> str | None:
    value = entry.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        # YAML reads 2626 as a number and 0123 as octal: codes must be quoted to stay what was written.
        hint = " (quote it)" if isinstance(value, int | float) and not isinstance(value, bool) else ""
        raise MappingError(f"{where}: '{key}' must be a non-empty string{hint}, got {value!r}")
    return value.strip()


def _required(where: str, entry: dict[str, Any], key: str) -> str:
    return cast(str, _text(where, entry, key))


def _number(where: str, entry: dict[str, Any], key: str) -> float | None:
    value = entry.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise MappingError(f"{where}: '{key}' must be a number, got {value!r}")
    return float(value)


def _flag(where: str, entry: dict[str, Any], key: str) -> bool:
    value = entry.get(key, False)
    if not isinstance(value, bool):
        raise MappingError(f"{where}: '{key}' must be true or false, got {value!r}")
    return value


def _mapping(where: str, value: Any, allowed: set[str]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise MappingError(f"{where}: must be a mapping")
    unknown = set(value) - allowed
    if unknown:
        raise MappingError(f"{where}: unknown keys {sorted(map(str, unknown))} (allowed: {sorted(allowed)})")
    return value


def _list(where: str, value: Any, key: str) -> list[Any]:
    if not isinstance(value, list) or not value:
        raise MappingError(f"{where}: '{key}' must be a non-empty list")
    return value


def _codes(where: str, entries: Any, key: str) -> tuple[Code, ...]:
    codes = []
    for index, item in enumerate(_list(where, entries, key)):
        spot = f"{where}: {key}[{index}]"
        item = _mapping(spot, item, {"system", "code", "display"})
        codes.append(Code(_required(spot, item, "system"), _required(spot, item, "code")))
    return tuple(codes)


def _threshold(where: str, entry: Any) -> CriticalThreshold:
    entry = _mapping(where, entry, _THRESHOLD_KEYS)
    low, high = _number(where, entry, "low"), _number(where, entry, "high")
    if low is None and high is None:
        raise MappingError(f"{where}: needs 'low' and/or 'high'")
    if low is not None and high is not None and low >= high:
        raise MappingError(f"{where}: 'low' ({low:g}) must be below 'high' ({high:g})")
    return CriticalThreshold(
        system=_required(where, entry, "system"),
        code=_required(where, entry, "code"),
        display=_required(where, entry, "display"),
        unit=_text(where, entry, "unit", required=False),
        low=low,
        high=high,
        inclusive=_flag(where, entry, "inclusive"),
        monovalent=_flag(where, entry, "monovalent"),
    )


def _load_critical(path: Path) -> tuple[frozenset[str], tuple[CriticalThreshold, ...]]:
    content = _mapping(str(path), _read(path), {"description", "interpretations", "thresholds"})
    interpretations = content.get("interpretations") or []
    if not isinstance(interpretations, list) or not all(isinstance(c, str) for c in interpretations):
        raise MappingError(f"{path}: 'interpretations' must be a list of codes (strings)")
    thresholds: list[CriticalThreshold] = []
    seen: set[tuple[str, str]] = set()
    for index, entry in enumerate(_entries(path, content, "thresholds")):
        label = entry.get("code") if isinstance(entry, dict) else None
        threshold = _threshold(f"{path}: thresholds[{index}] ({label})", entry)
        if (threshold.system, threshold.code) in seen:
            raise MappingError(
                f"{path}: thresholds[{index}] ({label}): code {threshold.code} is listed twice"
            )
        seen.add((threshold.system, threshold.code))
        thresholds.append(threshold)
    return frozenset(interpretations), tuple(thresholds)


def _condition(where: str, when: Any) -> tuple[Condition, float | None]:
    if not isinstance(when, dict) or len(when) != 1 or next(iter(when)) not in _CONDITIONS:
        raise MappingError(f"{where}: 'when' needs exactly one of {sorted(_CONDITIONS)}, got {when!r}")
    condition, value = next(iter(when.items()))
    if condition == "positive":
        if value is not True:
            raise MappingError(f"{where}: 'positive' can only be true")
        return "positive", None
    limit = _number(where, when, condition)
    if limit is None or limit < 0 or (condition == "above_uln" and limit == 0):
        raise MappingError(f"{where}: '{condition}' needs a positive number, got {value!r}")
    return cast(Condition, condition), limit


def _band(where: str, entry: Any, rule_source: str | None) -> Band:
    entry = _mapping(where, entry, _BAND_KEYS)
    condition, limit = _condition(where, entry.get("when"))
    unit = _text(where, entry, "unit", required=False)
    if condition in _ABSOLUTE and unit is None:
        raise MappingError(f"{where}: '{condition}' needs a 'unit' (UCUM) to compare in")
    if condition not in _ABSOLUTE and unit is not None:
        raise MappingError(f"{where}: 'unit' is only for below / above / at_least, not {condition}")
    severity = entry.get("severity")
    if severity not in SEVERITY_RANK:
        raise MappingError(f"{where}: 'severity' must be one of {sorted(SEVERITY_RANK)}, got {severity!r}")
    source = _text(where, entry, "source", required=False) or rule_source
    if source is None:
        raise MappingError(f"{where}: needs a 'source' (on the band or on its rule)")
    return Band(
        condition=condition,
        limit=limit,
        unit=unit,
        action=_required(where, entry, "action"),
        severity=cast(Severity, severity),
        source=source,
        monovalent=_flag(where, entry, "monovalent"),
    )


def _bands(where: str, entries: Any, rule_source: str | None) -> tuple[Band, ...]:
    bands = tuple(
        _band(f"{where}: bands[{index}]", entry, rule_source)
        for index, entry in enumerate(_list(where, entries, "bands"))
    )
    # The first band that holds wins, so a milder band listed first would hide a severer one.
    for index, (before, after) in enumerate(pairwise(bands)):
        if SEVERITY_RANK[after.severity] > SEVERITY_RANK[before.severity]:
            raise MappingError(
                f"{where}: bands[{index + 1}] is more severe than bands[{index}]; list the most severe first"
            )
    return bands


def _names(where: str, value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(n, str) and n.strip() for n in value):
        raise MappingError(f"{where}: 'names' must be a list of non-empty strings")
    return tuple(n.strip().casefold() for n in value)


def _every(where: str, value: Any) -> Every:
    match = _EVERY.match(value.strip()) if isinstance(value, str) else None
    if match is None:
        raise MappingError(f"{where}: 'every' must be like '1 week', '2 weeks' or '3 months', got {value!r}")
    return Every(int(match["count"]), cast(IntervalUnit, match["unit"]))


def _phases(where: str, entries: Any) -> tuple[Phase, ...]:
    if entries is None:
        return ()
    if not isinstance(entries, list):
        raise MappingError(f"{where}: 'phases' must be a list")
    phases: list[Phase] = []
    for index, entry in enumerate(entries):
        spot = f"{where}: phases[{index}]"
        entry = _mapping(spot, entry, _PHASE_KEYS)
        until = entry.get("until_month")
        if until is not None and (isinstance(until, bool) or not isinstance(until, int) or until < 1):
            raise MappingError(f"{spot}: 'until_month' must be a whole number of months >= 1, got {until!r}")
        if phases and (
            phases[-1].until_month is None or (until is not None and until <= phases[-1].until_month)
        ):
            raise MappingError(
                f"{spot}: phases must end later than the one before; only the last may omit 'until_month'"
            )
        phases.append(Phase(_every(spot, entry.get("every")), until))
    return tuple(phases)


def _schedule(where: str, value: Any) -> Schedule | None:
    if value is None:
        return None
    where = f"{where}: schedule"
    entry = _mapping(where, value, _SCHEDULE_KEYS)
    phases = _phases(where, entry.get("phases"))
    baseline = _flag(where, entry, "baseline")
    if not phases and not baseline:
        raise MappingError(f"{where}: needs 'phases' and/or 'baseline: true'")
    grace = entry.get("grace_days")
    if isinstance(grace, bool) or not isinstance(grace, int) or grace < 0:
        raise MappingError(f"{where}: 'grace_days' must be a whole number of days >= 0, got {grace!r}")
    return Schedule(phases, baseline, grace, _required(where, entry, "source"))


def _rule(where: str, entry: Any) -> DrugLabRule:
    entry = _mapping(where, entry, _RULE_KEYS)
    medications = _codes(where, entry["medications"], "medications") if entry.get("medications") else ()
    names = _names(where, entry.get("names"))
    if not medications and not names:
        raise MappingError(f"{where}: needs 'medications' (RxNorm codes) and/or 'names' to match orders by")
    return DrugLabRule(
        id=_required(where, entry, "id"),
        drug=_required(where, entry, "drug"),
        medication_codes=medications,
        names=names,
        labs=_codes(where, entry.get("labs"), "labs"),
        bands=_bands(where, entry.get("bands"), _text(where, entry, "source", required=False)),
        note=_text(where, entry, "note", required=False),
        schedule=_schedule(where, entry.get("schedule")),
        drug_class=_text(where, entry, "drug_class", required=False),
    )


def _load_drug_lab(path: Path) -> tuple[DrugLabRule, ...]:
    content = _mapping(str(path), _read(path), {"description", "rules"})
    rules: list[DrugLabRule] = []
    for index, entry in enumerate(_entries(path, content, "rules")):
        label = entry.get("id") if isinstance(entry, dict) else None
        rule = _rule(f"{path}: rules[{index}] ({label})", entry)
        if any(other.id == rule.id for other in rules):
            raise MappingError(f"{path}: rules[{index}]: id {rule.id!r} is used twice")
        rules.append(rule)
    return tuple(rules)


def load_monitoring(mappings_dir: Path) -> MonitoringRules:
    """Load and check `mappings_dir/monitoring/`; a missing folder or file means no rules of that kind."""
    folder = mappings_dir / "monitoring"
    interpretations: frozenset[str] = frozenset()
    thresholds: tuple[CriticalThreshold, ...] = ()
    if (folder / CRITICAL_FILE).is_file():
        interpretations, thresholds = _load_critical(folder / CRITICAL_FILE)
    drug_lab = _load_drug_lab(folder / DRUG_LAB_FILE) if (folder / DRUG_LAB_FILE).is_file() else ()
    return MonitoringRules(interpretations, thresholds, drug_lab)
