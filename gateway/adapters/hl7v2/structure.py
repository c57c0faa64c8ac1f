"""Grouping a message's segments by its message structure, with hl7apy's definitions.

hl7apy knows every message structure of HL7 v2.1 to 2.8.2 (which segments, in which groups, how often),
but its full parser costs milliseconds per message. Here the definitions are read once per (version,
structure) into a small skeleton with each group's possible first segments, and a single forward pass
assigns segments to group instances. Segments the structure does not expect where they stand (Z-segments,
segments of a later version) are kept on the group they follow and reported, never dropped.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from typing import Any

from gateway.adapters.hl7v2.er7 import Segment

# hl7apy's modules per version; messages of unknown versions use the nearest known one below.
_VERSIONS = ["2.1", "2.2", "2.3", "2.3.1", "2.4", "2.5", "2.5.1", "2.6", "2.7", "2.8", "2.8.1", "2.8.2"]


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".") if p.isdigit())


def nearest_version(version: str) -> str:
    """The hl7apy version to read a message of `version` with (2.5.1 -> 2.5.1, 2.9 -> 2.8.2, junk -> 2.5)."""
    if version in _VERSIONS:
        return version
    try:
        wanted = _version_key(version)
    except ValueError:
        return "2.5"
    if not wanted:
        return "2.5"
    candidates = [v for v in _VERSIONS if _version_key(v) <= wanted]
    return candidates[-1] if candidates else _VERSIONS[0]


@dataclass(frozen=True, slots=True)
class Child:
    """One position in a group definition: a segment or a nested group, with its cardinality."""

    name: str
    is_group: bool
    min: int
    max: int  # -1: unbounded
    group: GroupDef | None = None


@dataclass(frozen=True, slots=True)
class GroupDef:
    name: str
    children: tuple[Child, ...]
    first: frozenset[str]  # segment names that can start an instance of this group


@cache
def _definitions(version: str) -> tuple[dict[str, Any], dict[str, Any]]:
    module = "hl7apy.v" + version.replace(".", "_")
    messages = importlib.import_module(f"{module}.messages").MESSAGES
    groups = importlib.import_module(f"{module}.groups").GROUPS
    return messages, groups


def preload() -> None:
    """Import every version's definitions now (about 0.3 s and 14 MB once per process) rather than in the
    middle of serving, on the event loop, when a sender first uses a version."""
    for version in _VERSIONS:
        _definitions(version)


def _build(name: str, definition: Any, groups: dict[str, Any]) -> GroupDef:
    children: list[Child] = []
    for child_name, _detail, (low, high), kind in definition[1]:
        if kind == "GRP":
            sub = _build(child_name, groups[child_name], groups)
            children.append(Child(child_name, True, low, high, sub))
        else:
            children.append(Child(child_name, False, low, high))
    return GroupDef(name, tuple(children), _first_segments(children))


def _first_segments(children: list[Child]) -> frozenset[str]:
    first: set[str] = set()
    for child in children:
        first |= child.group.first if child.group else {child.name}
        if child.min >= 1:
            break
    return frozenset(first)


@cache
def skeleton(version: str, structure: str) -> GroupDef | None:
    """The compiled definition of a message structure, or None when hl7apy does not know it."""
    messages, groups = _definitions(nearest_version(version))
    definition = messages.get(structure)
    if definition is None:
        return None
    return _build(structure, definition, groups)


@dataclass
class Group:
    """One instance of a group (or the message itself) with its segments and sub-groups in order."""

    name: str
    items: list[Segment | Group] = field(default_factory=list)
    # Segments found here that the structure does not expect at this point.
    unexpected: list[Segment] = field(default_factory=list)

    def segments(self, name: str) -> list[Segment]:
        return [i for i in self.items if isinstance(i, Segment) and i.name == name]

    def segment(self, name: str) -> Segment | None:
        for item in self.items:
            if isinstance(item, Segment) and item.name == name:
                return item
        return None

    def groups(self, name: str) -> list[Group]:
        """Sub-groups by name, structure prefix optional (`OBSERVATION` finds `ORU_R01_OBSERVATION`)."""
        return [
            i for i in self.items if isinstance(i, Group) and (i.name == name or i.name.endswith("_" + name))
        ]

    def find(self, name: str) -> Iterator[Group]:
        """Every group of that name at any depth, in message order."""
        for item in self.items:
            if isinstance(item, Group):
                if item.name == name or item.name.endswith("_" + name):
                    yield item
                yield from item.find(name)

    def all_segments(self) -> Iterator[Segment]:
        for item in self.items:
            if isinstance(item, Group):
                yield from item.all_segments()
            else:
                yield item

    def all_unexpected(self) -> Iterator[Segment]:
        yield from self.unexpected
        for item in self.items:
            if isinstance(item, Group):
                yield from item.all_unexpected()


class _Open:
    """A group instance being filled: its definition, the position reached and counts per position."""

    __slots__ = ("counts", "definition", "group", "position")

    def __init__(self, definition: GroupDef, group: Group) -> None:
        self.definition = definition
        self.group = group
        self.position = 0
        self.counts = [0] * len(definition.children)

    def place(self, segment: Segment, stack: list[_Open]) -> bool:
        """Put `segment` at the first position from here on that can take it; False if none can."""
        children = self.definition.children
        for index in range(self.position, len(children)):
            child = children[index]
            full = child.max != -1 and self.counts[index] >= child.max
            if not full and (
                segment.name in child.group.first if child.group else segment.name == child.name
            ):
                self.position = index
                self.counts[index] += 1
                if child.group is None:
                    self.group.items.append(segment)
                    return True
                instance = Group(child.group.name)
                self.group.items.append(instance)
                opened = _Open(child.group, instance)
                stack.append(opened)
                return opened.place(segment, stack)
        return False


def group_message(segments: list[Segment], version: str, structure: str) -> Group | None:
    """The grouped message; when the declared version's structure leaves standard segments unexpected
    (senders often use a later version's segments under an older MSH-12), the newest definition is tried
    too and the grouping that expects more segments wins. None when the structure is unknown."""
    declared = skeleton(version, structure)
    if declared is None:
        return None
    grouped = group_segments(segments, declared)
    misplaced = [s for s in grouped.all_unexpected() if not s.name.startswith("Z")]
    newest = skeleton(_VERSIONS[-1], structure)
    if misplaced and newest is not None:
        alternative = group_segments(segments, newest)
        if sum(1 for s in alternative.all_unexpected() if not s.name.startswith("Z")) < len(misplaced):
            return alternative
    return grouped


def group_segments(segments: list[Segment], definition: GroupDef) -> Group:
    """Assign segments to group instances in one forward pass (see the module docstring)."""
    root = Group(definition.name)
    stack = [_Open(definition, root)]
    for segment in segments:
        depth = len(stack)
        while depth:
            candidate = stack[depth - 1]
            inner = stack[:depth]
            if candidate.place(segment, inner):
                stack[:] = inner
                break
            depth -= 1
        else:
            stack[-1].group.unexpected.append(segment)
            stack[-1].group.items.append(segment)
    return root


@cache
def segment_field_types(version: str, segment: str) -> dict[int, str]:
    """Field number -> HL7 datatype of a segment in hl7apy's definitions of `version` (empty if unknown)."""
    module = "hl7apy.v" + version.replace(".", "_")
    try:
        segments = importlib.import_module(f"{module}.segments").SEGMENTS
    except ImportError:
        return {}
    definition = segments.get(segment)
    if definition is None:
        return {}
    types: dict[int, str] = {}
    for number, (_name, detail, _card, _kind) in enumerate(definition[1], start=1):
        datatype = detail[2] if detail[0] == "leaf" else detail[2] if len(detail) > 2 else None
        if isinstance(datatype, str):
            types[number] = datatype
    return types
