"""One translation in progress: the message, its groups, its site, what it produced and what it read.

The adapters (results.py, orders.py, translate.py) share this state; the helpers here find the segments
around a segment (the NTEs after an OBX, the ORC of an order) and derive the keys that ids come from.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.adapters.hl7v2.er7 import Message, Segment, Value
from gateway.adapters.hl7v2.identity import stable_id
from gateway.adapters.hl7v2.rules import ResourceMapping, Scope
from gateway.adapters.hl7v2.structure import Group
from gateway.mapping.files import DEFAULT_IDENTITY, IdentityPolicy, Site
from gateway.types import JSON

Mode = Literal["replace", "fill"]


class TranslationError(Exception):
    """The message cannot be turned into resources. `ack` is AR (rejected) or AE (application error)."""

    def __init__(
        self,
        text: str,
        *,
        ack: Literal["AE", "AR"] = "AE",
        code: str = "207",
        segment: str | None = None,
        sequence: int | None = None,
        field: int | None = None,
    ) -> None:
        super().__init__(text)
        self.text = text
        self.ack = ack
        self.code = code
        self.segment = segment
        self.sequence = sequence
        self.field = field


@dataclass
class Produced:
    """One resource a message yields, how to write it, and the segment it mainly came from."""

    resource: JSON
    mode: Mode
    source: Segment | None = None


@dataclass
class PatientIdentity:
    """What the pipeline needs to file a message under the right Patient.

    `match_keys` are the (system, value) pairs of PID-2/3/4 that may match a stored Patient, the first
    being the one the candidate id derives from; `demographics` says whether this message may replace the
    stored demographics (`replace`) or only add what is missing (`fill`).
    """

    patient_id: str
    match_keys: list[tuple[str, str]]
    demographics: Mode
    segment: Segment


@dataclass
class Translation:
    event: str
    resources: list[Produced]
    problems: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    merge: tuple[str, str] | None = None  # (id of the Patient merged away, id of the survivor)
    site: str | None = None
    merge_keys: list[tuple[str, str]] = field(default_factory=list)  # the prior patient's identifiers
    unmapped: list[str] = field(default_factory=list)  # fields with a value no mapping read: "PID#2-19"
    patients: list[PatientIdentity] = field(default_factory=list)
    identity: IdentityPolicy = DEFAULT_IDENTITY
    reused_control_id: str = "process"
    quarantine: str | None = None  # why the message is held instead of filed (no usable patient id)


def walk(group: Group, ancestors: tuple[Group, ...] = ()) -> Iterator[tuple[Segment, tuple[Group, ...]]]:
    """Every segment in message order with the groups that enclose it, outermost first."""
    path = (*ancestors, group)
    for item in group.items:
        if isinstance(item, Group):
            yield from walk(item, path)
        else:
            yield item, path


def following(parent: Group, segment: Segment, name: str) -> list[Segment]:
    """The `name` segments directly after `segment` in its group (the NTEs of an OBX)."""
    found: list[Segment] = []
    seen = False
    for item in parent.items:
        if item is segment:
            seen = True
        elif seen:
            if isinstance(item, Segment) and item.name == name:
                found.append(item)
            else:
                break
    return found


def direct(group: Group, name: str) -> Segment | None:
    """The group's own `name` segment (2.8 puts ORC in a COMMON_ORDER sub-group)."""
    segment = group.segment(name)
    if segment is None:
        for sub in group.items:
            if isinstance(sub, Group) and sub.name.endswith("COMMON_ORDER"):
                segment = sub.segment(name)
    return segment


def order_groups(root: Group, marker: str) -> list[Group]:
    """Groups that directly hold `marker` (OBR for results, ORC for orders), in message order."""
    found: list[Group] = []

    def visit(group: Group) -> None:
        if direct(group, marker) is not None:
            found.append(group)
        for item in group.items:
            if isinstance(item, Group) and not item.name.endswith("COMMON_ORDER"):
                visit(item)

    visit(root)
    return found


def segments_in(group: Group, stop: Any = None) -> Iterator[tuple[Segment, Group]]:
    """Segments of a group and its sub-groups, not descending into groups `stop` accepts."""
    for item in group.items:
        if isinstance(item, Group):
            if stop is None or not stop(item):
                yield from segments_in(item, stop)
        else:
            yield item, group


