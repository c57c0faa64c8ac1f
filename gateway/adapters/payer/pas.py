"""Da Vinci PAS 2.x payer answers in as `PayerDecision`s; a PAS-shaped ClaimResponse out for the others.

Pure: the caller passes parsed JSON; nothing here does I/O. One `PayerDecision` per ClaimResponse.

What is read from where:

- Response Bundle (`type=collection`): the first entry must be a ClaimResponse; later ClaimResponses
  (Claim updates) give one decision each. `Bundle.identifier` is a trace number. A Claim in the Bundle
  that a ClaimResponse's `request` names adds its `identifier`s as trace numbers. An open CDex attachment
  request (`Task.code` attachment-request-code / attachment-request-questionnaire) or an open
  CommunicationRequest sets `info_requested`, on every decision unless it names one of their Claims.
- `ClaimResponse.item[]` (`itemSequence`), from the `reviewAction` extension on `item.adjudication`:
  `reviewActionCode` (X12 306) is the action, `number` the authorization number, `reasonCode`s reasons
  (with `adjudication.reason`; a denial without any falls back to `disposition`). Item extensions:
  `itemPreAuthPeriod`, `administrationReferenceNumber`, `itemAuthorizedDetail` (its sub-extensions as
  `{url: value}`), to which every `addItem` naming the item in `addItem.itemSequence` adds its fields
  (`productOrService` under the PAS name `productOrServiceCode`). Authorizing items (A1, A2, A6)
  without their own number or period take `ClaimResponse.preAuthRef` / `preAuthPeriod`; denied or
  pended ones do not. An item without a reviewAction is not decided yet and is left out; an `addItem`
  naming no decided item is ignored.
- `ClaimResponse.error[].code` are errors; `outcome=error` without any is one error from `disposition`.
  A pended answer is `outcome=complete` with A4 on the item: `outcome` never says pended in PAS.
- Correlation: `request.reference` (`Claim/{id}`, also as an absolute URL) and `request.identifier`;
  the payer's `identifier`, `preAuthRef`, authorization and administration reference numbers; the
  `identifier`s also as echoed trace numbers (`echoed_traces`).
  `created` is the decision time, `disposition` is kept, and so is the ClaimResponse itself (a copy).
- Subscription notification (R4 backport, `type=history`): entry[0] the SubscriptionStatus (Parameters
  in R4); for `event-notification` and `query-event`, the later entries are full response Bundles or
  bare ClaimResponses. Handshakes, heartbeats and status queries carry no decision.

`claim_response_for` goes the other way: a decision that came as X12 278 or CSV becomes the R4
ClaimResponse the gateway keeps with the PA Task, shaped the way PAS shapes its answers.
"""

from __future__ import annotations

import copy
import functools
import re
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import Any, ParamSpec

from gateway.pa.decision import (
    CERTIFIED,
    MODIFIED,
    NOT_CERTIFIED,
    PARTIAL,
    REVIEW_ACTION_SYSTEM,
    REVIEW_ACTIONS,
    Correlation,
    ItemDecision,
    PayerDecision,
    Reason,
)
from gateway.types import JSON

PAS_STRUCTURE = "http://hl7.org/fhir/us/davinci-pas/StructureDefinition/"
REVIEW_ACTION = "extension-reviewAction"
REVIEW_ACTION_CODE = "extension-reviewActionCode"
PRE_AUTH_PERIOD = "extension-itemPreAuthPeriod"
ADMINISTRATION_REFERENCE = "extension-administrationReferenceNumber"
AUTHORIZED_DETAIL = "extension-itemAuthorizedDetail"
CLAIM_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/claim-type"
ADJUDICATION_SYSTEM = "http://terminology.hl7.org/CodeSystem/adjudication"

ATTACHMENT_REQUEST_CODES = frozenset({"attachment-request-code", "attachment-request-questionnaire"})
INFO_REQUESTED = "additional information requested"
REJECTED = "rejected by payer"
NOTIFICATION_SOURCE = "pas-notification"

