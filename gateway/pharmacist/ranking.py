"""The pharmacist's worklist: what needs action, in the order to act, each row saying why and why there.

Rows come from open alert Tasks, overdue monitoring labs, prior-authorization Tasks that need the
pharmacist (information requested, denied and appealable, authorization expiring, payer decision
overdue) and patients no pharmacist is assigned to. The order (README, "Worklist ranking"):

1. severity tier: critical, high, moderate, low;
2. deadline: rows with one before rows without, earliest first (so overdue rows come first);
3. patient risk, highest first (`patient_risk`);
4. age: the oldest row first;
5. row id.

Every key is a fact of the row, so the same rows rank the same way whatever order they arrive in.
Patient risk is a small additive score so that a person can check it from its reasons.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

from gateway.pharmacist.reasons import Reason
from gateway.types import JSON

Severity = Literal["critical", "high", "moderate", "low"]
Kind = Literal["alert", "lab-overdue", "pa", "unassigned-patient"]
PaState = Literal["info-requested", "denied-appealable", "expiring", "overdue"]

TIERS: dict[str, int] = {"critical": 0, "high": 1, "moderate": 2, "low": 3}

# Severity of the rows that carry none of their own. A lab order's priority (ServiceRequest.priority) is
# its urgency; the PA states the pharmacist must answer before a payer's clock runs out rank high.
LAB_SEVERITY: dict[str, Severity] = {
    "stat": "critical",
    "asap": "high",
    "urgent": "high",
    "routine": "moderate",
}
PA_SEVERITY: dict[str, Severity] = {
    "info-requested": "high",
    "denied-appealable": "high",
    "expiring": "moderate",
    "overdue": "moderate",
}
UNASSIGNED_SEVERITY: Severity = "low"

# Patient risk points (README, "Patient risk").
PDC_THRESHOLD = 0.8
PDC_POINTS = 3
OVERDUE_LAB_POINTS = 2
OVERDUE_LAB_CAP = 6
CRITICAL_POINTS = 3
PA_POINTS = 2
SPECIALTY_DRUG_CAP = 3


@dataclass(frozen=True, slots=True)
class WorkItem:
    """One candidate row. `severity` is required for alerts and derived for the other kinds unless given;
    `state` is required for PA rows; `priority` is a lab order's urgency (routine, urgent, asap, stat).
    Times must be time-zone aware."""

    id: str
    kind: Kind
    patient_id: str
    created: datetime
    severity: Severity | None = None
    due: datetime | None = None
    state: PaState | None = None
    priority: str | None = None
    summary: str = ""

    def __post_init__(self) -> None:
        if self.kind == "alert" and self.severity is None:
            raise ValueError(f"alert {self.id}: severity is required")
        if self.kind == "pa" and self.state not in PA_SEVERITY:
            raise ValueError(f"PA row {self.id}: state must be one of {sorted(PA_SEVERITY)}")
        if self.severity is not None and self.severity not in TIERS:
            raise ValueError(f"row {self.id}: unknown severity {self.severity!r}")
        for moment in (self.created, self.due):
            if moment is not None and moment.tzinfo is None:
                raise ValueError(f"row {self.id}: times must carry a time zone")

    def effective_severity(self) -> Severity:
        if self.severity is not None:
            return self.severity
        if self.kind == "lab-overdue":
            return LAB_SEVERITY.get(self.priority or "routine", "moderate")
        if self.kind == "pa" and self.state is not None:
            return PA_SEVERITY[self.state]
        return UNASSIGNED_SEVERITY


@dataclass(frozen=True, slots=True)
class RiskInput:
    """What patient risk is computed from. `pdc` is a fraction (0.62), None when not computable."""

    patient_id: str
    pdc: float | None = None
    overdue_labs: int = 0
    critical_results_30d: int = 0
    pa_denied_or_expiring: bool = False
    specialty_drugs: int = 0


@dataclass(frozen=True, slots=True)
class PatientRisk:
    patient_id: str
    score: int
    reasons: tuple[Reason, ...] = ()

    def summary(self) -> str:
        """`8 (PDC 62 % < 80 %, 1 overdue lab)`: the score and the texts of its reasons."""
        return (
            f"{self.score} ({', '.join(r.text for r in self.reasons)})" if self.reasons else str(self.score)
        )

    def to_json(self) -> JSON:
        return {"score": self.score, "reasons": [r.to_json() for r in self.reasons]}


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def patient_risk(risk: RiskInput) -> PatientRisk:
    """The additive risk score: PDC below 80 % +3; +2 per overdue lab (at most 6); any critical result in
    the last 30 days +3; a denied or expiring PA +2; +1 per specialty drug (at most 3)."""
    points = 0
    reasons: list[Reason] = []
    if risk.pdc is not None and risk.pdc < PDC_THRESHOLD:
        points += PDC_POINTS
        reasons.append(Reason("low-pdc", f"PDC {round(risk.pdc * 100)} % < {round(PDC_THRESHOLD * 100)} %"))
    if risk.overdue_labs > 0:
        points += min(OVERDUE_LAB_POINTS * risk.overdue_labs, OVERDUE_LAB_CAP)
        reasons.append(Reason("overdue-labs", _plural(risk.overdue_labs, "overdue lab")))
    if risk.critical_results_30d > 0:
        points += CRITICAL_POINTS
        reasons.append(
            Reason("critical-results", f"{_plural(risk.critical_results_30d, 'critical result')} in 30 d")
        )
    if risk.pa_denied_or_expiring:
        points += PA_POINTS
        reasons.append(Reason("pa-at-risk", "PA denied or expiring"))
    if risk.specialty_drugs > 0:
        points += min(risk.specialty_drugs, SPECIALTY_DRUG_CAP)
        reasons.append(Reason("specialty-drugs", _plural(risk.specialty_drugs, "specialty drug")))
    return PatientRisk(risk.patient_id, points, tuple(reasons))


def _span(delta: timedelta) -> str:
    """A rounded-down duration: `45 min`, `5 h`, `3 d`."""
    seconds = abs(delta.total_seconds())
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 48 * 3600:
        return f"{int(seconds // 3600)} h"
    return f"{int(seconds // 86400)} d"


def _due_text(due: datetime | None, now: datetime) -> str:
    if due is None:
        return "no deadline"
    return f"due {_span(now - due)} ago" if due <= now else f"due in {_span(due - now)}"


_PA_WHY = {
    "info-requested": "the payer asked for more information on a prior authorization",
    "denied-appealable": "a prior authorization was denied and can still be appealed",
    "expiring": "an approved prior authorization is about to expire",
    "overdue": "the payer's prior-authorization decision is overdue",
}


def _why(item: WorkItem) -> str:
    detail = f": {item.summary}" if item.summary else ""
    if item.kind == "alert":
        return f"open {item.effective_severity()} alert{detail}"
    if item.kind == "lab-overdue":
        return f"monitoring lab overdue{detail}"
    if item.kind == "pa" and item.state is not None:
        return _PA_WHY[item.state] + detail
    return f"no pharmacist is assigned to the patient{detail}"


@dataclass(frozen=True, slots=True)
class RankedRow:
    rank: int
    item: WorkItem
    severity: Severity
    risk: PatientRisk
    why: str
    rank_reason: str

    def to_json(self) -> JSON:
        item = self.item
        return {
            "rank": self.rank,
            "id": item.id,
            "kind": item.kind,
            "patient": f"Patient/{item.patient_id}",
            "severity": self.severity,
            "state": item.state,
            "due": _instant(item.due),
            "created": _instant(item.created),
            "why": self.why,
            "rankReason": self.rank_reason,
            "patientRisk": self.risk.to_json(),
        }


def _instant(moment: datetime | None) -> str | None:
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def rank_worklist(
    items: Sequence[WorkItem], risks: Mapping[str, RiskInput], now: datetime
) -> list[RankedRow]:
    """The rows in worklist order, numbered from 1. A patient missing from `risks` has risk 0."""
    if now.tzinfo is None:
        raise ValueError("now must carry a time zone")
    scored = {pid: patient_risk(r) for pid, r in risks.items()}

    def risk_of(item: WorkItem) -> PatientRisk:
        return scored.get(item.patient_id) or PatientRisk(item.patient_id, 0)

    def key(item: WorkItem) -> tuple[int, int, float, int, float, str]:
        due = item.due.timestamp() if item.due is not None else 0.0
        return (
            TIERS[item.effective_severity()],
            0 if item.due is not None else 1,
            due,
            -risk_of(item).score,
            item.created.timestamp(),
            item.id,
        )

    ordered = sorted(items, key=key)
    keys = [key(item) for item in ordered]
    rows = []
    for index, item in enumerate(ordered):
        risk = risk_of(item)
        parts = [
            f"{item.effective_severity()} severity",
            _due_text(item.due, now),
            f"patient risk {risk.summary()}",
        ]
        # Name the later tie-breakers only where they decided something: a neighbour equal so far.
        neighbours = [keys[i] for i in (index - 1, index + 1) if 0 <= i < len(keys)]
        if any(n[:4] == keys[index][:4] for n in neighbours):
            parts.append(f"opened {_span(now - item.created)} ago (older first)")
            if any(n[:5] == keys[index][:5] for n in neighbours):
                parts.append(f"id {item.id} (same age: by id)")
        rows.append(RankedRow(index + 1, item, item.effective_severity(), risk, _why(item), "; ".join(parts)))
    return rows
