"""Deletions upstream read from its history (gateway/ehr/deletions.py): which entries are deletions, newest
first per id, the checkpoint keys, and the `deletions:` setting."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from gateway.ehr import deletions
from gateway.ehr.upstreams import UpstreamConfigError, parse_upstreams


def entry(
    method: str | None, url: str, *, resource: bool = True, status: str = "200 OK"
) -> dict[str, object]:
    out: dict[str, object] = {"fullUrl": f"https://ehr.example/fhir/{url}", "response": {"status": status}}
    if method is not None:
        out["request"] = {"method": method, "url": url}
    if resource:
        rtype, rid = url.split("/")[:2]
        out["resource"] = {"resourceType": rtype, "id": rid, "meta": {"lastUpdated": "2026-01-01T00:00:00Z"}}
    return out


def test_deletions_newest_first_per_id() -> None:
    seen: set[str] = set()
    page1 = {
        "entry": [
            entry("PUT", "Observation/a"),  # created again after its deletion below: stays
            entry("DELETE", "Observation/b", resource=False),
            entry("DELETE", "Observation/c/_history/4", resource=False),
            entry("DELETE", "Patient/p", resource=False),  # another type: not this read's
        ]
    }
    page2 = {
        "entry": [
            entry("DELETE", "Observation/a", resource=False),
            entry("PUT", "Observation/b"),  # older than its deletion
            entry(None, "Observation/d", resource=False, status="410 Gone"),  # no request: by status
        ]
    }
    assert deletions.deleted_ids(page1, "Observation", seen) == ["b", "c"]
    assert deletions.deleted_ids(page2, "Observation", seen) == ["d"]


def test_entry_time_and_checkpoint_keys() -> None:
    deleted = {"request": {"method": "DELETE", "url": "Observation/x"}, "response": {"lastModified": "T1"}}
    assert deletions.entry_time(deleted) == "T1"
    assert deletions.entry_time(entry("PUT", "Observation/y")) == "2026-01-01T00:00:00Z"
    assert deletions.deletion_type("Observation#deleted") == "Observation"
    assert deletions.deletion_type("Observation") is None
    assert deletions.first_since(datetime(2026, 3, 1, 12, 0, tzinfo=UTC)) == "2026-03-01T11:55:00.000Z"
    assert deletions.history_params("T", 50) == [("_since", "T"), ("_count", "50")]


def test_the_deletions_setting() -> None:
    base = {"name": "ehr", "base_url": "https://ehr.example/fhir", "resources": ["Patient", "Observation"]}
    (plain,) = parse_upstreams({"upstreams": [base]})
    assert deletions.poll_keys(plain) == ["Patient", "Observation"]
    (followed,) = parse_upstreams({"upstreams": [{**base, "deletions": "history"}]})
    assert deletions.poll_keys(followed) == [
        "Patient",
        "Observation",
        "Patient#deleted",
        "Observation#deleted",
    ]
    with pytest.raises(UpstreamConfigError, match="deletions"):
        parse_upstreams({"upstreams": [{**base, "deletions": "search"}]})
    forward_only = {"name": "ehr", "base_url": "https://ehr.example/fhir", "forward": {"resources": ["Task"]}}
    with pytest.raises(UpstreamConfigError, match="deletions needs resources to pull"):
        parse_upstreams({"upstreams": [{**forward_only, "deletions": "history"}]})
