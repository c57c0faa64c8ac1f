"""The audit trail's pure part: Patients a resource is about, outcomes, the R4 AuditEvent, trail queries."""

from __future__ import annotations

import base64

import orjson
import pytest
from fhir.resources.R4B.auditevent import AuditEvent

from gateway.fhir import dates
from gateway.fhir.audit import (
    AuditQueryError,
    AuditRecord,
    build,
    outcome_of_ack,
    outcome_of_status,
    parse_audit_query,
    patients_in,
    patients_in_query,
    patients_of,
)
from gateway.transports.http.audit_routes import claimed_client, describe


def test_outcomes_follow_http_statuses_and_ack_codes() -> None:
    assert [outcome_of_status(s) for s in (200, 201, 204, 304, 400, 401, 403, 404, 422, 500, 503)] == [
        0, 0, 0, 0, 4, 4, 4, 4, 4, 8, 8,
    ]  # fmt: skip
    assert [outcome_of_ack(c) for c in ("AA", "AE", "AR", "CA", "CE", "CR")] == [0, 4, 8, 0, 4, 8]


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ({"resourceType": "Patient", "id": "p1"}, {"p1"}),
        ({"resourceType": "Observation", "subject": {"reference": "Patient/p2"}}, {"p2"}),
        ({"resourceType": "Observation", "subject": {"reference": "Group/g1"}}, set()),
        ({"resourceType": "AllergyIntolerance", "patient": {"reference": "Patient/p3/_history/2"}}, {"p3"}),
        ({"resourceType": "Task", "for": {"reference": "https://gw.example/fhir/Patient/p4"}}, {"p4"}),
        ({"resourceType": "Coverage", "beneficiary": {"reference": "Patient/p5"}}, {"p5"}),
        ({"resourceType": "Observation", "subject": {"reference": "Patient?identifier=x|1"}}, set()),
        ({"resourceType": "Observation", "subject": {"display": "no reference"}}, set()),
        ({"resourceType": "Organization", "id": "o1"}, set()),
    ],
)
def test_the_patient_a_resource_is_about(resource: dict[str, object], expected: set[str]) -> None:
    assert patients_of(resource) == expected
    assert patients_in(orjson.dumps(resource)) == expected


def test_patients_in_stored_content_with_numbers_orjson_refuses() -> None:
    content = b'{"resourceType":"Observation","valueInteger":123456789012345678901234567890,' + (
        b'"subject":{"reference":"Patient/big"}}'
    )
    assert patients_in(content) == {"big"}
    assert patients_in(b"not json") == set()


def test_patients_a_search_names() -> None:
    assert patients_in_query("Observation", [("patient", "p1"), ("code", "751-8")]) == {"p1"}
    assert patients_in_query("Observation", [("subject", "Patient/p2,Group/g")]) == {"p2"}
    assert patients_in_query("Observation", [("subject", "p3")]) == set()  # a bare subject may be a Group
    assert patients_in_query("Observation", [("subject:Patient", "p4")]) == {"p4"}
    assert patients_in_query("Patient", [("_id", "p5,p6")]) == {"p5", "p6"}
    assert patients_in_query("Observation", [("patient.identifier", "sys|1")]) == set()


def read_record() -> AuditRecord:
    record = AuditRecord(recorded_us=dates.date_range("2024-05-01T12:00:00Z")[0], agent="client-1")
    record.address = "10.0.0.7"
    record.subtype = "search-type"
    record.searched("Observation", [("code", "751-8"), ("patient", "p1")])
    record.saw([orjson.dumps({"resourceType": "Observation", "subject": {"reference": "Patient/p2"}}), None])
    record.touch("Observation", "o1", orjson.dumps({"resourceType": "Observation"}))
    record.finish(0, "HTTP 200")
    return record


def test_a_record_becomes_a_valid_r4_audit_event() -> None:
    built = build(read_record(), "e1", "https://gw.example/fhir")
    event = orjson.loads(built.content)
    AuditEvent.model_validate(event)  # R4B's AuditEvent is R4's
    assert event["recorded"] == "2024-05-01T12:00:00.000000Z"
    assert event["type"]["code"] == "rest" and event["subtype"][0]["code"] == "search-type"
    assert event["action"] == "R" and event["outcome"] == "0"
    assert event["agent"][0]["who"]["identifier"]["value"] == "client-1"
    assert event["agent"][0]["network"] == {"address": "10.0.0.7", "type": "2"}
    (query,) = [e for e in event["entity"] if "query" in e]
    assert base64.b64decode(query["query"]).decode() == "Observation?code=751-8&patient=p1"
    assert built.patients == ("Patient/p1", "Patient/p2")
    assert built.entities == ("Observation/o1",)
    assert (built.type, built.subtype, built.agent, built.outcome) == ("rest", "search-type", "client-1", 0)


