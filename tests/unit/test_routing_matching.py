"""SubscriptionIndex: which subscriptions an event's keys satisfy, found without scanning them all."""

from __future__ import annotations

from pathlib import Path

from gateway.fhir.extract import extract
from gateway.routing.evaluators import EVALUATORS
from gateway.routing.filters import index_keys, parse_filters
from gateway.routing.matching import SubscriptionIndex
from gateway.routing.requests import SubscriptionSpec
from gateway.routing.topics import Topic, TopicSet
from tests.factories import lab_observation

TOPICS = TopicSet.load(Path(__file__).resolve().parents[2] / "profiles" / "topics", frozenset(EVALUATORS))


def _topic(topic_id: str) -> Topic:
    topic = TOPICS.by_id(topic_id)
    assert topic is not None
    return topic


ABNORMAL = _topic("abnormal-lab-result")
CRITICAL = _topic("critical-lab-result")


def spec(spec_id: str, *criteria: str, topic: Topic = ABNORMAL) -> SubscriptionSpec:
    return SubscriptionSpec(
        id=spec_id,
        status="active",
        topic=topic,
        filters=tuple(parse_filters(criteria, topic)),
        channel="rest-hook",
        endpoint="https://receiver.example.org/hook",
        content="id-only",
        payload_type="application/fhir+json",
        heartbeat_s=None,
        timeout_s=10,
        max_count=20,
        headers=(),
        secret=None,
    )


def _keys(patient_id: str = "1", code: str = "751-8") -> set[str]:
    return index_keys(extract(lab_observation(patient_id, code=code)))


def _ids(index: SubscriptionIndex, keys: set[str], topic: Topic = ABNORMAL) -> list[str]:
    return [s.id for s in index.match(topic.url, keys)]


INDEX = SubscriptionIndex(
    [
        spec("z-all"),
        spec("a-all"),
        spec("p1", "patient=1"),
        spec("p2", "patient=Patient/2"),
        spec("p1-anc", "patient=1", "code=http://loinc.org|751-8"),  # AND
        spec("p1-hgb", "Observation?patient=1&code=718-7"),
        spec("p1-or-p2", "patient=1,2"),  # OR
        spec("anc-any", "code=751-8"),
        spec("anc-other-system", "code=http://example.org|751-8"),
        # anchored on its single-key code filter, but the patient filter (two keys) fails for patient 1
        spec("anc-p2-p3", "patient=2,3", "code=751-8"),
        spec("lab-anc-p1", "category=laboratory", "code=751-8", "patient=1"),
        spec("critical-all", topic=CRITICAL),
        spec("critical-p1", "patient=1", topic=CRITICAL),
    ]
)


def test_size_and_topics() -> None:
    assert len(INDEX) == 13
    assert INDEX.has_topic(ABNORMAL.url)
    assert INDEX.has_topic(CRITICAL.url)
    assert not INDEX.has_topic(_topic("medication-order").url)
    assert INDEX.match(_topic("medication-order").url, _keys()) == []
    assert set(INDEX.specs) >= {"z-all", "critical-p1"}


def test_patient_1_anc() -> None:
    assert _ids(INDEX, _keys("1", "751-8")) == [
        "a-all",
        "anc-any",
        "lab-anc-p1",
        "p1",
        "p1-anc",
        "p1-or-p2",
        "z-all",
    ]


def test_patient_1_hemoglobin() -> None:
    assert _ids(INDEX, _keys("1", "718-7")) == ["a-all", "p1", "p1-hgb", "p1-or-p2", "z-all"]


def test_patient_2_anc() -> None:
    assert _ids(INDEX, _keys("2", "751-8")) == ["a-all", "anc-any", "anc-p2-p3", "p1-or-p2", "p2", "z-all"]


def test_other_patient_other_code_gets_only_the_unfiltered() -> None:
    assert _ids(INDEX, _keys("9", "2823-3")) == ["a-all", "z-all"]
    assert _ids(INDEX, set()) == ["a-all", "z-all"]


def test_topics_are_kept_apart() -> None:
    assert _ids(INDEX, _keys("1"), CRITICAL) == ["critical-all", "critical-p1"]
    assert _ids(INDEX, _keys("2"), CRITICAL) == ["critical-all"]


def test_extra_event_keys_count() -> None:
    # keys an evaluator adds (e.g. a monitored drug) are matched like index keys
    monitoring = _topic("medication-monitoring")
    index = SubscriptionIndex([spec("clz", "medication=clozapine-anc", topic=monitoring)])
    assert _ids(index, _keys() | {"medication=*|clozapine-anc"}, monitoring) == ["clz"]
    assert _ids(index, _keys() | {"medication=*|lithium-level"}, monitoring) == []


def test_empty_index() -> None:
    index = SubscriptionIndex([])
    assert len(index) == 0
    assert not index.has_topic(ABNORMAL.url)
    assert index.match(ABNORMAL.url, _keys()) == []


def test_ten_thousand_filtered_subscriptions() -> None:
    specs = [spec(f"s{i:05d}", f"patient=Patient/{i}", "code=751-8") for i in range(10_000)]
    specs.append(spec("wrong-code", "patient=Patient/4242", "code=718-7"))
    index = SubscriptionIndex(specs)
    assert len(index) == 10_001
    assert _ids(index, _keys("4242", "751-8")) == ["s04242"]
    assert _ids(index, _keys("4242", "718-7")) == ["wrong-code"]
    assert _ids(index, _keys("10000", "751-8")) == []
    both = _keys("17", "751-8") | {"patient=Patient/9999"}
    assert _ids(index, both) == ["s00017", "s09999"]
