"""The PA Task lifecycle: which Task.status goes with each businessStatus, which moves are allowed, and
what a payer's decision means for the Task.

The table is STANDARDS.md's "PA lifecycle as Task"; the codes are the gateway's own CodeSystem
(`profiles/CodeSystem-pa-business-status.json`), whose definitions say the same in prose.
"""

from __future__ import annotations

from gateway.pa import decision as d
from gateway.pa.decision import PayerDecision

BUSINESS_STATUS_SYSTEM = "https://specialty-gateway.org/fhir/CodeSystem/pa-business-status"
TASK_TYPE_SYSTEM = "https://specialty-gateway.org/fhir/CodeSystem/task-type"

TASK_STATUS = {
    "pa-required": "draft",
    "submitted": "requested",
    "appeal-submitted": "requested",
    "payer-received": "received",
    "pended": "in-progress",
    "info-requested": "on-hold",
    "approved": "completed",
    "approved-modified": "completed",
    "partially-approved": "completed",
    "denied": "completed",
    "expired": "completed",
    "cancelled": "cancelled",
    "rejected-by-payer": "rejected",
    "submission-error": "failed",
}

APPROVED = frozenset({"approved", "approved-modified", "partially-approved"})
DECIDED = APPROVED | {"denied"}
# Waiting on the payer: the decision clock (CMS due date) runs.
AWAITING_PAYER = frozenset({"submitted", "appeal-submitted", "payer-received", "pended", "info-requested"})
FINAL = frozenset({"denied", "cancelled", "expired"})

_ANSWERS = frozenset(
    {
        "payer-received",
        "pended",
        "info-requested",
        "approved",
        "approved-modified",
        "partially-approved",
        "denied",
        "rejected-by-payer",
    }
)
_SENT = _ANSWERS | {"submission-error", "cancelled"}

# Allowed moves from each businessStatus (staying put is always allowed: a repeated answer).
TRANSITIONS: dict[str, frozenset[str]] = {
    "pa-required": frozenset({"submitted", "submission-error", "cancelled"}),
    "submitted": _SENT,
    "appeal-submitted": _SENT,
    "payer-received": _SENT - {"submission-error"},
    "pended": _SENT - {"submission-error", "payer-received"},
    # Answering the payer's questions is a new submission (a Claim update).
    "info-requested": (_SENT - {"payer-received"}) | {"submitted"},
    # A late answer to a request that seemed lost still counts; a retry submits again.
    "submission-error": _SENT | {"submitted"},
    # Fixed and sent again.
    "rejected-by-payer": frozenset({"submitted", "submission-error", "cancelled"}),
    "approved": frozenset({"expired", "cancelled", "approved-modified"}),
    "approved-modified": frozenset({"expired", "cancelled", "approved"}),
    "partially-approved": frozenset({"expired", "cancelled", "approved", "approved-modified"}),
    # An appeal is a new Task partOf the denied one; the denied Task itself stays denied.
    "denied": frozenset(),
    "cancelled": frozenset(),
    "expired": frozenset(),
}


def task_status(business_status: str) -> str:
    return TASK_STATUS[business_status]


def transition_problem(previous: str | None, new: str) -> str | None:
    """Why moving a PA Task from `previous` to `new` businessStatus is not allowed, or None."""
    if new not in TASK_STATUS:
        return f"{new!r} is not a prior-authorization business status"
    if previous is None or previous == new:
        return None
    if previous not in TRANSITIONS:
        return None  # a code from outside the lifecycle (refused by the profile's binding instead)
    if new in TRANSITIONS[previous]:
        return None
    allowed = ", ".join(sorted(TRANSITIONS[previous])) or "nothing (it is final)"
    return f"a prior authorization cannot go from {previous} to {new}; from {previous} it may go to {allowed}"


def outcome(decision: PayerDecision) -> str:
    """The businessStatus a payer's decision puts the Task in (item decisions combined)."""
    if decision.errors:
        return "rejected-by-payer"
    actions = [item.action for item in decision.items]
    if decision.info_requested or d.CONTACT_PAYER in actions:
        return "info-requested"
    if not actions:
        return "payer-received"
    if d.PENDED in actions:
        return "pended"  # not decided until every item is
    if all(a == d.CANCELLED for a in actions):
        return "cancelled"
    certified = [a for a in actions if a in (d.CERTIFIED, d.NO_ACTION, d.MODIFIED, d.PARTIAL)]
    if not certified:
        return "denied"
    if d.PARTIAL in actions or len(certified) < len(actions):
        return "partially-approved"
    if d.MODIFIED in actions:
        return "approved-modified"
    return "approved"