# Actions that authorize something: only they inherit ClaimResponse.preAuthRef / preAuthPeriod.
_AUTHORIZING = frozenset({CERTIFIED, PARTIAL, MODIFIED})
_CLOSED_TASK = frozenset({"completed", "cancelled", "failed", "rejected", "entered-in-error"})
_CLOSED_COMMUNICATION_REQUEST = frozenset({"revoked", "completed", "entered-in-error"})
_EVENT_NOTIFICATIONS = frozenset({"event-notification", "query-event"})
_QUIET_NOTIFICATIONS = frozenset({"handshake", "heartbeat", "query-status"})
_CLAIM_REFERENCE = re.compile(r"(?:^|/)Claim/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")
# addItem elements that say what was authorized, under the names itemAuthorizedDetail uses.
_ADD_ITEM_DETAIL = {
    "productOrService": "productOrServiceCode",
    "modifier": "modifier",
    "quantity": "quantity",
    "unitPrice": "unitPrice",
    "factor": "factor",
    "net": "net",
    "servicedDate": "servicedDate",
    "servicedPeriod": "servicedPeriod",
    "bodySite": "bodySite",
    "subSite": "subSite",
}
# itemAuthorizedDetail sub-extensions written back by claim_response_for, with their value[x] type.
_DETAIL_TYPES = {
    "productOrServiceCode": "valueCodeableConcept",
    "unitPrice": "valueMoney",
    "quantity": "valueQuantity",
}

Located = tuple[str, JSON]  # (FHIRPath-like location, resource)
P = ParamSpec("P")


class PasError(ValueError):
    """The input is not a PAS answer the gateway can read; `expression` says where (FHIRPath-like)."""

    def __init__(self, message: str, expression: str | None = None) -> None:
        super().__init__(f"{message} (at {expression})" if expression else message)
        self.message = message
        self.expression = expression


# ---------------------------------------------------------------------------------------------- entry points


def _guarded(read: Callable[P, list[PayerDecision]]) -> Callable[P, list[PayerDecision]]:
    """Whatever a payer sends, the caller gets decisions or a PasError, never a TypeError: the readers
    check the shapes they rely on, and anything they missed is still a malformed answer, not a crash."""

    @functools.wraps(read)
    def reading(*args: P.args, **kwargs: P.kwargs) -> list[PayerDecision]:
        try:
            return read(*args, **kwargs)
        except PasError:
            raise
        except (TypeError, KeyError, AttributeError, ValueError, IndexError) as exc:
            raise PasError(
                f"malformed PAS content ({type(exc).__name__}: an element has the wrong shape)"
            ) from None

    return reading


@_guarded
def decisions_from_response(bundle: JSON, source: str = "pas-response") -> list[PayerDecision]:
    """One decision per ClaimResponse of a PAS response Bundle ($submit or $inquire answer)."""
    return _from_response(bundle, "Bundle", source)


@_guarded
def decisions_from_notification(bundle: JSON) -> list[PayerDecision]:
    """Decisions carried by an R4 backport subscription notification; [] for handshakes and heartbeats."""
    _require_bundle(bundle, "history", "Bundle")
    located = _entries(bundle, "Bundle")
    first = "Bundle.entry[0].resource"
    if (
        not located
        or located[0][0] != first
        or _type(located[0][1]) not in ("Parameters", "SubscriptionStatus")
    ):
        found = _type(located[0][1]) if located and located[0][0] == first else "nothing"
        raise PasError(
            f"a subscription notification starts with its SubscriptionStatus (Parameters in R4), not {found}",
            first,
        )
    kind = _notification_type(located[0][1], first)
    if kind in _QUIET_NOTIFICATIONS:
        return []
    if kind not in _EVENT_NOTIFICATIONS:
        raise PasError(f"unknown notification type {kind!r}", f"{first}.parameter")
    decisions: list[PayerDecision] = []
    loose: list[Located] = []
    for where, resource in located[1:]:
        if _type(resource) == "Bundle":
            decisions += _from_response(resource, where, NOTIFICATION_SOURCE)
        else:
            loose.append((where, resource))
    if any(_type(r) == "ClaimResponse" for _, r in loose):
        decisions += _decide(loose, None, NOTIFICATION_SOURCE)
    subscription = _subscription(located[0][1])
    if subscription:
        decisions = [replace(d, extra={**d.extra, "subscription": subscription}) for d in decisions]
    return decisions


