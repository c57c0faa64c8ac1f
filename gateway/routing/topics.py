"""Subscription topics as data: R4B SubscriptionTopic JSON files under `profiles/topics/`.

Each file is served as it is (`GET /fhir/SubscriptionTopic/...`) and says what a subscriber may ask for:
the resource and interactions that trigger it, the filters it accepts (`canFilterBy`) and what a
notification carries (`notificationShape`). Which events fire is decided by the evaluator the topic names
in the `topic-evaluator` extension (see `gateway.routing.evaluators`); thresholds live in `mappings/`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.types import JSON

GATEWAY_FHIR = "https://specialty-gateway.org/fhir"
EVALUATOR_EXTENSION = f"{GATEWAY_FHIR}/StructureDefinition/topic-evaluator"
_CORE_SD = "http://hl7.org/fhir/StructureDefinition/"


class TopicError(ValueError):
    """A topic file that cannot be used; the message names the file."""


@dataclass(frozen=True, slots=True)
class TopicFilter:
    resource: str  # short type name
    parameter: str
    modifiers: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Topic:
    url: str
    id: str
    title: str
    evaluator: str
    resource_types: tuple[str, ...]  # types whose writes may fire it (empty: timer-driven)
    interactions: frozenset[str]
    filters: tuple[TopicFilter, ...]
    includes: tuple[str, ...]  # notificationShape.include, e.g. "Observation:subject"
    resource: JSON  # the SubscriptionTopic as loaded

    @property
    def focus_types(self) -> tuple[str, ...]:
        """Types a notification's focus may have: the trigger's resources, or the event's."""
        if self.resource_types:
            return self.resource_types
        return tuple(_short(t["resource"]) for t in self.resource.get("eventTrigger", []) if "resource" in t)

    def filter_named(self, resource_type: str | None, parameter: str) -> TopicFilter | None:
        for f in self.filters:
            if f.parameter == parameter and (resource_type is None or resource_type == f.resource):
                return f
        return None


def _short(resource: str) -> str:
    return resource.removeprefix(_CORE_SD)


def parse_topic(resource: JSON, where: str = "topic") -> Topic:
    if resource.get("resourceType") != "SubscriptionTopic":
        raise TopicError(f"{where}: resourceType must be SubscriptionTopic")
    url, topic_id = resource.get("url"), resource.get("id")
    if not isinstance(url, str) or not isinstance(topic_id, str):
        raise TopicError(f"{where}: url and id are required")
    evaluators = [
        e.get("valueCode") for e in resource.get("extension", []) if e.get("url") == EVALUATOR_EXTENSION
    ]
    if len(evaluators) != 1 or not isinstance(evaluators[0], str):
        raise TopicError(f"{where}: exactly one {EVALUATOR_EXTENSION} extension (valueCode) is required")
    triggers: list[Any] = resource.get("resourceTrigger", [])
    filters = tuple(
        TopicFilter(_short(f.get("resource", "")), f["filterParameter"], tuple(f.get("modifier", [])))
        for f in resource.get("canFilterBy", [])
        if "filterParameter" in f
    )
    return Topic(
        url=url,
        id=topic_id,
        title=resource.get("title", topic_id),
        evaluator=evaluators[0],
        resource_types=tuple(_short(t["resource"]) for t in triggers if "resource" in t),
        interactions=frozenset(i for t in triggers for i in t.get("supportedInteraction", [])),
        filters=filters,
        includes=tuple(
            i for shape in resource.get("notificationShape", []) for i in shape.get("include", [])
        ),
        resource=resource,
    )


@dataclass(frozen=True)
class TopicSet:
    topics: tuple[Topic, ...]

    @classmethod
    def load(cls, directory: Path, known_evaluators: frozenset[str]) -> TopicSet:
        """Every `*.json` under `directory`; a missing directory means no topics."""
        topics: list[Topic] = []
        seen: dict[str, Path] = {}
        if directory.is_dir():
            for path in sorted(directory.glob("*.json")):
                try:
                    resource = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError) as exc:
                    raise TopicError(f"{path}: not readable JSON ({exc})") from exc
                topic = parse_topic(resource, str(path))
                if topic.evaluator not in known_evaluators:
                    raise TopicError(
                        f"{path}: unknown evaluator {topic.evaluator!r}"
                        f" (known: {', '.join(sorted(known_evaluators))})"
                    )
                if topic.url in seen:
                    raise TopicError(f"{path}: url {topic.url} is already used by {seen[topic.url]}")
                seen[topic.url] = path
                topics.append(topic)
        return cls(tuple(topics))

    def by_url(self, url: str) -> Topic | None:
        for topic in self.topics:
            if topic.url == url or topic.url.split("|")[0] == url.split("|")[0]:
                return topic
        return None

    def by_id(self, topic_id: str) -> Topic | None:
        return next((t for t in self.topics if t.id == topic_id), None)

    def for_type(self, resource_type: str) -> list[Topic]:
        return [t for t in self.topics if resource_type in t.resource_types]