@pytest.mark.parametrize(
    ("kind", "subtype", "code", "action"),
    [
        ("login", "110122", "110114", "E"),
        ("import", "R01", "110107", "C"),
        ("export", "event-notification", "110106", "R"),
    ],
)
def test_other_kinds_of_event(kind: str, subtype: str, code: str, action: str) -> None:
    record = AuditRecord(recorded_us=0, kind=kind, subtype=subtype)
    record.message = ("log-1", "MSG-1", "ORU^R01") if kind == "import" else None
    record.finish(4, "failed")
    event = orjson.loads(build(record, "e2", "gw").content)
    AuditEvent.model_validate(event)
    assert (event["type"]["code"], event["action"], event["outcome"]) == (code, action, "4")
    assert event["agent"][0]["who"] == {"display": "unauthenticated"}


def test_rest_actions_follow_the_interaction() -> None:
    actions = {}
    for interaction in (
        "create",
        "read",
        "vread",
        "update",
        "delete",
        "search-type",
        "transaction",
        "operation",
    ):
        actions[interaction] = AuditRecord(recorded_us=0, subtype=interaction).action
    assert actions == {
        "create": "C",
        "read": "R",
        "vread": "R",
        "update": "U",
        "delete": "D",
        "search-type": "R",
        "transaction": "E",
        "operation": "E",
    }


def test_trail_queries() -> None:
    query = parse_audit_query(
        [
            ("date", "ge2024-05-01"),
            ("date", "lt2024-06"),
            ("agent", "c1,c2"),
            ("patient", "p1"),
            ("patient", "Patient/p2"),
            ("entity", "Observation/o1/_history/3"),
            ("type", "http://dicom.nema.org/resources/ontology/DCM|110107"),
            ("outcome", "4,8"),
            ("_count", "5"),
            ("_offset", "10"),
        ],
        default_count=20,
        max_count=100,
    )
    assert query.after_us == (dates.date_range("2024-05-01")[0],)
    assert query.before_us == (dates.date_range("2024-06")[0] - 1,)
    assert query.agents == (("c1", "c2"),)
    assert query.patients == (("Patient/p1",), ("Patient/p2",))
    assert query.entities == (("Observation/o1",),)
    assert query.types == (("110107",),)
    assert query.outcomes == ((4, 8),)
    assert (query.count, query.offset) == (5, 10)
    eq = parse_audit_query([("date", "2024-05-01")], default_count=20, max_count=100)
    assert (eq.after_us, eq.before_us) == (
        (dates.date_range("2024-05-01")[0],),
        (dates.date_range("2024-05-01")[1],),
    )
    assert parse_audit_query([("_count", "5000")], default_count=20, max_count=100).count == 100
    for bad in (("date", "soon"), ("outcome", "3"), ("entity", "o1"), ("name", "x"), ("_count", "x")):
        with pytest.raises(AuditQueryError):
            parse_audit_query([bad], default_count=20, max_count=100)


def test_what_a_route_says_about_a_request() -> None:
    def described(method: str, template: str, params: dict[str, str], query: bytes = b"") -> AuditRecord:
        record = AuditRecord(recorded_us=0)
        describe(record, method, template, params, query)
        return record

    read = described("GET", "/fhir/{rtype}/{rid}", {"rtype": "Observation", "rid": "o1"})
    assert (read.subtype, list(read.resources), read.unresolved) == (
        "read",
        [("Observation", "o1")],
        {("Observation", "o1")},
    )
    patient = described("DELETE", "/fhir/{rtype}/{rid}", {"rtype": "Patient", "rid": "p1"})
    assert (patient.subtype, patient.patients) == ("delete", {"p1"})
    refused = described("GET", "/fhir/{rtype}", {"rtype": "Observation"}, b"patient=p9&code=1")
    assert refused.subtype == "search-type" and refused.queries == [("Observation", "patient=p9&code=1")]
    assert refused.patients == {"p9"}
    assert described(
        "GET", "/fhir/{rtype}/{rid}/_history/{vid}", {"rtype": "T", "rid": "1", "vid": "2"}
    ).subtype == ("vread")
    operation = described("POST", "/fhir/Task/{task_id}/$appeal", {"task_id": "t1"})
    assert (operation.subtype, operation.operation, list(operation.resources)) == (
        "operation",
        "$appeal",
        [("Task", "t1")],
    )
    assert described("POST", "/fhir", {}).subtype == "batch"
    assert described("POST", "/auth/token", {}).kind == "login"
    assert described("POST", "/payer/files", {}).kind == "import"
    log_entry = described("GET", "/hl7v2/messages/{message_id}", {"message_id": "m1"})
    assert (log_entry.operation, log_entry.message) == ("GET /hl7v2/messages/{message_id}", ("m1", "", ""))
    trail = described("GET", "/fhir/AuditEvent", {}, b"patient=p1")
    assert trail.patients == set()  # looking at someone's trail is not about them


def test_the_client_a_token_request_claims() -> None:
    basic = "Basic " + base64.b64encode(b"client%2D1:secret").decode()
    assert claimed_client({}, basic) == "client-1"
    assert claimed_client({"client_id": "c2", "client_secret": "s"}, None) == "c2"
    assert claimed_client({}, "Basic !!!") is None
    assert claimed_client({"client_assertion": "not.a.jwt"}, None) is None
    assert claimed_client({}, None) is None