@_guarded
def decisions_from_any(body: JSON) -> list[PayerDecision]:
    """A response Bundle, a subscription notification or a lone ClaimResponse, told apart by shape."""
    if not isinstance(body, dict):
        raise PasError("expected a FHIR resource (a JSON object)")
    resource_type = body.get("resourceType")
    if resource_type == "ClaimResponse":
        return _decide([("ClaimResponse", body)], None, "pas-response")
    if resource_type == "Bundle":
        if body.get("type") == "history":
            return decisions_from_notification(body)
        if body.get("type") == "collection":
            return decisions_from_response(body)
        raise PasError(
            f"a Bundle of type {body.get('type')!r} is neither a PAS response nor a notification",
            "Bundle.type",
        )
    raise PasError(
        f"expected a PAS response Bundle, a notification or a ClaimResponse, not {resource_type!r}",
        "resourceType",
    )


# ------------------------------------------------------------------------------------------ bundle structure


def _type(resource: JSON) -> str:
    value = resource.get("resourceType")
    return value if isinstance(value, str) else "?"


def _require_bundle(bundle: Any, kind: str, root: str) -> None:
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        found = bundle.get("resourceType") if isinstance(bundle, dict) else type(bundle).__name__
        raise PasError(f"expected a Bundle, not {found!r}", root)
    if bundle.get("type") != kind:
        raise PasError(f"expected a Bundle of type {kind!r}, not {bundle.get('type')!r}", f"{root}.type")


def _entries(bundle: JSON, root: str) -> list[Located]:
    """The entries' resources with their locations; entries without a resource (id-only) are skipped."""
    found: list[Located] = []
    for i, entry in enumerate(_objects(bundle, "entry", root)):
        resource = entry.get("resource")
        if resource is None:
            continue
        where = f"{root}.entry[{i}].resource"
        if not isinstance(resource, dict) or not isinstance(resource.get("resourceType"), str):
            raise PasError("an entry's resource must be a FHIR resource", where)
        found.append((where, resource))
    return found


def _from_response(bundle: Any, root: str, source: str) -> list[PayerDecision]:
    _require_bundle(bundle, "collection", root)
    located = _entries(bundle, root)
    first = f"{root}.entry[0].resource"
    if not located or located[0][0] != first or _type(located[0][1]) != "ClaimResponse":
        found = _type(located[0][1]) if located and located[0][0] == first else "nothing"
        raise PasError(f"a PAS response Bundle starts with a ClaimResponse, not {found}", first)
    return _decide(located, _token(bundle.get("identifier")), source)


def _decide(located: list[Located], bundle_trace: str | None, source: str) -> list[PayerDecision]:
    claims = {r["id"]: r for _, r in located if _type(r) == "Claim" and isinstance(r.get("id"), str)}
    decisions = [
        _decision(where, resource, claims, bundle_trace, source)
        for where, resource in located
        if _type(resource) == "ClaimResponse"
    ]
    return _with_info_requests(decisions, [r for _, r in located])


def _notification_type(status: JSON, where: str) -> str:
    if _type(status) == "SubscriptionStatus":
        kind = status.get("type")
    else:
        kind = next(
            (p.get("valueCode") for p in _objects(status, "parameter", where) if p.get("name") == "type"),
            None,
        )
    if not isinstance(kind, str) or not kind:
        raise PasError("the notification's SubscriptionStatus has no type", where)
    return kind


