"""Terminology for profiles: ValueSet expansion over the CodeSystems and ValueSets shipped with them.

A binding is compiled into the frozenset of (system, code) pairs its value set expands to, so checking a code
at run time is a set lookup. Only what can be expanded completely from the shipped resources is accepted
(no compose filters, no implicit "all of a system" unless that CodeSystem is shipped in full). It imports
nothing from its siblings.
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.types import JSON


class Terminology:
    """ValueSet expansion over the shipped CodeSystems; expansions are cached (they never change)."""

    def __init__(self, value_sets: dict[str, JSON], code_systems: dict[str, JSON]) -> None:
        self.value_sets = value_sets
        self.code_systems = code_systems
        self._cache: dict[str, frozenset[tuple[str | None, str]]] = {}

    def expand(self, url: str, seen: frozenset[str] = frozenset()) -> frozenset[tuple[str | None, str]]:
        """(system, code) pairs of a value set; KeyError if unknown, ValueError if not expandable here."""
        url = url.split("|", 1)[0]
        if url in self._cache:
            return self._cache[url]
        if url in seen:
            raise ValueError(f"ValueSet {url} includes itself")
        vs = self.value_sets[url]
        compose = vs.get("compose")
        if isinstance(compose, dict):
            pairs = self._union(compose.get("include", []), url, seen | {url})
            pairs -= self._union(compose.get("exclude", []), url, seen | {url})
        elif isinstance(vs.get("expansion"), dict):
            pairs = set(_flatten_contains(vs["expansion"].get("contains", [])))
        else:
            raise ValueError(f"ValueSet {url} has neither compose nor expansion")
        self._cache[url] = frozenset(pairs)
        return self._cache[url]

    def _union(self, parts: Iterable[JSON], url: str, seen: frozenset[str]) -> set[tuple[str | None, str]]:
        """All pairs of several include (or exclude) entries."""
        result: set[tuple[str | None, str]] = set()
        for part in parts:
            result |= self._include(part, url, seen)
        return result

    def _include(self, part: JSON, url: str, seen: frozenset[str]) -> set[tuple[str | None, str]]:
        """One compose.include (or exclude): concepts or a whole system, intersected with its valueSets."""
        if "filter" in part:
            raise ValueError(f"ValueSet {url}: compose filters are not supported")
        system = part.get("system")
        selected: set[tuple[str | None, str]] | None = None
        if part.get("concept"):
            selected = {(system, c["code"]) for c in part["concept"]}
        elif system:
            selected = {(system, code) for code in self._all_codes(system, url)}
        for other in part.get("valueSet", []):
            try:
                included = set(self.expand(other, seen))
            except KeyError:
                raise ValueError(f"ValueSet {url} includes unknown ValueSet {other}") from None
            selected = included if selected is None else selected & included
        return selected or set()

    def _all_codes(self, system: str, url: str) -> list[str]:
        """Every code of a shipped, complete CodeSystem (a partial one cannot stand for the whole)."""
        cs = self.code_systems.get(system)
        if cs is None or cs.get("content") != "complete":
            raise ValueError(f"ValueSet {url} includes all of {system}, which is not shipped in full")
        return list(_concept_codes(cs.get("concept", [])))


def _concept_codes(concepts: Iterable[JSON]) -> Iterable[str]:
    """Every code of a CodeSystem, including nested (child) concepts."""
    for concept in concepts:
        yield concept["code"]
        yield from _concept_codes(concept.get("concept", []))


def _flatten_contains(contains: Iterable[JSON]) -> Iterable[tuple[str | None, str]]:
    """(system, code) of a ValueSet.expansion.contains tree (abstract grouping entries have no code)."""
    for item in contains:
        if "code" in item:
            yield item.get("system"), item["code"]
        yield from _flatten_contains(item.get("contains", []))
