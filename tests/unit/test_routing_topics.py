"""Subscription topics loaded from profiles/topics/*.json, and what makes a topic file unusable."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.routing.evaluators import EVALUATORS
from gateway.routing.topics import EVALUATOR_EXTENSION, TopicError, TopicSet, parse_topic

ROOT = Path(__file__).resolve().parents[2]
TOPICS_DIR = ROOT / "profiles" / "topics"
KNOWN = frozenset(EVALUATORS)
BASE = "https://specialty-gateway.org/fhir/SubscriptionTopic"
CORE = "http://hl7.org/fhir/StructureDefinition"

REAL_TOPICS = {
    "alert-changed": ("Task",),
    "monitoring-overdue": ("Task",),
    "abnormal-lab-result": ("Observation",),
    "critical-lab-result": ("Observation",),
    "medication-monitoring": ("Observation",),
    "medication-order": ("MedicationRequest",),
    "pa-status-changed": ("Task",),
    "pa-expiring": (),  # timer-driven: no resource trigger
    "pa-overdue": (),  # timer-driven too
    "patient-identity-conflict": ("Task",),
    # every new version of the types another gateway pulls (gateway/service/ehrpull/subscriber.py)
    "resource-changed": (
        "Patient",
        "Observation",
        "DiagnosticReport",
        "MedicationRequest",
        "MedicationDispense",
    ),
}


@pytest.fixture(scope="module")
def topics() -> TopicSet:
    return TopicSet.load(TOPICS_DIR, KNOWN)


def _topic_json(topic_id: str, evaluator: str = "abnormal-lab-result", **extra: Any) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "SubscriptionTopic",
        "id": topic_id,
        "url": f"{BASE}/{topic_id}",
        "status": "active",
        "extension": [{"url": EVALUATOR_EXTENSION, "valueCode": evaluator}],
        "resourceTrigger": [{"resource": f"{CORE}/Observation", "supportedInteraction": ["create"]}],
        "canFilterBy": [{"resource": f"{CORE}/Observation", "filterParameter": "patient"}],
    }
    resource.update(extra)
    return resource


def _write(directory: Path, name: str, content: dict[str, Any] | str) -> Path:
    path = directory / name
    path.write_text(content if isinstance(content, str) else json.dumps(content), encoding="utf-8")
    return path


# --- the real topics ----------------------------------------------------------------------------------


def test_the_real_topics_load(topics: TopicSet) -> None:
    assert sorted(t.id for t in topics.topics) == sorted(REAL_TOPICS)
    for topic in topics.topics:
        assert topic.url == f"{BASE}/{topic.id}"
        assert topic.evaluator == ("resource-written" if topic.id == "resource-changed" else topic.id)
        assert topic.evaluator in EVALUATORS
        assert topic.filters, f"{topic.id} offers no filters"
        assert any(f.parameter == "patient" for f in topic.filters)
        assert topic.resource_types == REAL_TOPICS[topic.id]
        assert topic.resource["resourceType"] == "SubscriptionTopic"


def test_real_topic_details(topics: TopicSet) -> None:
    monitoring = topics.by_id("medication-monitoring")
    assert monitoring is not None
    assert monitoring.interactions == frozenset({"create", "update"})
    assert {f.parameter for f in monitoring.filters} == {"patient", "code", "category", "medication"}
    assert all(f.resource == "Observation" for f in monitoring.filters)
    assert monitoring.includes == ("Observation:subject",)

    expiring = topics.by_id("pa-expiring")
    assert expiring is not None
    assert expiring.resource_types == ()
    assert expiring.interactions == frozenset()
    assert expiring.focus_types == ("Task",)  # from the eventTrigger, not a resource trigger


def test_filter_named(topics: TopicSet) -> None:
    order = topics.by_id("medication-order")
    assert order is not None
    status = order.filter_named("MedicationRequest", "status")
    assert status is not None and status.parameter == "status"
    assert order.filter_named(None, "status") == status
    assert order.filter_named("Observation", "status") is None
    assert order.filter_named("MedicationRequest", "category") is None


def test_by_url_ignores_a_version_suffix(topics: TopicSet) -> None:
    url = f"{BASE}/critical-lab-result"
    topic = topics.by_url(url)
    assert topic is not None and topic.id == "critical-lab-result"
    assert topics.by_url(f"{url}|1.0.0") is topic
    assert topics.by_url(f"{url}|2") is topic
    assert topics.by_url(f"{BASE}/critical-lab") is None
    assert topics.by_url(f"{BASE}/no-such-topic|1.0.0") is None


def test_by_id(topics: TopicSet) -> None:
    topic = topics.by_id("pa-status-changed")
    assert topic is not None and topic.url.endswith("/pa-status-changed")
    assert topics.by_id("nope") is None


def test_for_type(topics: TopicSet) -> None:
    assert sorted(t.id for t in topics.for_type("Observation")) == [
        "abnormal-lab-result",
        "critical-lab-result",
        "medication-monitoring",
        "resource-changed",
    ]
    assert [t.id for t in topics.for_type("MedicationRequest")] == ["medication-order", "resource-changed"]
    # pa-expiring is timer-driven: writes of Tasks fire pa-status-changed and identity reviews only
    assert sorted(t.id for t in topics.for_type("Task")) == [
        "alert-changed",
        "monitoring-overdue",
        "pa-status-changed",
        "patient-identity-conflict",
    ]
    assert [t.id for t in topics.for_type("Patient")] == ["resource-changed"]
    assert topics.for_type("Coverage") == []


def test_missing_directory_means_no_topics(tmp_path: Path) -> None:
    assert TopicSet.load(tmp_path / "absent", KNOWN).topics == ()


def test_a_minimal_topic_loads(tmp_path: Path) -> None:
    _write(tmp_path, "a.json", _topic_json("a"))
    (topic,) = TopicSet.load(tmp_path, KNOWN).topics
    assert (topic.id, topic.title, topic.evaluator) == ("a", "a", "abnormal-lab-result")
    assert topic.resource_types == ("Observation",)
    assert [(f.resource, f.parameter, f.modifiers) for f in topic.filters] == [("Observation", "patient", ())]


# --- unusable topic files -----------------------------------------------------------------------------


def test_unknown_evaluator_names_the_file(tmp_path: Path) -> None:
    _write(tmp_path, "good.json", _topic_json("good"))
    bad = _write(tmp_path, "bad.json", _topic_json("bad", evaluator="no-such-evaluator"))
    with pytest.raises(TopicError) as exc:
        TopicSet.load(tmp_path, KNOWN)
    assert str(bad) in str(exc.value)
    assert "no-such-evaluator" in str(exc.value)


def test_bad_json_names_the_file(tmp_path: Path) -> None:
    bad = _write(tmp_path, "broken.json", '{"resourceType": "SubscriptionTopic",')
    with pytest.raises(TopicError) as exc:
        TopicSet.load(tmp_path, KNOWN)
    assert str(bad) in str(exc.value)
    assert "JSON" in str(exc.value)


@pytest.mark.parametrize(
    "extensions",
    [
        [],
        [{"url": "http://example.org/other", "valueCode": "abnormal-lab-result"}],
        [{"url": EVALUATOR_EXTENSION, "valueString": 3}],
        [
            {"url": EVALUATOR_EXTENSION, "valueCode": "abnormal-lab-result"},
            {"url": EVALUATOR_EXTENSION, "valueCode": "critical-lab-result"},
        ],
    ],
    ids=["none", "other-extension", "not-a-code", "two"],
)
def test_missing_or_ambiguous_evaluator_extension_names_the_file(
    tmp_path: Path, extensions: list[dict[str, Any]]
) -> None:
    bad = _write(tmp_path, "x.json", _topic_json("x", extension=extensions))
    with pytest.raises(TopicError) as exc:
        TopicSet.load(tmp_path, KNOWN)
    assert str(bad) in str(exc.value)
    assert EVALUATOR_EXTENSION in str(exc.value)


def test_wrong_resource_type_and_missing_url_name_the_file(tmp_path: Path) -> None:
    bad = _write(tmp_path, "x.json", _topic_json("x", resourceType="Subscription"))
    with pytest.raises(TopicError, match="resourceType") as exc:
        TopicSet.load(tmp_path, KNOWN)
    assert str(bad) in str(exc.value)

    no_url = _topic_json("y")
    del no_url["url"]
    bad.unlink()
    missing = _write(tmp_path, "y.json", no_url)
    with pytest.raises(TopicError, match="url") as exc:
        TopicSet.load(tmp_path, KNOWN)
    assert str(missing) in str(exc.value)


def test_duplicate_urls_are_refused(tmp_path: Path) -> None:
    first = _topic_json("dup")
    second = copy.deepcopy(first)
    second["id"] = "dup-2"  # different id, same url
    _write(tmp_path, "one.json", first)
    _write(tmp_path, "two.json", second)
    with pytest.raises(TopicError, match="already used by") as exc:
        TopicSet.load(tmp_path, KNOWN)
    assert str(tmp_path / "two.json") in str(exc.value)


def test_duplicate_urls_name_the_file_and_the_url(tmp_path: Path) -> None:
    first = _topic_json("dup")
    second = copy.deepcopy(first)
    second["id"] = "dup-2"
    _write(tmp_path, "one.json", first)
    later = _write(tmp_path, "two.json", second)
    with pytest.raises(TopicError) as exc:
        TopicSet.load(tmp_path, KNOWN)
    assert str(later) in str(exc.value)
    assert first["url"] in str(exc.value)


def test_parse_topic_uses_the_where_label() -> None:
    with pytest.raises(TopicError, match=r"^somewhere\.json: "):
        parse_topic({"resourceType": "Patient"}, "somewhere.json")