def _subscription(status: JSON) -> str | None:
    if _type(status) == "SubscriptionStatus":
        reference = status.get("subscription")
    else:
        parameters = status.get("parameter") or []
        reference = next(
            (p.get("valueReference") for p in parameters if p.get("name") == "subscription"), None
        )
    return _string(reference.get("reference")) if isinstance(reference, dict) else None


# ---------------------------------------------------------------------------------------- one ClaimResponse


def _decision(
    where: str, response: JSON, claims: dict[str, JSON], bundle_trace: str | None, source: str
) -> PayerDecision:
    if response.get("use") != "preauthorization":
        raise PasError(
            f"ClaimResponse.use is {response.get('use')!r}, not 'preauthorization'", f"{where}.use"
        )
    items = tuple(
        decided
        for i, item in enumerate(_objects(response, "item", where))
        if (decided := _item(f"{where}.item[{i}]", item, response)) is not None
    )
    extra: dict[str, Any] = {"outcome": response.get("outcome")}
    if isinstance(response.get("id"), str):
        extra["claim_response_id"] = response["id"]
    return PayerDecision(
        source=source,
        correlation=_correlation(where, response, items, claims, bundle_trace),
        items=items,
        errors=_errors(where, response),
        disposition=_string(response.get("disposition")),
        decided_at=_string(response.get("created")),
        claim_response=copy.deepcopy(response),
        extra=extra,
    )


def _errors(where: str, response: JSON) -> tuple[Reason, ...]:
    found = [
        _reason(error.get("code")) or Reason(None, display=REJECTED)
        for error in _objects(response, "error", where)
    ]
    if not found and response.get("outcome") == "error":
        found.append(Reason(None, display=_string(response.get("disposition")) or REJECTED))
    return tuple(found)


def _correlation(
    where: str,
    response: JSON,
    items: tuple[ItemDecision, ...],
    claims: dict[str, JSON],
    bundle_trace: str | None,
) -> Correlation:
    request = response.get("request")
    if request is not None and not isinstance(request, dict):
        raise PasError("ClaimResponse.request must be a Reference", f"{where}.request")
    request = request or {}
    claim_id = _claim_id(request.get("reference"))
    traces = [_token(request.get("identifier")), bundle_trace]
    if claim_id in claims:
        traces += [_token(i) for i in _objects(claims[claim_id], "identifier", f"Claim/{claim_id}")]
    identifiers = [_token(i) for i in _objects(response, "identifier", where)]
    payer = [*identifiers, _string(response.get("preAuthRef"))]
    payer += [i.authorization_number for i in items] + [i.administration_reference for i in items]
    return Correlation(
        claim_ids=(claim_id,) if claim_id else (),
        trace_numbers=_unique(traces),
        payer_references=_unique(payer),
        # PAS payers may echo the submitter's trace number as ClaimResponse.identifier and name the
        # request no other way.
        echoed_traces=_unique(identifiers),
    )


def _claim_id(reference: Any) -> str | None:
    match = _CLAIM_REFERENCE.search(reference) if isinstance(reference, str) else None
    return match.group(1) if match else None


# ---------------------------------------------------------------------------------------------- one item


def _item(where: str, item: JSON, response: JSON) -> ItemDecision | None:
    review = _review_action(where, item)
    if review is None:
        return None
    review_where, review_extension = review
    subs = _objects(review_extension, "extension", review_where)
    action = _review_code(review_where, subs)
    sequence = _sequence(where, item)
    inherited = response if action in _AUTHORIZING else {}
    period = _extension_value(item, PRE_AUTH_PERIOD, "valuePeriod") or inherited.get("preAuthPeriod")
    period = period if isinstance(period, dict) else {}
    return ItemDecision(
        sequence=sequence,
        action=action,
        authorization_number=_string(_sub_value(subs, "number")) or _string(inherited.get("preAuthRef")),
        period_start=_string(period.get("start")),
        period_end=_string(period.get("end")),
        reasons=_item_reasons(where, subs, item, action, response),
        authorized_detail=_authorized_detail(item, response, sequence),
        administration_reference=_string(_extension_value(item, ADMINISTRATION_REFERENCE, "valueString")),
    )


