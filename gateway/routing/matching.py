"""Finding the subscriptions an event matches without looking at every subscription.

Per topic, each subscription is filed under the keys of its most selective filter (or among the
unfiltered ones). An event looks up its own keys, so the work per event grows with the number of keys
it has and the number of subscriptions it matches, not with the number of subscriptions.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from gateway.routing.filters import matches
from gateway.routing.requests import SubscriptionSpec


@dataclass
class _TopicIndex:
    unfiltered: list[SubscriptionSpec] = field(default_factory=list)
    by_key: dict[str, list[SubscriptionSpec]] = field(default_factory=dict)

    def add(self, spec: SubscriptionSpec) -> None:
        if not spec.filters:
            self.unfiltered.append(spec)
            return
        anchor = min(spec.filters, key=lambda f: len(f.keys))
        for key in anchor.keys:
            self.by_key.setdefault(key, []).append(spec)


class SubscriptionIndex:
    """Immutable once built: the registry swaps in a new index when subscriptions change."""

    def __init__(self, specs: Iterable[SubscriptionSpec]) -> None:
        self._topics: dict[str, _TopicIndex] = {}
        self.specs: dict[str, SubscriptionSpec] = {}
        for spec in specs:
            self.specs[spec.id] = spec
            self._topics.setdefault(spec.topic.url, _TopicIndex()).add(spec)

    def __len__(self) -> int:
        return len(self.specs)

    def has_topic(self, topic_url: str) -> bool:
        return topic_url in self._topics

    def match(self, topic_url: str, keys: set[str] | frozenset[str]) -> list[SubscriptionSpec]:
        """Subscriptions to `topic_url` whose every filter is satisfied by `keys`, in id order."""
        index = self._topics.get(topic_url)
        if index is None:
            return []
        found: dict[str, SubscriptionSpec] = {s.id: s for s in index.unfiltered}
        for key in keys:
            for spec in index.by_key.get(key, ()):
                if spec.id not in found and matches(spec.filters, keys):
                    found[spec.id] = spec
        return [found[i] for i in sorted(found)]
