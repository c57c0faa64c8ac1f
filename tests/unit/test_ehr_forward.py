"""Forwarding to an upstream: the transaction Bundle (identifiers, references, conditional URLs), config."""

from __future__ import annotations

import pytest

from gateway.ehr import forward
from gateway.ehr.upstreams import UpstreamConfigError, parse_upstreams

BASE = "https://gw.example/fhir"
MRN = {"system": "urn:oid:2.16.840.1.113883.19.5", "value": "MRN-1"}


def patient() -> dict[str, object]:
    return {"resourceType": "Patient", "id": "p1", "meta": {"versionId": "3"}, "identifier": [MRN]}


def observation(**extra: object) -> dict[str, object]:
    return {
        "resourceType": "Observation",
        "id": "o1",
        "meta": {"versionId": "2", "lastUpdated": "2024-03-01T00:00:00Z", "tag": [{"code": "t"}]},
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "basedOn": [{"reference": "ServiceRequest/s1"}],
        "valueQuantity": {"value": 1.2},
        **extra,
    }


def test_a_resource_without_identifier_gets_ours_and_references_point_at_entries() -> None:
    bundle = forward.forward_bundle(observation(), patient(), BASE)
    assert bundle["type"] == "transaction"
    p_entry, o_entry = bundle["entry"]
    assert p_entry["request"] == {
        "method": "PUT",
        "url": "Patient?identifier=urn:oid:2.16.840.1.113883.19.5%7CMRN-1",
    }
    assert o_entry["request"]["url"] == (
        "Observation?identifier=https://specialty-gateway.org/fhir/sid/resource-id%7CObservation/o1"
    )
    obs = o_entry["resource"]
    assert obs["identifier"] == [{"system": forward.RESOURCE_ID_SYSTEM, "value": "Observation/o1"}]
    assert obs["subject"] == {"reference": p_entry["fullUrl"]}
    assert p_entry["fullUrl"].startswith("urn:uuid:")
    # Not in the Bundle: a logical reference, never a dangling literal one.
    assert obs["basedOn"] == [
        {
            "type": "ServiceRequest",
            "identifier": {"system": forward.RESOURCE_ID_SYSTEM, "value": "ServiceRequest/s1"},
        }
    ]
    assert "id" not in obs and obs["meta"] == {"tag": [{"code": "t"}], "source": f"{BASE}/Observation/o1"}
    assert "id" not in p_entry["resource"] and p_entry["resource"]["identifier"] == [MRN]


def test_an_own_identifier_is_used_and_the_original_is_untouched() -> None:
    lab_id = {"system": "urn:lab", "value": "F1-1"}
    original = observation(identifier=[{"value": "no system"}, lab_id])
    bundle = forward.forward_bundle(original, None, BASE)
    (entry,) = bundle["entry"]
    assert entry["request"]["url"] == "Observation?identifier=urn:lab%7CF1-1"
    assert entry["resource"]["identifier"] == [{"value": "no system"}, lab_id]  # none added
    assert entry["resource"]["subject"] == {
        "type": "Patient",
        "identifier": {"system": forward.RESOURCE_ID_SYSTEM, "value": "Patient/p1"},
    }
    assert original["id"] == "o1" and original["subject"] == {"reference": "Patient/p1"}


def test_the_same_event_gives_the_same_bundle() -> None:
    assert forward.forward_bundle(observation(), patient(), BASE) == forward.forward_bundle(
        observation(), patient(), BASE
    )


def test_values_in_conditional_urls_are_escaped() -> None:
    url = forward.conditional_url("Task", "urn:x", "a&b c|d")
    assert url == "Task?identifier=urn:x%7Ca%26b%20c%7Cd"


