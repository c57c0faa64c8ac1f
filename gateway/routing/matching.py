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
    unfiltered: dict[str, SubscriptionSpec] = field(default_factory=dict)
    by_key: dict[str, dict[str, SubscriptionSpec]] = field(default_factory=dict)

    def add(self, spec: SubscriptionSpec) -> None:
        for key in _anchor(spec):
            self.by_key.setdefault(key, {})[spec.id] = spec
        if not spec.filters:
            self.unfiltered[spec.id] = spec

    def remove(self, spec: SubscriptionSpec) -> None:
        self.unfiltered.pop(spec.id, None)
        for key in _anchor(spec):
            found = self.by_key.get(key)
            if found is not None:
                found.pop(spec.id, None)
                if not found:
                    del self.by_key[key]


def _anchor(spec: SubscriptionSpec) -> frozenset[str]:
    """The keys a subscription is filed under: those of its filter with the fewest alternatives."""
    if not spec.filters:
        return frozenset()
    return min(spec.filters, key=lambda f: len(f.keys)).keys


class SubscriptionIndex:
    """Subscriptions by topic and anchor key; `add`/`remove` keep it current without a rebuild."""

    def __init__(self, specs: Iterable[SubscriptionSpec] = ()) -> None:
        self._topics: dict[str, _TopicIndex] = {}
        self.specs: dict[str, SubscriptionSpec] = {}
        for spec in specs:
            self.add(spec)

    def __len__(self) -> int:
        return len(self.specs)

    def add(self, spec: SubscriptionSpec) -> None:
        self.remove(spec.id)
        self.specs[spec.id] = spec
        self._topics.setdefault(spec.topic.url, _TopicIndex()).add(spec)

    def remove(self, sub_id: str) -> None:
        spec = self.specs.pop(sub_id, None)
        if spec is None:
            return
        index = self._topics[spec.topic.url]
        index.remove(spec)
        if not index.unfiltered and not index.by_key:
            del self._topics[spec.topic.url]

    def has_topic(self, topic_url: str) -> bool:
        return topic_url in self._topics

    def match(self, topic_url: str, keys: set[str] | frozenset[str]) -> list[SubscriptionSpec]:
        """Subscriptions to `topic_url` whose every filter is satisfied by `keys`, in id order."""
        index = self._topics.get(topic_url)
        if index is None:
            return []
        found: dict[str, SubscriptionSpec] = dict(index.unfiltered)
        for key in keys:
            for spec in index.by_key.get(key, {}).values():
                if spec.id not in found and matches(spec.filters, keys):
                    found[spec.id] = spec
        return [found[i] for i in sorted(found)]
