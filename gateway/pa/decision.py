"""A payer's answer, whatever format it came in (PAS, X12 278, CSV), in one shape.

Adapters (`gateway.adapters.payer`) turn raw input into `PayerDecision`s; the lifecycle
(`gateway.pa.lifecycle`) turns a decision into the PA Task's next status. Review actions are X12 306
codes, which PAS carries on `ClaimResponse.item.adjudication` (reviewAction extension) and X12 278 in
HCR01.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

# X12 306 review action codes the gateway understands (HCR01; PAS reviewActionCode).
CERTIFIED = "A1"  # certified in total
PARTIAL = "A2"  # certified, partial
NOT_CERTIFIED = "A3"  # denied
PENDED = "A4"  # pended: decision later
MODIFIED = "A6"  # certified with changes (authorized detail differs from the request)
CANCELLED = "C"  # cancelled (the request was withdrawn)
CONTACT_PAYER = "CT"  # the payer wants to hear from the requester: more information needed
NO_ACTION = "NA"  # no action required: the service needs no authorization

REVIEW_ACTIONS = {
    CERTIFIED: "Certified in total",
    PARTIAL: "Certified - partial",
    NOT_CERTIFIED: "Not certified",
    PENDED: "Pended",
    MODIFIED: "Modified",
    CANCELLED: "Cancelled",
    CONTACT_PAYER: "Contact payer",
    NO_ACTION: "No action required",
}
REVIEW_ACTION_SYSTEM = "https://codesystem.x12.org/005010/306"
# X12 external code source 886, Health Care Services Review Decision Reason Codes: X12 278 HCR03 and the
# PAS reviewAction `reasonCode`. The list is X12's (licensed); the gateway knows the meanings a site puts in
# `mappings/tables/x12-review-decision-reasons.yaml` and makes up none.
REVIEW_REASON_SYSTEM = "https://codesystem.x12.org/external/886"
REVIEW_REASON_TABLE = "x12-review-decision-reasons"


@dataclass(frozen=True, slots=True)
class Reason:
    """Why the payer decided so (X12 HCR03 / PAS reasonCode / adjudication.reason / a CSV text)."""

    code: str | None
    system: str | None = None
    display: str | None = None

    def text(self) -> str:
        return self.display or self.code or ""

    def label(self) -> str:
        """For people: the meaning with its code, or the bare code said to be one."""
        if self.display and self.code:
            return f"{self.display} ({self.code})"
        return self.display or (f"reason code {self.code}" if self.code else "")


@dataclass(frozen=True, slots=True)
class Correlation:
    """What ties an answer to the gateway's request. Any part may be empty; the service tries each.

    - `claim_ids`: ids of the gateway's own Claim (ClaimResponse.request.reference `Claim/{id}`).
    - `trace_numbers`: identifiers the gateway sent and the payer echoes (Claim.identifier, Bundle
      identifier, X12 TRN), as `system|value` when a system is known, else the bare value.
    - `payer_references`: the payer's own numbers (ClaimResponse.identifier, authorization numbers,
      administration reference numbers), remembered from earlier answers, as `system|value` or bare.
    - `echoed_traces`: identifiers of the answer that may be the gateway's trace number echoed back
      (PAS ClaimResponse.identifier), looked up among the trace numbers after `trace_numbers`: as
      `system|value` when a system is given, so the same value under another system matches nothing.
    - `task_id`: the PA Task named directly (CSV files may do this).
    """

    claim_ids: tuple[str, ...] = ()
    trace_numbers: tuple[str, ...] = ()
    payer_references: tuple[str, ...] = ()
    task_id: str | None = None
    echoed_traces: tuple[str, ...] = ()

    def lookups(self) -> list[tuple[str, str]]:
        """(kind, value) pairs in the order the service should look them up."""
        found: list[tuple[str, str]] = []
        if self.task_id:
            found.append(("task", self.task_id))
        found += [("claim", v) for v in self.claim_ids]
        found += [("trace", v) for v in (*self.trace_numbers, *self.echoed_traces)]
        found += [("payer", v) for v in self.payer_references]
        return found


@dataclass(frozen=True, slots=True)
class ItemDecision:
    """The payer's decision on one requested item (Claim.item.sequence / X12 2000F service level)."""

    sequence: int | None
    action: str  # an X12 306 code, see REVIEW_ACTIONS
    authorization_number: str | None = None
    period_start: str | None = None  # FHIR date or dateTime
    period_end: str | None = None
    reasons: tuple[Reason, ...] = ()
    # What was authorized when it differs from the request (A2/A6): e.g. {"quantity": {"value": 30}}.
    authorized_detail: dict[str, Any] | None = None
    administration_reference: str | None = None


@dataclass(frozen=True, slots=True)
class PayerDecision:
    """One answer from a payer about one request."""

    source: str  # pas-response, pas-notification, pas-inquiry, x12-278, csv
    correlation: Correlation
    items: tuple[ItemDecision, ...] = ()
    # The payer refused to process the request (ClaimResponse.error, X12 AAA): rejected-by-payer.
    errors: tuple[Reason, ...] = ()
    # The payer asked for more information (a PAS/CDex Task, a CommunicationRequest): info-requested.
    info_requested: str | None = None
    disposition: str | None = None
    decided_at: str | None = None  # the payer's timestamp, FHIR dateTime
    # The payer's ClaimResponse as received (PAS), kept with the Task; adapters of other formats leave
    # it None and the service builds one from the items.
    claim_response: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # format-specific facts worth keeping


def named_reasons(decision: PayerDecision, displays: Mapping[str, Any]) -> PayerDecision:
    """The decision with X12 886 review decision reasons given their meaning from `displays` (code ->
    text), where the payer gave none; codes not in the table stay without one."""

    def named(reason: Reason) -> Reason:
        if reason.display or not reason.code or reason.system != REVIEW_REASON_SYSTEM:
            return reason
        display = displays.get(reason.code)
        return replace(reason, display=str(display)) if display else reason

    items = tuple(replace(i, reasons=tuple(named(r) for r in i.reasons)) for i in decision.items)
    return replace(decision, items=items)
