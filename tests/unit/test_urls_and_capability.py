"""Bundle entry URLs and the CapabilityStatement."""

from __future__ import annotations

import pytest
from fhir.resources.R4B.capabilitystatement import CapabilityStatement

from gateway.exceptions import BadRequest, NotFound
from gateway.fhir.capability import capability_statement
from gateway.fhir.searchparams import RESOURCE_TYPES, params_for
from gateway.fhir.urls import parse_target


@pytest.mark.parametrize(
    ("method", "url", "kind"),
    [
        ("GET", "Patient/1", "read"),
        ("GET", "Patient/1/_history/2", "vread"),
        ("GET", "Patient/1/_history", "history-instance"),
        ("GET", "Patient/_history", "history-type"),
        ("GET", "Patient?name=x", "search"),
        ("POST", "Patient", "create"),
        ("PUT", "Patient/1", "update"),
        ("PUT", "Patient?identifier=x", "conditional-update"),
        ("DELETE", "Patient/1", "delete"),
        ("DELETE", "Patient?identifier=x", "conditional-delete"),
        ("GET", "https://gw.example/fhir/Patient/1", "read"),
    ],
)
def test_entry_urls(method: str, url: str, kind: str) -> None:
    assert parse_target(method, url, ("https://gw.example/fhir",)).kind == kind


def test_unknown_types_and_malformed_urls() -> None:
    with pytest.raises(NotFound):
        parse_target("GET", "Spaceship/1")
    with pytest.raises(BadRequest):
        parse_target("PUT", "Patient")  # conditional update without criteria
    with pytest.raises(BadRequest):
        parse_target("GET", "Patient/1/_history/2/x")


def test_capability_statement_is_valid_r4_and_lists_only_what_is_served() -> None:
    statement = capability_statement(
        base_url="https://gw.example/fhir",
        version="0",
        token_url="https://gw.example/auth/token",
        profiles_for=lambda t: [],
        topic_urls=["https://gw.example/fhir/SubscriptionTopic/t1"],
    )
    CapabilityStatement.model_validate(statement)
    resources = statement["rest"][0]["resource"]
    # The store's types, the audit trail and the Measures (read and search only: not in the store).
    assert [r["type"] for r in resources] == [*RESOURCE_TYPES, "AuditEvent", "Measure"]
    audit, measure = resources[-2:]
    assert {i["code"] for i in audit["interaction"]} == {"read", "search-type"}
    assert {i["code"] for i in measure["interaction"]} == {"read", "search-type"}
    assert [o["name"] for o in measure["operation"]] == ["evaluate-measure"]
    subscription = next(r for r in resources if r["type"] == "Subscription")
    assert [e["valueCanonical"] for e in subscription["extension"]] == [
        "https://gw.example/fhir/SubscriptionTopic/t1"
    ]
    assert {o["name"] for o in subscription["operation"]} == {"status", "events", "get-ws-binding-token"}
    patient = next(r for r in resources if r["type"] == "Patient")
    assert {"everything", "match-pharmacist", "timeline"} <= {o["name"] for o in patient["operation"]}
    task = next(r for r in resources if r["type"] == "Task")
    assert {p["name"] for p in task["searchParam"]} == {"_id", "_lastUpdated", *params_for("Task")}
    assert "patch" not in {i["code"] for r in resources for i in r["interaction"]}
