"""HL7 v2 message -> FHIR resources: the adapters per message kind, driven by `mappings/`.

The mapping files say which field goes where; this module decides which resources a message yields and how
they link: one Patient per PID, a DiagnosticReport per order and an Observation per OBX in results, a
MedicationRequest per pharmacy order, a MedicationDispense per RXD. Ids are derived from the source's
identifiers (see identity.py), so re-sent and corrected messages update the same resources.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from gateway.adapters.hl7v2 import datatypes, pharmacy
from gateway.adapters.hl7v2.er7 import Message, Segment, Value
from gateway.adapters.hl7v2.identity import stable_id
from gateway.adapters.hl7v2.rules import Converters, ResourceMapping, Scope
from gateway.adapters.hl7v2.structure import Group, group_message
from gateway.mapping.files import MappingSet, Site
from gateway.types import JSON

# Segments that carry the message's envelope: read by the pipeline, never "unused".
ENVELOPE = {"MSH", "SFT", "EVN", "UAC"}
# OBX value types whose content is text: without a code they are lines of a report, not Observations.
TEXT_TYPES = {"TX", "FT", "ST"}
DR_NOTE_EXTENSION = "http://hl7.org/fhir/5.0/StructureDefinition/extension-DiagnosticReport.note"
PROVENANCE_MESSAGE_SYSTEM = "urn:specialty-gateway:hl7v2-message"
_OFFSET = re.compile(r"([+-])(\d{2})(\d{2})$")

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
class Translation:
    event: str
    resources: list[Produced]
    problems: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)
    merge: tuple[str, str] | None = None  # (id of the Patient merged away, id of the survivor)
    site: str | None = None


def walk(group: Group, ancestors: tuple[Group, ...] = ()) -> Iterator[tuple[Segment, tuple[Group, ...]]]:
    """Every segment in message order with the groups that enclose it, outermost first."""
    path = (*ancestors, group)
    for item in group.items:
        if isinstance(item, Group):
            yield from walk(item, path)
        else:
            yield item, path


def _following(parent: Group, segment: Segment, name: str) -> list[Segment]:
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


def _direct(group: Group, name: str) -> Segment | None:
    segment = group.segment(name)
    if segment is None:
        for sub in group.items:  # 2.8 puts ORC in a COMMON_ORDER group
            if isinstance(sub, Group) and sub.name.endswith("COMMON_ORDER"):
                segment = sub.segment(name)
    return segment


def offset_of(timestamp: str) -> str | None:
    """The time-zone offset an HL7 timestamp carries ("+0215" -> "+02:15")."""
    match = _OFFSET.search(timestamp.strip())
    return f"{match[1]}{match[2]}:{match[3]}" if match else None


class _Run:
    """One translation in progress: the message, its groups, its site, and what has been read."""

    def __init__(self, message: Message, root: Group, mappings: dict[str, ResourceMapping], ctx: Any) -> None:
        self.message = message
        self.root = root
        self.mappings = mappings
        self.ctx = ctx
        self.used: set[int] = set()
        self.produced: list[Produced] = []
        self.patients: dict[int, str] = {}  # PID segment index -> Patient id
        self.merge: tuple[str, str] | None = None
        self._pids: list[Segment] | None = None

    @property
    def facility(self) -> str:
        return self.message.sending_facility or self.message.sending_application

    def scope(self, *segments: Segment | None) -> Scope:
        return Scope(self.used).add(s for s in segments if s is not None)

    def apply(self, resource_type: str, scope: Scope) -> JSON:
        return self.mappings[resource_type].apply(scope, self.ctx)

    # -- identity --------------------------------------------------------------------------------

    def patient_key(self, cx: Value) -> tuple[str, str]:
        authority = datatypes.authority(cx.part(4), self.ctx) or f"facility:{self.facility}"
        return authority, cx.c(1)

    def patient_identifier(self, pid: Segment) -> Value | None:
        """The PID-3 repetition that identifies the patient: the MR-typed one, else the first."""
        reps = [r for r in pid.repetitions(3) if r.c(1)]
        if not reps and pid.get(2).c(1):
            reps = [pid.get(2)]  # PID-2, the external id of older versions
        for rep in reps:
            if rep.c(5) == "MR":
                return rep
        return reps[0] if reps else None

    def order_key(self, placer: Value, filler: Value, *extra: str, where: Segment) -> tuple[str, ...]:
        """Placer order number (else filler) in its namespace; without either, the order's place in this
        message (so re-sending the message updates it, and two orders of one message stay apart)."""
        chosen = placer if placer.c(1) else filler
        if not chosen.c(1):
            return ("message", self.message.sender, self.message.control_id, str(where.index), *extra)
        namespace = chosen.c(2) or chosen.c(3) or f"facility:{self.facility}"
        return (namespace, chosen.c(1), *extra)

    # -- resources -------------------------------------------------------------------------------

    def patient(self, pid: Segment, mode: Mode) -> str:
        if pid.index in self.patients:
            return self.patients[pid.index]
        identifier = self.patient_identifier(pid)
        if identifier is not None:
            patient_id = stable_id("Patient", *self.patient_key(identifier))
        else:
            # Nothing to match on: a Patient of this message alone, never merged with anyone by name.
            patient_id = stable_id(
                "Patient", "unidentified", self.message.sender, self.message.control_id, str(pid.index)
            )
            self.ctx.problems.append(
                "PID has no identifier (PID-3): the Patient is kept for this message only and is not matched"
                " with other messages"
            )
        resource = self.apply("Patient", self.scope(pid))
        resource["id"] = patient_id
        self.produced.append(Produced(resource, mode, pid))
        self.patients[pid.index] = patient_id
        return patient_id

    def current_patient(self, before: Segment) -> str:
        """The Patient of the last PID before `before` (PIDs precede what they are about)."""
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
        return self.patient(last, "fill")

    def observation(
        self, obx: Segment, parent: Group, context: list[Segment | None], key: tuple[str, ...], lab: bool
    ) -> JSON | None:
        """The Observation of an OBX, or None for an OBX without OBX-3 (no code: not an Observation)."""
        if not obx.get(3):
            self.ctx.problems.append(
                f"OBX#{obx.index + 1} has no observation identifier (OBX-3)"
                + ("; its text is in the report's presentedForm" if obx.get(2).c(1) in TEXT_TYPES else "")
            )
            return None
        scope = self.scope(obx, *_following(parent, obx, "NTE"), *context)
        resource = self.apply("Observation", scope)
        if not lab:
            resource.pop("category", None)
        resource["id"] = stable_id("Observation", *key)
        resource["subject"] = {"reference": f"Patient/{self.current_patient(obx)}"}
        if not any(k.startswith("value") for k in resource) and "component" not in resource:
            resource["dataAbsentReason"] = {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "unknown"}
                ]
            }
        self.produced.append(Produced(resource, "replace", obx))
        return resource

    def _sequence(self, segment: Segment) -> int:
        """Which occurrence of its segment name `segment` is (ERR-2.2)."""
        return sum(1 for s in self.message.segments[: segment.index + 1] if s.name == segment.name)


# -- adapters per message kind -------------------------------------------------------------------


def _order_groups(root: Group, marker: str) -> list[Group]:
    """Groups that directly hold `marker` (OBR for results, ORC for orders), in message order."""
    found: list[Group] = []

    def visit(group: Group) -> None:
        if _direct(group, marker) is not None:
            found.append(group)
        for item in group.items:
            if isinstance(item, Group) and not item.name.endswith("COMMON_ORDER"):
                visit(item)

    visit(root)
    return found


def _segments_in(group: Group, stop: Callable[[Group], bool]) -> Iterator[tuple[Segment, Group]]:
    """Segments of a group and its sub-groups, not descending into groups `stop` accepts."""
    for item in group.items:
        if isinstance(item, Group):
            if not stop(item):
                yield from _segments_in(item, stop)
        else:
            yield item, group


def _specimen_of(order: Group, ancestors: tuple[Group, ...]) -> Segment | None:
    for sub in order.find("SPECIMEN"):
        spm = sub.segment("SPM")
        if spm is not None:
            return spm
    for ancestor in reversed(ancestors):  # OUL: the order sits inside its SPECIMEN group
        spm = ancestor.segment("SPM")
        if spm is not None:
            return spm
    return None


def _results(run: _Run) -> None:
    orders = _order_groups(run.root, "OBR")
    order_ids = {id(g) for g in orders}
    ancestors_of: dict[int, tuple[Group, ...]] = {}
    obx_order: dict[int, Group] = {}
    for segment, path in walk(run.root):
        for group in path:
            ancestors_of.setdefault(id(group), path[: path.index(group)])
        if segment.name == "OBX":
            owner = next((g for g in reversed(path) if id(g) in order_ids), None)
            if owner is not None:
                obx_order[segment.index] = owner
    for order in orders:
        _report(run, order, ancestors_of.get(id(order), ()), obx_order)
    _loose_observations(run, set(obx_order))


def _report(run: _Run, order: Group, ancestors: tuple[Group, ...], obx_order: dict[int, Group]) -> None:
    obr = _direct(order, "OBR")
    orc = _direct(order, "ORC")
    assert obr is not None
    spm = _specimen_of(order, ancestors)
    key = run.order_key(
        obr.get(2) or (orc.get(2) if orc else obr.get(2)), obr.get(3), obr.get(4).c(1), where=obr
    )
    observations = []
    lines: list[str] = []
    position = 0
    for segment, parent in _segments_in(order, lambda g: False):
        if segment.name == "OBX" and obx_order.get(segment.index) is order:
            position += 1
            obs = run.observation(segment, parent, [obr, orc, spm], (*key, str(position)), lab=True)
            if obs is not None:
                observations.append(obs)
            elif segment.get(2).c(1) in TEXT_TYPES:
                run.used.add(segment.index)
                lines += [rep.text for rep in segment.repetitions(5)] or [""]
    report = run.apply("DiagnosticReport", run.scope(obr, orc, spm))
    report["id"] = stable_id("DiagnosticReport", *key)
    report["subject"] = {"reference": f"Patient/{run.current_patient(obr)}"}
    if observations:
        report["result"] = [{"reference": f"Observation/{o['id']}"} for o in observations]
    notes = [datatypes.annotation(n, run.ctx) for n in _following(order, obr, "NTE")]
    for nte in _following(order, obr, "NTE"):
        run.used.add(nte.index)
    if notes:
        report["extension"] = [{"url": DR_NOTE_EXTENSION, "valueAnnotation": n} for n in notes if n]
    if lines:
        text = "\n".join(lines)
        report["presentedForm"] = [
            {
                "contentType": "text/plain",
                "data": base64.b64encode(text.encode()).decode(),
                "title": "Report text",
            }
        ]
    run.produced.append(Produced(report, "replace", obr))


def _loose_observations(run: _Run, placed: set[int]) -> None:
    """OBX outside any order (patient observations, ADT vitals): Observations keyed by their place."""
    counts: dict[str, int] = {}
    for segment, path in walk(run.root):
        if segment.name != "OBX" or segment.index in placed:
            continue
        parent = path[-1]
        where = parent.name
        counts[where] = counts.get(where, 0) + 1
        patient = run.current_patient(segment)
        lab = run.message.message_code in ("ORU", "OUL")
        run.observation(segment, parent, [], ("patient", patient, where, str(counts[where])), lab=lab)


def _orders(run: _Run) -> None:
    for order in _order_groups(run.root, "ORC"):
        _medication_request(run, order)
    _results_in_orders(run)


def _medication_request(run: _Run, order: Group) -> str | None:
    orc = _direct(order, "ORC")
    assert orc is not None
    body = [s for s, _ in _segments_in(order, lambda g: g.name.endswith("OBSERVATION"))]
    if not any(s.name in ("RXO", "RXE", "RXD") for s in body):
        return None  # not a pharmacy order (a lab ORM); its segments stay unused and are reported
    key = run.order_key(orc.get(2), orc.get(3), where=orc)
    # MSH too: which table RXR-2's site codes come from depends on the version.
    scope = run.scope(*body, run.message.msh).add_group("ORDER", order)
    request = run.apply("MedicationRequest", scope)
    request["id"] = stable_id("MedicationRequest", *key)
    # The pharmacy's encoded order (RXE) is the filler's order; without one it is the prescriber's original.
    request["intent"] = "filler-order" if any(s.name == "RXE" for s in body) else "original-order"
    request["subject"] = {"reference": f"Patient/{run.current_patient(orc)}"}
    if "medicationCodeableConcept" not in request:
        raise TranslationError(
            "The order has no medication (RXE-2 or RXO-1)", code="101", segment="RXO", field=1
        )
    components = pharmacy.order_components(body)
    if components and "Medication" not in run.mappings:
        run.ctx.report("RXC: the mappings have no Medication rules (medication.yaml); components not mapped")
    elif components:
        # A compound or IV mixture: its product is a Medication of its own, built from its components only.
        product = run.scope(*[s for s in body if s.name != "RXC"], *components).add_group("ORDER", order)
        medication = run.apply("Medication", product)
        medication["id"] = stable_id("Medication", *key)
        request = pharmacy.refer_to(request, medication)
        run.produced.append(Produced(medication, "replace", components[0]))
    action = run.ctx.tables.map("order-control", orc.get(1).c(1))
    mode: Mode = "replace"
    if isinstance(action, dict) and action.get("action") == "status-only":
        mode = "fill"
    run.produced.append(Produced(request, mode, orc))
    return str(request["id"])


def _results_in_orders(run: _Run) -> None:
    """OBX inside orders (weight, height, levels that justify the order): Observations of that order."""
    for order in _order_groups(run.root, "ORC"):
        orc = _direct(order, "ORC")
        assert orc is not None
        key = run.order_key(orc.get(2), orc.get(3), where=orc)
        position = 0
        for segment, parent in _segments_in(order, lambda g: False):
            if segment.name == "OBX":
                position += 1
                run.observation(segment, parent, [orc], (*key, "obx", str(position)), lab=False)


def _dispenses(run: _Run) -> None:
    for order in _order_groups(run.root, "ORC"):
        request_id = _medication_request(run, order)
        orc = _direct(order, "ORC")
        assert orc is not None
        key = run.order_key(orc.get(2), orc.get(3), where=orc)
        context = [s for s, _ in _segments_in(order, lambda g: g.name.endswith("OBSERVATION"))]
        for number, rxd in enumerate(order.segments("RXD"), start=1):
            scope = run.scope(
                rxd, *_following(order, rxd, "NTE"), *[s for s in context if s.name != "NTE"], run.message.msh
            )
            dispense = run.apply("MedicationDispense", scope.add_group("ORDER", order))
            dispense["id"] = stable_id("MedicationDispense", *key, rxd.get(1).text or str(number))
            dispense["subject"] = {"reference": f"Patient/{run.current_patient(rxd)}"}
            if request_id:
                dispense["authorizingPrescription"] = [{"reference": f"MedicationRequest/{request_id}"}]
            run.produced.append(Produced(dispense, "replace", rxd))
    _results_in_orders(run)


def _patients(run: _Run) -> None:
    for segment in run.message.segments:
        if segment.name == "PID":
            run.patient(segment, "replace")
    _loose_observations(run, set())


def _merge(run: _Run) -> None:
    pid = next((s for s in run.message.segments if s.name == "PID"), None)
    mrg = next((s for s in run.message.segments if s.name == "MRG"), None)
    if pid is None or mrg is None or not mrg.get(1).c(1):
        raise TranslationError(
            "A merge needs PID (survivor) and MRG-1 (prior identifier)", code="101", segment="MRG", field=1
        )
    survivor = run.patient(pid, "fill")
    run.used.add(mrg.index)
    prior = stable_id("Patient", *run.patient_key(mrg.get(1)))
    if prior == survivor:
        raise TranslationError("MRG-1 names the surviving patient itself", code="205", segment="MRG", field=1)
    run.merge = (prior, survivor)


ADAPTERS: dict[str, Callable[[_Run], None]] = {
    "results": _results,
    "pharmacy-order": _orders,
    "dispense": _dispenses,
    "patient": _patients,
    "merge": _merge,
}

# What each segment converter's result depends on, so that results can be remembered (see rules.memoized).
SEGMENT_KEYS: dict[str, Callable[[Segment], Any]] = {
    "observation-value": lambda obx: (obx.enc, obx.raw(2), obx.raw(5), obx.raw(6)),
    "reference-range": lambda obx: (obx.enc, obx.raw(6), obx.raw(7)),
}

SEGMENT_CONVERTERS = {
    "observation-value": datatypes.observation_value,
    "reference-range": datatypes.reference_range,
    "annotation": datatypes.annotation,
    "dispense-quantity": pharmacy.dispense_quantity,
}


class Translator:
    """Turns tokenized messages into resources with the mappings loaded at start."""

    def __init__(self, mappings: MappingSet, *, default_offset: str | None = None) -> None:
        self.mappings = mappings
        self.default_offset = default_offset
        self.converters = Converters(
            value={**datatypes.CONVERTERS, **pharmacy.VALUE_CONVERTERS},
            segment=SEGMENT_CONVERTERS,
            scope=pharmacy.SCOPE_CONVERTERS,
            segment_keys=SEGMENT_KEYS,
        )
        self._base = {
            rtype: ResourceMapping.compile(rtype, elements, self.converters)
            for rtype, elements in mappings.resources.items()
        }
        self._per_site: dict[str, dict[str, ResourceMapping]] = {}
        for site in mappings.sites:
            self._per_site[site.name] = self._site_mappings(site)

    def _site_mappings(self, site: Site) -> dict[str, ResourceMapping]:
        compiled = dict(self._base)
        for rtype, overrides in site.elements.items():
            compiled[rtype] = compiled[rtype].with_overrides(overrides, self.converters)
        return compiled

    def supports(self, message: Message) -> bool:
        return f"{message.message_code}^{message.trigger}" in self.mappings.messages

    def translate(self, message: Message) -> Translation:
        event = f"{message.message_code}^{message.trigger}"
        definition = self.mappings.messages.get(event)
        if definition is None:
            known = any(e.startswith(message.message_code + "^") for e in self.mappings.messages)
            raise TranslationError(
                f"Message type {event} is not supported by this gateway",
                ack="AR",
                code="201" if known else "200",
                segment="MSH",
                sequence=1,
                field=9,
            )
        structure = definition.structure
        root = group_message(message.segments, message.version, structure)
        if root is None:
            raise TranslationError(
                f"Message structure {structure} is unknown for version {message.version}",
                ack="AR",
                code="203",
                segment="MSH",
                sequence=1,
                field=12,
            )
        site = self.mappings.site_for(message.sending_application, message.sending_facility)
        tables = self.mappings.tables.with_overlay(site.tables) if site else self.mappings.tables
        offset = (
            (site.timezone if site else None) or offset_of(message.msh.get(7).c(1)) or self.default_offset
        )
        ctx = datatypes.Context(tables=tables, default_offset=offset)
        mappings = self._per_site[site.name] if site else self._base
        run = _Run(message, root, mappings, ctx)
        ADAPTERS[definition.adapter](run)
        if site is not None:
            _apply_site(site, run)
        unused = [
            f"{s.name}#{s.index + 1}"
            for s in message.segments
            if s.index not in run.used and s.name not in ENVELOPE and s.index != 0
        ]
        return Translation(event, run.produced, ctx.problems, unused, run.merge, site.name if site else None)


def _apply_site(site: Site, run: _Run) -> None:
    """A site's code replacements and Z-segment extensions, on the resources already produced."""
    for rule in site.codes:
        for produced in run.produced:
            resource = produced.resource
            if resource["resourceType"] != rule.get("resource", resource["resourceType"]):
                continue
            concept = resource.get(rule.get("element", "code"))
            if isinstance(concept, dict) and _replace_coding(concept, rule):
                run.ctx.problems.append(
                    f"{resource['resourceType']}.{rule.get('element', 'code')}: local code "
                    f"{rule['from'].get('code')} replaced by site {site.name}"
                )
    for name, targets in site.zsegments.items():
        for zsegment in (s for s in run.message.segments if s.name == name):
            for target in targets:
                value = zsegment.get(int(target["field"]))
                if not value:
                    continue
                run.used.add(zsegment.index)
                converted = datatypes.CONVERTERS[target.get("with", "string")](value, run.ctx)
                if converted is None:
                    continue
                for produced in run.produced:
                    if produced.resource["resourceType"] == target["resource"]:
                        suffix = target.get("value", "String")
                        produced.resource.setdefault("extension", []).append(
                            {"url": target["extension"], f"value{suffix}": converted}
                        )


def _replace_coding(concept: JSON, rule: dict[str, Any]) -> bool:
    """Put the site's standard coding first when a local coding matches; keep the local one after it."""
    wanted = rule["from"]
    codings = concept.get("coding") or []
    for coding in codings:
        if coding.get("code") == wanted.get("code") and (
            "system" not in wanted or coding.get("system", "") == wanted["system"]
        ):
            concept["coding"] = [dict(rule["to"]), *[c for c in codings if c != rule["to"]]]
            return True
    return False