def _review_action(where: str, item: JSON) -> Located | None:
    for a, adjudication in enumerate(_objects(item, "adjudication", where)):
        for e, extension in enumerate(_objects(adjudication, "extension", f"{where}.adjudication[{a}]")):
            if _tail(extension.get("url")) == REVIEW_ACTION:
                return f"{where}.adjudication[{a}].extension[{e}]", extension
    return None


def _review_code(where: str, subs: list[JSON]) -> str:
    codings = _codings(_sub_value(subs, REVIEW_ACTION_CODE))
    preferred = [c for c in codings if c.get("system") == REVIEW_ACTION_SYSTEM] or codings
    code = next((code for c in preferred if (code := _string(c.get("code")))), None)
    if code is None:
        raise PasError("the reviewAction extension has no reviewActionCode", where)
    return code


def _sequence(where: str, item: JSON) -> int | None:
    sequence = item.get("itemSequence")
    if sequence is None:
        return None
    if not isinstance(sequence, int) or isinstance(sequence, bool) or sequence < 1:
        raise PasError(f"itemSequence must be a positive integer, not {sequence!r}", f"{where}.itemSequence")
    return sequence


def _item_reasons(
    where: str, subs: list[JSON], item: JSON, action: str, response: JSON
) -> tuple[Reason, ...]:
    concepts = [s.get("valueCodeableConcept") for s in subs if _tail(s.get("url")) == "reasonCode"]
    concepts += [a.get("reason") for a in _objects(item, "adjudication", where)]
    found = [reason for reason in (_reason(c) for c in concepts) if reason is not None]
    disposition = _string(response.get("disposition"))
    if not found and action == NOT_CERTIFIED and disposition:
        found.append(Reason(None, display=disposition))
    return tuple(dict.fromkeys(found))


def _reason(concept: Any) -> Reason | None:
    """A CodeableConcept as one Reason: its first coding with a code, else its text."""
    if not isinstance(concept, dict):
        return None
    text = _string(concept.get("text"))
    for coding in concept.get("coding") or []:
        if isinstance(coding, dict) and _string(coding.get("code")):
            return Reason(
                coding["code"], _string(coding.get("system")), _string(coding.get("display")) or text
            )
    return Reason(None, display=text) if text else None


def _authorized_detail(item: JSON, response: JSON, sequence: int | None) -> dict[str, Any] | None:
    detail: dict[str, Any] = {}
    for extension in _extensions(item, AUTHORIZED_DETAIL):
        detail.update(_sub_extension_values(extension))
    for add_item in response.get("addItem") or []:
        if (
            sequence is not None
            and isinstance(add_item, dict)
            and sequence in (add_item.get("itemSequence") or [])
        ):
            detail.update(_add_item_detail(add_item))
    return detail or None


def _add_item_detail(add_item: JSON) -> dict[str, Any]:
    detail = {name: copy.deepcopy(add_item[key]) for key, name in _ADD_ITEM_DETAIL.items() if key in add_item}
    for extension in _extensions(add_item, AUTHORIZED_DETAIL):
        detail.update(_sub_extension_values(extension))
    return detail


# ----------------------------------------------------------------------------------- information requests


def _with_info_requests(decisions: list[PayerDecision], resources: list[JSON]) -> list[PayerDecision]:
    """Open information requests go on the decision whose Claim they name, else on every decision."""
    requests = [found for found in (_info_request(r) for r in resources) if found is not None]
    if not requests:
        return decisions
    known = {claim for d in decisions for claim in d.correlation.claim_ids}
    updated = []
    for decision in decisions:
        texts = [
            text for claim, text in requests if claim not in known or claim in decision.correlation.claim_ids
        ]
        updated.append(
            replace(decision, info_requested="; ".join(dict.fromkeys(texts))) if texts else decision
        )
    return updated


