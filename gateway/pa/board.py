"""The prior-authorization board: PA Tasks shaped into cards and grouped by businessStatus in lifecycle
order (pure; the console reads the Tasks and their orders with the person's context and hands them here).

A card says what a coordinator needs at a glance: the patient, the drug (from the focus
MedicationRequest), the payer (`owner`), when the request first went out, the CMS-0057-F decision due date
(the `pa-decision-due` extension) and whether that deadline is breached (still waiting on the payer past
it, as the worklist's `overdue` state judges it), the payer's answer, the authorized period's end with the
days left, and which actions the lifecycle still allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from gateway.fhir import dates
from gateway.pa import lifecycle, tasks

JSON = dict[str, Any]

# The columns of the board, in the order a request lives through them (lifecycle.TASK_STATUS's order).
LIFECYCLE_ORDER: tuple[str, ...] = tuple(lifecycle.TASK_STATUS)
UNKNOWN = "unknown"  # a PA Task without a lifecycle code still shows (last), rather than vanishing
# A request may be withdrawn while it is not decided: the lifecycle allows `cancelled` from there. An
# approval may also be cancelled by the lifecycle, but that is ending an authorization, not withdrawing.
WITHDRAWABLE = frozenset(
    s for s, moves in lifecycle.TRANSITIONS.items() if "cancelled" in moves and s not in lifecycle.APPROVED
)
DAY_US = 86_400_000_000


@dataclass(frozen=True, slots=True)
class Card:
    task_id: str
    task_type: str  # prior-authorization, -renewal or -appeal
    business_status: str
    patient: str | None  # Patient/ID
    drug: str | None
    payer: str | None  # the owner reference (the insurer)
    submitted: str | None  # the first submission, as an instant
    due: str | None  # the decision due date, as written on the Task
    breached: bool  # waiting on the payer past the due date
    answer: tuple[str, ...]  # the payer's words: statusReason, item decisions, notes
    claim_response: str | None  # ClaimResponse/ID of the payer's answer
    expires: str | None  # the authorized period's end (approvals only)
    days_left: int | None  # whole days from today to `expires` (negative: ended)
    can_appeal: bool
    can_withdraw: bool


@dataclass(frozen=True, slots=True)
class Column:
    business_status: str
    cards: tuple[Card, ...] = field(default_factory=tuple)


def board(tasks_found: list[JSON], orders: dict[str, JSON], now_us: int) -> list[Column]:
    """The non-empty columns, in lifecycle order; in each, breached cards first, then by due date."""
    appealed = {  # a withdrawn appeal leaves the denial appealable again
        ref
        for t in tasks_found
        if _type(t) == "prior-authorization-appeal" and tasks.business_status(t) != "cancelled"
        for ref in _part_of(t)
    }
    cards = [card(t, orders, now_us, appealed=f"Task/{t.get('id')}" in appealed) for t in tasks_found]
    order = {status: n for n, status in enumerate(LIFECYCLE_ORDER)}
    columns: dict[str, list[Card]] = {}
    for found in cards:
        columns.setdefault(found.business_status, []).append(found)
    ranked = sorted(columns, key=lambda s: order.get(s, len(order)))
    return [Column(s, tuple(sorted(columns[s], key=_card_key))) for s in ranked]


def card(task: JSON, orders: dict[str, JSON], now_us: int, *, appealed: bool = False) -> Card:
    """One PA Task as a card; `orders` maps `MedicationRequest/ID` to the orders the caller may read."""
    status = tasks.business_status(task) or UNKNOWN
    due = tasks.due(task)
    due_us = _instant_us(due)
    expires = tasks.authorized_end(task) if status in lifecycle.APPROVED else None
    focus = _reference(task.get("focus"))
    return Card(
        task_id=str(task.get("id") or ""),
        task_type=_type(task) or "prior-authorization",
        business_status=status,
        patient=_reference(task.get("for")),
        drug=drug_of(orders.get(focus)) if focus else None,
        payer=_reference(task.get("owner")),
        submitted=first_submitted(task),
        due=due,
        breached=status in lifecycle.AWAITING_PAYER and due_us is not None and due_us < now_us,
        answer=payer_answer(task),
        claim_response=tasks.reference_of(task, "output", "claim-response"),
        expires=expires,
        days_left=days_left(expires, now_us) if expires else None,
        can_appeal=status == "denied" and not appealed,
        can_withdraw=status in WITHDRAWABLE,
    )


def first_submitted(task: JSON) -> str | None:
    """When the request first went out: the due date is set once, at the first submission, 72 hours
    (expedited) or 7 days later (tasks.submitted), so the submission is the due date less that window."""
    due_us = _instant_us(tasks.due(task))
    if due_us is None:
        return None
    expedited = str(task.get("priority") or "routine") in tasks.EXPEDITED_PRIORITIES
    window = tasks.EXPEDITED if expedited else tasks.STANDARD
    return tasks.instant(dates.from_us(due_us) - window)


def payer_answer(task: JSON) -> tuple[str, ...]:
    """What the payer said, as the Task keeps it: the reason, one line per item decision, the notes."""
    lines: list[str] = []
    reason = task.get("statusReason")
    if isinstance(reason, dict) and isinstance(reason.get("text"), str):
        lines.append(reason["text"])
    for output in task.get("output") or []:
        codings = ((output or {}).get("type") or {}).get("coding") or []
        text = output.get("valueString")
        if any(c.get("code") == "item-decision" for c in codings) and isinstance(text, str):
            lines.append(text)
    for note in task.get("note") or []:
        if isinstance(note, dict) and isinstance(note.get("text"), str):
            lines.append(note["text"])
    return tuple(dict.fromkeys(lines))


def drug_of(order: JSON | None) -> str | None:
    """The drug of a MedicationRequest: its concept's text, else a coding's display, else the reference's."""
    if order is None:
        return None
    concept = order.get("medicationCodeableConcept")
    if isinstance(concept, dict):
        if isinstance(concept.get("text"), str):
            return str(concept["text"])
        for coding in concept.get("coding") or []:
            if isinstance(coding, dict) and isinstance(coding.get("display"), str):
                return str(coding["display"])
    reference = order.get("medicationReference")
    display = reference.get("display") if isinstance(reference, dict) else None
    return display if isinstance(display, str) else None


def days_left(end: str, now_us: int) -> int | None:
    """Whole days from today (UTC) to the period's end day, as written (a date or an instant)."""
    try:
        end_day = date.fromisoformat(end[:10])
    except ValueError:
        return None
    today = datetime.fromtimestamp(now_us / 1_000_000, UTC).date()
    return (end_day - today).days


def _card_key(found: Card) -> tuple[bool, int, str]:
    due_us = _instant_us(found.due)
    return (not found.breached, due_us if due_us is not None else 2**62, found.task_id)


def _instant_us(text: str | None) -> int | None:
    if not text:
        return None
    try:
        return dates.date_range(text)[0]
    except dates.DateFormatError:
        return None


def _type(task: JSON) -> str | None:
    for coding in (task.get("code") or {}).get("coding") or []:
        if isinstance(coding, dict) and coding.get("system") == lifecycle.TASK_TYPE_SYSTEM:
            code = coding.get("code")
            return code if isinstance(code, str) else None
    return None


def _reference(value: object) -> str | None:
    ref = value.get("reference") if isinstance(value, dict) else None
    return ref if isinstance(ref, str) else None


def _part_of(task: JSON) -> list[str]:
    return [r for x in task.get("partOf") or [] if (r := _reference(x))]