class Run:
    """One translation in progress: the message, its groups, its site, and what has been read."""

    def __init__(
        self,
        message: Message,
        root: Group,
        mappings: dict[str, ResourceMapping],
        ctx: Any,
        site: Site | None = None,
    ) -> None:
        self.message = message
        self.root = root
        self.mappings = mappings
        self.ctx = ctx
        self.site = site
        self.identity = site.identity if site is not None else DEFAULT_IDENTITY
        self.used: set[int] = set()
        self.produced: list[Produced] = []
        self.patients: dict[int, str] = {}  # PID segment index -> Patient id
        self.identities: list[PatientIdentity] = []
        self.order_refs: dict[int, str] = {}  # id(order group) -> "MedicationRequest/x" | "ServiceRequest/x"
        self.merge: tuple[str, str] | None = None
        self.merge_keys: list[tuple[str, str]] = []
        self.quarantine: str | None = None
        self.adapter_kind = "results"  # adt | orders | results: whose demographics precedence applies
        self.category: str | None = None  # the message kind's default Observation category
        self._pids: list[Segment] | None = None
        self._keys: dict[tuple[str, str], str] = {}  # (type, id) already produced -> kept once

    @property
    def facility(self) -> str:
        return self.message.sending_facility or self.message.sending_application

    def scope(self, *segments: Segment | None) -> Scope:
        return Scope(self.used).add(s for s in segments if s is not None)

    def apply(self, resource_type: str, scope: Scope) -> JSON:
        return self.mappings[resource_type].apply(scope, self.ctx)

    def add(self, resource: JSON, mode: Mode, source: Segment | None) -> None:
        """Produce a resource; one produced twice by one message (a shared Organization) is kept once."""
        key = (resource["resourceType"], resource["id"])
        if key in self._keys:
            return
        self._keys[key] = resource["id"]
        self.produced.append(Produced(resource, mode, source))

    def discard(self, resource: JSON) -> None:
        """Take back a resource produced earlier (an ED result that became the report's document)."""
        self.produced = [p for p in self.produced if p.resource is not resource]
        self._keys.pop((resource["resourceType"], resource["id"]), None)

    def sequence(self, segment: Segment) -> int:
        """Which occurrence of its segment name `segment` is (ERR-2.2)."""
        return sum(1 for s in self.message.segments[: segment.index + 1] if s.name == segment.name)

    # -- keys ------------------------------------------------------------------------------------

    def order_key(self, placer: Value, filler: Value, *extra: str, where: Segment) -> tuple[str, ...]:
        """Placer order number (else filler) in its namespace; without either, the order's place in this
        message (so re-sending the message updates it, and two orders of one message stay apart)."""
        chosen = placer if placer.c(1).strip() else filler
        return self._number_key(chosen, where, *extra)

    def filler_key(self, filler: Value, placer: Value, *extra: str, where: Segment) -> tuple[str, ...]:
        """The filler's order number first (the lab's accession: what results are identified by)."""
        chosen = filler if filler.c(1).strip() else placer
        return self._number_key(chosen, where, *extra)

    def _number_key(self, chosen: Value, where: Segment, *extra: str) -> tuple[str, ...]:
        if not chosen.c(1).strip():
            return ("message", self.message.sender, self.message.control_id, str(where.index), *extra)
        namespace = chosen.c(2) or chosen.c(3) or f"facility:{self.facility}"
        return (namespace, chosen.c(1).strip(), *extra)

    # -- patients --------------------------------------------------------------------------------

    def current_pid(self, before: Segment) -> Segment:
        """The last PID before `before` (PIDs precede what they are about)."""
        if self._pids is None:
            self._pids = [s for s in self.message.segments if s.name == "PID"]
        last = None
        for segment in self._pids:
            if segment.index >= before.index:
                break
            last = segment
        if last is None:
            raise TranslationError(
                f"{before.name} has no PID before it to say whose it is", code="100", segment="PID"
            )
        return last

    def current_patient(self, before: Segment) -> str:
        """The Patient of the last PID before `before` (see patients.patient_of)."""
        from gateway.adapters.hl7v2 import patients  # patients builds on Run: imported when first used

        return patients.patient_of(self, before)

    def stable(self, resource_type: str, *parts: str) -> str:
        return stable_id(resource_type, *parts)
