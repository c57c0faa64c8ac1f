"""The audit trail's pure part: what one interaction did (`AuditRecord`), and that record as an R4
AuditEvent with the values it is searched by.

A record is filled in while its interaction runs: the transport says who asked and from where, the FHIR
interactions say which resources were read or written (with their content, so that the Patient each one
is about can be found), and whoever sees the end says how it went. Turning it into JSON happens later,
off the request path (`build`).

Codes (R4 AuditEvent):
- type: `rest` (audit-event-type) for the REST API, subtype the restful-interaction; DICOM `110106`
  Export for subscription deliveries (subtype the notification type), `110107` Import for HL7 v2
  messages (subtype the trigger event, HL7 table 0003) and payers' feeds, `110114` User Authentication
  for token requests and people's logins (subtype `110122` Login, `110123` Logout);
- outcome: `0` success, `4` minor failure (an HTTP 4xx, an AE, a delivery to be retried), `8` serious
  failure (an HTTP 5xx, an AR); `12` (the system died) is never recorded: nothing survives to record it.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode

import orjson

from gateway.fhir import dates, jsonio
from gateway.types import JSON

AUDIT_EVENT_TYPES = "http://terminology.hl7.org/CodeSystem/audit-event-type"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
HL7_TRIGGER_EVENTS = "http://terminology.hl7.org/CodeSystem/v2-0003"
NOTIFICATION_TYPES = "http://hl7.org/fhir/subscription-notification-type"
ENTITY_TYPES = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLES = "http://terminology.hl7.org/CodeSystem/object-role"
RESOURCE_TYPES = "http://hl7.org/fhir/resource-types"
SOURCE_TYPES = "http://terminology.hl7.org/CodeSystem/security-source-type"
GATEWAY = "https://specialty-gateway.org/fhir"
HL7_MESSAGE_LOG = f"{GATEWAY}/hl7v2-message"  # the HL7 v2 message log's ids (as Provenance names them)

# kind -> (type coding, the system its subtypes come from)
KINDS: dict[str, tuple[tuple[str, str, str], str]] = {
    "rest": ((AUDIT_EVENT_TYPES, "rest", "RESTful Operation"), RESTFUL_INTERACTION),
    "export": ((DCM, "110106", "Export"), NOTIFICATION_TYPES),
    "import": ((DCM, "110107", "Import"), HL7_TRIGGER_EVENTS),
    "login": ((DCM, "110114", "User Authentication"), DCM),
}
LOGIN = "110122"
LOGOUT = "110123"
_SUBTYPE_DISPLAY = {LOGIN: "Login", LOGOUT: "Logout"}

# Who the agent is: the identifier system of its id, by kind.
AGENT_SYSTEMS = {
    "client": f"{GATEWAY}/audit-agent/api-client",  # an OAuth client id
    "mllp": f"{GATEWAY}/audit-agent/mllp-peer",  # host:port of an MLLP connection (MLLP has no login)
    "file": f"{GATEWAY}/audit-agent/file",  # the name of a file given to `gateway ingest`
    "internal": f"{GATEWAY}/audit-agent/internal",  # the gateway's own tools (reprocessing from the CLI)
    "user": f"{GATEWAY}/audit-agent/user",  # a person's user name (one with no Practitioner, or unknown)
}
# agent_kind of a person acting as their Practitioner: `agent` is the reference (agent.who.reference).
PRACTITIONER_AGENT = "practitioner"

# restful-interaction -> R4 AuditEvent.action (C R U D E)
_ACTIONS = {
    "create": "C",
    "read": "R",
    "vread": "R",
    "search-type": "R",
    "search-system": "R",
    "history-instance": "R",
    "history-type": "R",
    "history-system": "R",
    "update": "U",
    "patch": "U",
    "delete": "D",
}
_KIND_ACTIONS = {"import": "C", "export": "R", "login": "E"}

# Elements naming the Patient a resource is about (R4: Observation.subject, AllergyIntolerance.patient,
# Task.for, Coverage.beneficiary...).
PATIENT_ELEMENTS = ("subject", "patient", "for", "beneficiary")
# Search parameters whose value names the Patient a search is about (a bare id means a Patient for
# `patient` and `beneficiary`, which only ever point at one).
_PATIENT_PARAMS = {"patient": True, "beneficiary": True, "subject": False, "for": False}

OUTCOMES = (0, 4, 8, 12)
# Resources named without content whose Patients are looked up, per event at most.
MAX_UNRESOLVED = 1000


def outcome_of_status(status: int) -> int:
    """An HTTP status as an AuditEvent outcome: 4xx a minor failure, 5xx a serious one."""
    if status >= 500:
        return 8
    return 4 if status >= 400 else 0


def outcome_of_ack(code: str) -> int:
    """An HL7 v2 ACK code as an AuditEvent outcome: AE (error, may be resent) minor, AR (rejected) serious."""
    return {"AA": 0, "CA": 0, "AE": 4, "CE": 4}.get(code, 8)


def patient_id_of(reference: object) -> str | None:
    """The Patient id a reference names (`Patient/1`, `Patient/1/_history/2`, `http://x/fhir/Patient/1`)."""
    if not isinstance(reference, str) or "?" in reference:
        return None
    parts = reference.split("/")
    if len(parts) >= 4 and parts[-2] == "_history":
        parts = parts[:-2]
    if len(parts) >= 2 and parts[-2] == "Patient" and parts[-1]:
        return parts[-1]
    return None


def patients_of(resource: JSON) -> set[str]:
    """The ids of the Patients a resource is about: itself, or what its subject/patient/for/beneficiary
    references when that is a Patient."""
    if resource.get("resourceType") == "Patient":
        rid = resource.get("id")
        return {rid} if isinstance(rid, str) else set()
    found: set[str] = set()
    for name in PATIENT_ELEMENTS:
        value = resource.get(name)
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, dict):
                pid = patient_id_of(item.get("reference"))
                if pid:
                    found.add(pid)
    return found


def patients_in(content: bytes) -> set[str]:
    """`patients_of` for stored JSON (orjson, with the decimal-keeping parser for what orjson refuses)."""
    try:
        resource = orjson.loads(content)
    except orjson.JSONDecodeError:
        try:
            resource = jsonio.loads(content)
        except jsonio.JSONDecodeError:
            return set()
    return patients_of(resource) if isinstance(resource, dict) else set()


def patients_in_query(resource_type: str, params: Iterable[tuple[str, str]]) -> set[str]:
    """Patients a search names in its parameters (`patient=1`, `subject=Patient/1`, `Patient?_id=1`)."""
    found: set[str] = set()
    for key, value in params:
        name, _, modifier = key.partition(":")
        if resource_type == "Patient" and name == "_id":
            found.update(v for v in value.split(",") if v)
            continue
        bare_is_patient = _PATIENT_PARAMS.get(name)
        if bare_is_patient is None or modifier not in ("", "Patient"):
            continue
        for item in value.split(","):
            pid = patient_id_of(item)
            if pid is None and item and "/" not in item and (bare_is_patient or modifier == "Patient"):
                pid = item
            if pid:
                found.add(pid)
    return found


@dataclass(slots=True)
class AuditRecord:
    """One auditable interaction: filled in while it runs, completed (`finish`) when its outcome is known.

    Mutable on purpose: the transport creates it, the interactions add to it, the transport completes it.
    It holds ids and queries, never patient names; stored content is kept only until `finish` has found
    the Patients in it.
    """

    recorded_us: int
    kind: str = "rest"  # rest | import | export | login (KINDS)
    subtype: str | None = None  # restful-interaction code, trigger event, notification type, LOGIN
    subtype_display: str | None = None
    agent: str | None = None  # who: a client id, an MLLP peer, a file name
    agent_kind: str = "client"  # AGENT_SYSTEMS, or PRACTITIONER_AGENT
    agent_alt: str | None = None  # another name of the agent (a Practitioner's user name): agent.altId
    requestor: bool = True  # false when the agent received rather than asked (deliveries)
    address: str | None = None  # from where: the client's IP address (or the subscriber's host)
    resources: dict[tuple[str, str], None] = field(default_factory=dict)  # what, in order, once each
    patients: set[str] = field(default_factory=set)
    queries: list[tuple[str, str]] = field(default_factory=list)  # (resource type or "", query string)
    operation: str | None = None  # `$request-prior-auth`, or a non-FHIR route (`GET /hl7v2/messages`)
    message: tuple[str, str, str] | None = None  # HL7 v2: (log id, MSH-10, message type)
    outcome: int = 0
    outcome_desc: str | None = None
    contents: list[bytes] = field(default_factory=list)  # read or written: where Patients are found
    unresolved: set[tuple[str, str]] = field(default_factory=set)  # no content at hand: looked up later
    finished: bool = False
    # An operation that only reads (`$everything`): its action, where the subtype alone says `E`.
    action_code: str | None = None

    def touch(
        self, resource_type: str, resource_id: str, content: bytes | None = None, *, resolve: bool = True
    ) -> None:
        """A resource this interaction read, wrote or tried to, with its content when at hand (else, with
        `resolve`, the audit log looks up the Patient it is about)."""
        key = (resource_type, resource_id)
        self.resources[key] = None
        if resource_type == "Patient":
            self.patients.add(resource_id)
        elif content is not None:
            self.contents.append(content)
            self.unresolved.discard(key)
        elif resolve and len(self.unresolved) < MAX_UNRESOLVED:
            self.unresolved.add(key)

    def saw(self, contents: Iterable[bytes | None]) -> None:
        """Resources a search returned: their Patients count, they are not listed one by one."""
        self.contents.extend(c for c in contents if c is not None)

    def searched(
        self, resource_type: str, params: Sequence[tuple[str, str]], *, patients: bool = True
    ) -> None:
        """A search (its parameters as given); the Patients it names count unless `patients` is False."""
        self.queries.append((resource_type, urlencode(params)))
        if patients:
            self.patients |= patients_in_query(resource_type, params)

    def finish(self, outcome: int, description: str | None = None) -> None:
        """The outcome is known: find the Patients in what was read or written, and let go of it."""
        self.outcome = outcome
        if description is not None:
            self.outcome_desc = description
        self.resolve_contents()
        self.finished = True

    def resolve_contents(self) -> None:
        for content in self.contents:
            self.patients |= patients_in(content)
        self.contents = []
        self.unresolved = {k for k in self.unresolved if k[0] != "Patient"}

    @property
    def action(self) -> str:
        if self.kind != "rest":
            return _KIND_ACTIONS.get(self.kind, "E")
        if self.action_code is not None:
            return self.action_code
        return _ACTIONS.get(self.subtype or "", "E")


@dataclass(frozen=True, slots=True)
class BuiltEvent:
    """An AuditEvent ready to store: its JSON and the values it is searched by."""

    id: str
    recorded_us: int
    type: str
    subtype: str | None
    action: str
    outcome: int
    agent: str | None
    address: str | None
    content: bytes
    patients: tuple[str, ...]  # "Patient/id"
    entities: tuple[str, ...]  # "Type/id" of every entity with a reference


def _coding(system: str, code: str, display: str | None = None) -> JSON:
    coding: JSON = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return coding


def build(record: AuditRecord, event_id: str, observer: str) -> BuiltEvent:
    """The R4 AuditEvent for a finished record (`observer`: the gateway that saw it)."""
    (type_system, type_code, type_display), subtype_system = KINDS.get(record.kind, KINDS["rest"])
    event: JSON = {
        "resourceType": "AuditEvent",
        "id": event_id,
        "meta": {"versionId": "1", "lastUpdated": dates.format_instant(record.recorded_us)},
        "type": _coding(type_system, type_code, type_display),
    }
    if record.subtype:
        display = record.subtype_display or _SUBTYPE_DISPLAY.get(record.subtype, record.subtype)
        event["subtype"] = [_coding(subtype_system, record.subtype, display)]
    event["action"] = record.action
    event["recorded"] = dates.format_instant(record.recorded_us)
    event["outcome"] = str(record.outcome)
    if record.outcome_desc:
        event["outcomeDesc"] = record.outcome_desc
    agent: JSON = {"requestor": record.requestor}
    if record.agent and record.agent_kind == PRACTITIONER_AGENT:
        agent["who"] = {"reference": record.agent}
    elif record.agent:
        system = AGENT_SYSTEMS.get(record.agent_kind, AGENT_SYSTEMS["client"])
        agent["who"] = {"identifier": {"system": system, "value": record.agent}}
    else:
        agent["who"] = {"display": "unauthenticated"}
    if record.agent_alt:
        agent["altId"] = record.agent_alt
    if record.address:
        agent["network"] = {"address": record.address, "type": "2"}  # 2: an IP address
    event["agent"] = [agent]
    event["source"] = {
        "observer": {
            "identifier": {"system": f"{GATEWAY}/audit-source", "value": observer},
            "display": observer,
        },
        "type": [_coding(SOURCE_TYPES, "4", "Application Server")],
    }
    entities: list[JSON] = []
    patients = sorted(record.patients)
    for pid in patients:
        entities.append(
            {
                "what": {"reference": f"Patient/{pid}"},
                "type": _coding(ENTITY_TYPES, "1", "Person"),
                "role": _coding(OBJECT_ROLES, "1", "Patient"),
            }
        )
    for rtype, rid in record.resources:
        if rtype != "Patient":  # a Patient is listed once, as the patient
            entities.append(
                {
                    "what": {"reference": f"{rtype}/{rid}"},
                    "type": _coding(RESOURCE_TYPES, rtype),
                    "role": _coding(OBJECT_ROLES, "4", "Domain Resource"),
                }
            )
    for rtype, query in record.queries:
        entity: JSON = {
            "type": _coding(RESOURCE_TYPES, rtype) if rtype else _coding(ENTITY_TYPES, "2", "System Object"),
            "role": _coding(OBJECT_ROLES, "24", "Query"),
            "query": base64.b64encode(f"{rtype}?{query}".encode()).decode(),
        }
        entities.append(entity)
    if record.message is not None:
        log_id, control_id, message_type = record.message
        message: JSON = {"type": _coding(ENTITY_TYPES, "2", "System Object"), "description": "HL7 v2 message"}
        if log_id:
            message["what"] = {"identifier": {"system": HL7_MESSAGE_LOG, "value": log_id}}
        details = [("MSH-10", control_id), ("MSH-9", message_type)]
        message["detail"] = [{"type": k, "valueString": v} for k, v in details if v]
        entities.append(message)
    if record.operation:
        entities.append(
            {"type": _coding(ENTITY_TYPES, "2", "System Object"), "description": record.operation}
        )
    if entities:
        event["entity"] = entities
    return BuiltEvent(
        id=event_id,
        recorded_us=record.recorded_us,
        type=type_code,
        subtype=record.subtype,
        action=record.action,
        outcome=record.outcome,
        agent=record.agent,
        address=record.address,
        content=orjson.dumps(event),
        patients=tuple(f"Patient/{p}" for p in patients),
        entities=tuple(f"{t}/{i}" for t, i in record.resources),
    )


# -- searching the trail ---------------------------------------------------------------------------

SEARCH_PARAMS: dict[str, tuple[str, str]] = {
    # name -> (type, R4 definition): what the CapabilityStatement lists
    "date": ("date", "http://hl7.org/fhir/SearchParameter/AuditEvent-date"),
    "agent": ("token", "http://hl7.org/fhir/SearchParameter/AuditEvent-agent"),
    "address": ("string", "http://hl7.org/fhir/SearchParameter/AuditEvent-address"),
    "patient": ("reference", "http://hl7.org/fhir/SearchParameter/AuditEvent-patient"),
    "entity": ("reference", "http://hl7.org/fhir/SearchParameter/AuditEvent-entity"),
    "type": ("token", "http://hl7.org/fhir/SearchParameter/AuditEvent-type"),
    "subtype": ("token", "http://hl7.org/fhir/SearchParameter/AuditEvent-subtype"),
    "action": ("token", "http://hl7.org/fhir/SearchParameter/AuditEvent-action"),
    "outcome": ("token", "http://hl7.org/fhir/SearchParameter/AuditEvent-outcome"),
}
_PAGING = ("_count", "_offset", "_format", "_pretty")


class AuditQueryError(ValueError):
    """A search of the trail that cannot be run (unknown parameter, malformed value)."""


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """A search of the trail: every criterion must hold (values of one parameter are alternatives)."""

    after_us: tuple[int, ...] = ()  # recorded >= each
    before_us: tuple[int, ...] = ()  # recorded <= each
    agents: tuple[tuple[str, ...], ...] = ()
    addresses: tuple[tuple[str, ...], ...] = ()
    patients: tuple[tuple[str, ...], ...] = ()  # "Patient/id"
    entities: tuple[tuple[str, ...], ...] = ()  # "Type/id"
    types: tuple[tuple[str, ...], ...] = ()
    subtypes: tuple[tuple[str, ...], ...] = ()
    actions: tuple[tuple[str, ...], ...] = ()
    outcomes: tuple[tuple[int, ...], ...] = ()
    count: int = 20
    offset: int = 0
    used: tuple[tuple[str, str], ...] = ()  # the parameters, for paging links


def _token_values(value: str) -> tuple[str, ...]:
    """Codes of a token parameter (`code`, `system|code`; the system is not kept: codes do not clash)."""
    return tuple(v.rsplit("|", 1)[-1] for v in value.split(",") if v.rsplit("|", 1)[-1])


def _reference_values(value: str, default_type: str | None) -> tuple[str, ...]:
    found = []
    for item in value.split(","):
        parts = [p for p in item.split("/") if p]
        if len(parts) >= 4 and parts[-2] == "_history":
            parts = parts[:-2]
        if len(parts) >= 2:
            found.append(f"{parts[-2]}/{parts[-1]}")
        elif parts and default_type:
            found.append(f"{default_type}/{parts[0]}")
        elif parts:
            raise AuditQueryError(f"{item!r} is not a reference: use Type/id")
    return tuple(found)


def _date_bounds(value: str) -> tuple[int | None, int | None]:
    prefix = value[:2] if value[:2] in ("eq", "ge", "le", "gt", "lt") else "eq"
    text = value[2:] if value[:2] == prefix else value
    try:
        low, high = dates.date_range(text)
    except dates.DateFormatError as exc:
        raise AuditQueryError(f"date: {exc} (use e.g. ge2024-05-01 or lt2024-05-01T12:00:00Z)") from exc
    return {
        "eq": (low, high),
        "ge": (low, None),
        "gt": (high + 1, None),
        "le": (None, high),
        "lt": (None, low - 1),
    }[prefix]


def parse_audit_query(params: Sequence[tuple[str, str]], *, default_count: int, max_count: int) -> AuditQuery:
    """A search of the trail from its parameters; unknown parameters are refused, never ignored."""
    after: list[int] = []
    before: list[int] = []
    lists: dict[str, list[tuple[str, ...]]] = {k: [] for k in SEARCH_PARAMS if k != "date"}
    outcomes: list[tuple[int, ...]] = []
    count, offset = default_count, 0
    used: list[tuple[str, str]] = []
    for key, value in params:
        if key == "_count":
            if not value.isdigit():
                raise AuditQueryError("_count must be a number")
            count = min(int(value), max_count)
            continue
        if key == "_offset":
            if not value.isdigit():
                raise AuditQueryError("_offset must be a number")
            offset = int(value)
            continue
        if key in _PAGING:
            continue
        if key not in SEARCH_PARAMS:
            known = ", ".join([*SEARCH_PARAMS, "_count", "_offset"])
            raise AuditQueryError(f"Unknown search parameter for AuditEvent: {key!r} (known: {known})")
        used.append((key, value))
        if key == "date":
            low, high = _date_bounds(value)
            if low is not None:
                after.append(low)
            if high is not None:
                before.append(high)
        elif key == "patient":
            lists[key].append(_reference_values(value, "Patient"))
        elif key == "entity":
            lists[key].append(_reference_values(value, None))
        elif key == "outcome":
            codes = _token_values(value)
            if not all(c.isdigit() and int(c) in OUTCOMES for c in codes):
                raise AuditQueryError("outcome is one of 0, 4, 8, 12")
            outcomes.append(tuple(int(c) for c in codes))
        elif key == "address":
            lists[key].append(tuple(v for v in value.split(",") if v))
        else:
            lists[key].append(_token_values(value))
    return AuditQuery(
        after_us=tuple(after),
        before_us=tuple(before),
        agents=tuple(lists["agent"]),
        addresses=tuple(lists["address"]),
        patients=tuple(lists["patient"]),
        entities=tuple(lists["entity"]),
        types=tuple(lists["type"]),
        subtypes=tuple(lists["subtype"]),
        actions=tuple(lists["action"]),
        outcomes=tuple(outcomes),
        count=count,
        offset=offset,
        used=tuple(used),
    )


def capability_entry() -> dict[str, Any]:
    """AuditEvent in the CapabilityStatement: read and search, for holders of `audit/events.read`."""
    return {
        "type": "AuditEvent",
        "profile": "http://hl7.org/fhir/StructureDefinition/AuditEvent",
        "documentation": (
            "The gateway's audit trail: one AuditEvent per read, search, write, HL7 v2 message, subscription"
            " delivery attempt and token request. Read-only; needs the scope audit/events.read, granted by"
            " name (no resource scope implies it)."
        ),
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "versioning": "no-version",
        "searchParam": [
            {"name": name, "type": kind, "definition": definition}
            for name, (kind, definition) in SEARCH_PARAMS.items()
        ],
    }