def _info_request(resource: JSON) -> tuple[str | None, str] | None:
    """(the Claim id it names, a short text) for an open attachment-request Task or CommunicationRequest."""
    if _type(resource) == "Task":
        codes = {c.get("code") for c in _codings(resource.get("code"))}
        if resource.get("status") in _CLOSED_TASK or not codes & ATTACHMENT_REQUEST_CODES:
            return None
        return _named_claim(resource, ("reasonReference", "focus", "basedOn")), _task_text(resource)
    if _type(resource) == "CommunicationRequest":
        if resource.get("status") in _CLOSED_COMMUNICATION_REQUEST:
            return None
        texts = [p.get("contentString") for p in resource.get("payload") or [] if isinstance(p, dict)]
        text = "; ".join(t for t in texts if isinstance(t, str) and t) or INFO_REQUESTED
        return _named_claim(resource, ("about", "basedOn")), text
    return None


def _task_text(task: JSON) -> str:
    attachments: list[str] = []
    questionnaires: list[str] = []
    for task_input in task.get("input") or []:
        if not isinstance(task_input, dict):
            continue
        codes = {c.get("code") for c in _codings(task_input.get("type"))}
        if "attachments-needed" in codes:
            attachments.append(_concept_text(task_input.get("valueCodeableConcept")) or "attachment")
        elif codes & {"questionnaire", "questionnaire-context"} and _string(task_input.get("valueCanonical")):
            questionnaires.append(task_input["valueCanonical"])
    parts = []
    if attachments:
        parts.append("attachments needed: " + ", ".join(dict.fromkeys(attachments)))
    if questionnaires:
        parts.append("questionnaire to complete: " + ", ".join(dict.fromkeys(questionnaires)))
    return "; ".join(parts) or INFO_REQUESTED


def _named_claim(resource: JSON, elements: Iterable[str]) -> str | None:
    for element in elements:
        value = resource.get(element)
        for reference in value if isinstance(value, list) else [value]:
            if isinstance(reference, dict) and (claim := _claim_id(reference.get("reference"))):
                return claim
    return None


# ------------------------------------------------------------------------------------------- small readers


def _objects(parent: JSON, key: str, where: str) -> list[JSON]:
    """`parent[key]` as a list of objects ([] when absent); anything else is a PasError."""
    value = parent.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise PasError(f"{key} must be a list of objects", f"{where}.{key}")
    return value


def _tail(url: Any) -> str:
    return url.rsplit("/", 1)[-1] if isinstance(url, str) else ""


def _extensions(element: JSON, name: str) -> list[JSON]:
    found = element.get("extension") or []
    return [e for e in found if isinstance(e, dict) and _tail(e.get("url")) == name]


def _value(extension: JSON) -> Any:
    return next((v for k, v in extension.items() if k.startswith("value")), None)


def _extension_value(element: JSON, name: str, value_key: str) -> Any:
    return next((e.get(value_key) for e in _extensions(element, name) if value_key in e), None)


def _sub_value(subs: list[JSON], name: str) -> Any:
    return next((_value(s) for s in subs if _tail(s.get("url")) == name), None)


def _sub_extension_values(extension: JSON) -> dict[str, Any]:
    subs = [
        s for s in extension.get("extension") or [] if isinstance(s, dict) and isinstance(s.get("url"), str)
    ]
    return {s["url"]: copy.deepcopy(_value(s)) for s in subs}


def _codings(concept: Any) -> list[JSON]:
    codings = concept.get("coding") if isinstance(concept, dict) else None
    return [c for c in codings or [] if isinstance(c, dict)]


def _concept_text(concept: Any) -> str | None:
    if not isinstance(concept, dict):
        return None
    codings = _codings(concept)
    return (
        _string(concept.get("text"))
        or next((c["display"] for c in codings if _string(c.get("display"))), None)
        or next((c["code"] for c in codings if _string(c.get("code"))), None)
    )


def _string(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _token(identifier: Any) -> str | None:
    """An Identifier as `system|value`, or the bare value without a system."""
    if not isinstance(identifier, dict) or not _string(identifier.get("value")):
        return None
    system = _string(identifier.get("system"))
    return f"{system}|{identifier['value']}" if system else str(identifier["value"])


def _unique(values: Iterable[str | None]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v for v in values if v))