def test_patient_reference_and_loops() -> None:
    task = {"resourceType": "Task", "id": "t", "for": {"reference": "Patient/p9"}}
    assert forward.patient_reference(task) == "Patient/p9"
    assert forward.patient_reference({"resourceType": "Task", "id": "t"}) is None
    pulled = observation(meta={"source": "https://ehr.example/fhir/Observation/9"})
    assert forward.came_from(pulled, "https://ehr.example/fhir/")
    assert not forward.came_from(pulled, "https://ehr.example/fhir2")
    assert not forward.came_from(observation(), "https://ehr.example/fhir")


@pytest.mark.parametrize(("status", "permanent"), [(400, True), (422, True), (408, False), (429, False),
                                                    (500, False), (None, False), (200, False)])  # fmt: skip
def test_which_refusals_are_permanent(status: int | None, permanent: bool) -> None:
    assert forward.permanent(status) is permanent


def test_config_forward_only_upstream_and_bad_entries() -> None:
    (up,) = parse_upstreams(
        {
            "upstreams": [
                {"name": "ehr", "base_url": "https://e/fhir", "forward": {"resources": ["Observation"]}}
            ]
        }
    )
    assert up.resources == [] and up.forward is not None and up.forward.resources == ["Observation"]
    with pytest.raises(UpstreamConfigError, match="needs resources to pull, forward, or both"):
        parse_upstreams({"upstreams": [{"name": "ehr", "base_url": "https://e/fhir"}]})
    with pytest.raises(UpstreamConfigError, match="not resource types"):
        parse_upstreams(
            {"upstreams": [{"name": "ehr", "base_url": "https://e/fhir", "forward": {"resources": ["obs"]}}]}
        )


def test_a_deletion_is_a_conditional_delete_on_the_last_versions_identifier() -> None:
    bundle = forward.delete_bundle(observation(identifier=[{"system": "urn:lab", "value": "A|1"}]))
    assert bundle == {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": "Observation?identifier=urn:lab%7CA%7C1"}}],
    }
    assert forward.only_deletes(bundle)
    ours = forward.delete_bundle(observation())  # no identifier: the one the forwarded copy was given
    assert ours["entry"][0]["request"]["url"] == forward.conditional_url(
        "Observation", forward.RESOURCE_ID_SYSTEM, "Observation/o1"
    )
    assert not forward.only_deletes(forward.forward_bundle(observation(), None, BASE))
    assert not forward.only_deletes({"resourceType": "Bundle", "type": "transaction", "entry": []})


@pytest.mark.parametrize(
    ("status", "deletion", "delivered"),
    [
        (200, False, True),
        (204, True, True),
        (404, True, True),
        (410, True, True),
        (404, False, False),
        (410, False, False),
        (429, True, False),
        (500, True, False),
        (None, True, False),
    ],
)
def test_not_found_delivers_a_deletion_only(status: int | None, deletion: bool, delivered: bool) -> None:
    assert forward.delivered(status, deletion) is delivered


def test_the_forward_subscription_is_valid_r4_with_the_backport_channel_type() -> None:
    from gateway.fhir.validation import Validator
    from gateway.routing.requests import channel_type_of

    subscription = forward.forward_subscription("ehr", "https://ehr.example/fhir")
    assert "type" not in subscription["channel"]  # R4's required value set has no code for it
    errors = [i for i in Validator().validate(subscription) if i.is_error]
    assert errors == []
    assert channel_type_of(subscription["channel"]) == "fhir-forward"
    assert channel_type_of({"type": "rest-hook"}) == "rest-hook"
    other = {"_type": {"extension": [{**subscription["channel"]["_type"]["extension"][0]}]}}
    other["_type"]["extension"][0]["valueCoding"] = {"system": "urn:other", "code": "fhir-forward"}
    assert channel_type_of(other) == "urn:other|fhir-forward"  # someone else's code: not ours


def test_the_forwarding_evaluator_fires_on_deletions_too() -> None:
    from gateway.routing.evaluators import Change, resource_written

    deleted = Change("Observation", "o1", 3, observation(), None)
    assert deleted.interaction == "delete"
    assert len(resource_written(deleted, None)) == 1  # type: ignore[arg-type]  # it reads no context