# ---------------------------------------------------------------------------------- decision -> ClaimResponse


def claim_response_for(
    decision: PayerDecision,
    *,
    claim_id: str,
    patient_ref: str,
    insurer_ref: str | None,
    requestor_ref: str | None,
    created: str,
) -> JSON:
    """An R4 ClaimResponse (PAS-shaped) for a decision that came in another format."""
    response: JSON = {
        "resourceType": "ClaimResponse",
        "status": "active",
        "type": {"coding": [{"system": CLAIM_TYPE_SYSTEM, "code": "pharmacy"}]},
        "use": "preauthorization",
        "patient": {"reference": patient_ref},
        "created": created,
        "insurer": {"reference": insurer_ref} if insurer_ref else {"display": "unknown payer"},
    }
    if requestor_ref:
        response["requestor"] = {"reference": requestor_ref}
    response["request"] = {"reference": f"Claim/{claim_id}"}
    response["outcome"] = "error" if decision.errors else "complete"
    if decision.disposition:
        response["disposition"] = decision.disposition
    numbers = [i.authorization_number for i in decision.items if i.authorization_number]
    if numbers:
        response["preAuthRef"] = numbers[0]
    if decision.items:
        response["item"] = [_response_item(i) for i in decision.items]
    if decision.errors:
        response["error"] = [{"code": _concept(reason)} for reason in decision.errors]
    return response


def _response_item(item: ItemDecision) -> JSON:
    extensions: list[JSON] = []
    if item.period_start or item.period_end:
        period = {k: v for k, v in (("start", item.period_start), ("end", item.period_end)) if v}
        extensions.append({"url": PAS_STRUCTURE + PRE_AUTH_PERIOD, "valuePeriod": period})
    if item.administration_reference:
        url = PAS_STRUCTURE + ADMINISTRATION_REFERENCE
        extensions.append({"url": url, "valueString": item.administration_reference})
    detail = _detail_extension(item.authorized_detail or {})
    if detail:
        extensions.append(detail)
    built: JSON = {"extension": extensions} if extensions else {}
    built["itemSequence"] = item.sequence if item.sequence is not None else 1
    built["adjudication"] = [
        {
            "extension": [{"url": PAS_STRUCTURE + REVIEW_ACTION, "extension": _review_subs(item)}],
            "category": {"coding": [{"system": ADJUDICATION_SYSTEM, "code": "submitted"}]},
        }
    ]
    return built


def _review_subs(item: ItemDecision) -> list[JSON]:
    coding = {"system": REVIEW_ACTION_SYSTEM, "code": item.action}
    if item.action in REVIEW_ACTIONS:
        coding["display"] = REVIEW_ACTIONS[item.action]
    subs: list[JSON] = [
        {"url": PAS_STRUCTURE + REVIEW_ACTION_CODE, "valueCodeableConcept": {"coding": [coding]}}
    ]
    if item.authorization_number:
        subs.append({"url": "number", "valueString": item.authorization_number})
    subs += [{"url": "reasonCode", "valueCodeableConcept": _concept(reason)} for reason in item.reasons]
    return subs


def _detail_extension(detail: dict[str, Any]) -> JSON | None:
    """The authorized detail parts PAS's itemAuthorizedDetail carries with a known type; others stay out."""
    subs = [
        {"url": name, value_key: copy.deepcopy(detail[name])}
        for name, value_key in _DETAIL_TYPES.items()
        if isinstance(detail.get(name), dict) and detail[name]
    ]
    return {"url": PAS_STRUCTURE + AUTHORIZED_DETAIL, "extension": subs} if subs else None


def _concept(reason: Reason) -> JSON:
    if not reason.code:
        return {"text": reason.text() or "unspecified"}
    coding = {
        k: v for k, v in (("system", reason.system), ("code", reason.code), ("display", reason.display)) if v
    }
    return {"coding": [coding]}
