"""HL7 v2 message -> FHIR resources: the adapters per message kind, driven by `mappings/`.

The mapping files say which field goes where; the adapters decide which resources a message yields and how
they link: a Patient per PID (patients.py), a report, ServiceRequest, Specimen and Observations per order
in results (results.py), a ServiceRequest per non-pharmacy order (orders.py), a MedicationRequest per
pharmacy order and a MedicationDispense per RXD (here). Ids are derived from the source's identifiers (see
identity.py), so re-sent and corrected messages update the same resources. What no mapping read is listed
field by field (loss.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.adapters.hl7v2 import datatypes, loss, orders, patients, pharmacy, results
from gateway.adapters.hl7v2.er7 import Message, Segment
from gateway.adapters.hl7v2.identity import stable_id
from gateway.adapters.hl7v2.rules import Converters, ResourceMapping
from gateway.adapters.hl7v2.run import (
    Mode,
    PatientIdentity,
    Produced,
    Run,
    Translation,
    TranslationError,
    direct,
    following,
    order_groups,
    segments_in,
)
from gateway.adapters.hl7v2.structure import Group, group_message
from gateway.mapping.codes import replace_coding
from gateway.mapping.files import MappingSet, Site
from gateway.mapping.zones import UTC, Zone

__all__ = ["PatientIdentity", "Produced", "Translation", "TranslationError", "Translator"]

# Segments that carry the message's envelope: read by the pipeline, never "unused".
ENVELOPE = loss.ENVELOPE
TEXT_TYPES = results.TEXT_TYPES
PROVENANCE_MESSAGE_SYSTEM = "urn:specialty-gateway:hl7v2-message"

# The names the pharmacy adapters below were written with.
_Run = Run
_direct = direct
_following = following
_order_groups = order_groups
_segments_in = segments_in


# -- adapters per message kind -------------------------------------------------------------------


def _orders(run: _Run) -> None:
    """Pharmacy orders become MedicationRequests, the others (OBR) ServiceRequests. An order of another
    kind (a diet order's ODS) makes nothing; its fields are reported as not mapped."""
    for order in _order_groups(run.root, "ORC"):
        request_id = _medication_request(run, order)
        if request_id is None:
            request_id = orders.service_order(run, order)
            if request_id is not None:
                run.order_refs[id(order)] = f"ServiceRequest/{request_id}"
        else:
            run.order_refs[id(order)] = f"MedicationRequest/{request_id}"
    _results_in_orders(run)


def _medication_request(run: _Run, order: Group) -> str | None:
    orc = _direct(order, "ORC")
    assert orc is not None
    body = [s for s, _ in _segments_in(order, lambda g: g.name.endswith("OBSERVATION"))]
    if not any(s.name in ("RXO", "RXE", "RXD") for s in body):
        return None  # not a pharmacy order (a lab ORM); its segments stay unused and are reported
    key = run.order_key(orc.get(2), orc.get(3), where=orc)
    if not any(s.name in ("RXO", "RXE") for s in body):
        # A dispense without the order's segments (RXO and RXE are optional in RDS^O13): its fills point at
        # the order ORC names, as the order message made it; no order is written from what is not there.
        return stable_id("MedicationRequest", *key)
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
        based_on = run.order_refs.get(id(order))
        orders.order_observations(run, order, {"reference": based_on} if based_on else None, key)


def _dispenses(run: _Run) -> None:
    for order in _order_groups(run.root, "ORC"):
        request_id = _medication_request(run, order)
        orc = _direct(order, "ORC")
        assert orc is not None
        key = run.order_key(orc.get(2), orc.get(3), where=orc)
        context = [s for s, _ in _segments_in(order, lambda g: g.name.endswith("OBSERVATION"))]
        for number, rxd in enumerate(order.segments("RXD"), start=1):
            scope = run.scope(
                # The order's other RXD are other fills: a repeated rule (identifier) would read them all.
                rxd,
                *_following(order, rxd, "NTE"),
                *[s for s in context if s.name not in ("NTE", "RXD")],
                run.message.msh,
            )
            dispense = run.apply("MedicationDispense", scope.add_group("ORDER", order))
            dispense["id"] = stable_id("MedicationDispense", *key, rxd.get(1).text or str(number))
            dispense["subject"] = {"reference": f"Patient/{run.current_patient(rxd)}"}
            if request_id:
                dispense["authorizingPrescription"] = [{"reference": f"MedicationRequest/{request_id}"}]
            run.produced.append(Produced(dispense, "replace", rxd))
        if request_id:
            run.order_refs[id(order)] = f"MedicationRequest/{request_id}"
    _results_in_orders(run)


def _patients(run: _Run) -> None:
    mode: Mode = "replace" if run.identity.demographics.get("adt") == "replace" else "fill"
    for segment in run.message.segments:
        if segment.name == "PID":
            patients.patient(run, segment, mode)
    results.loose_observations(run, set())


def _merge(run: _Run) -> None:
    pid = next((s for s in run.message.segments if s.name == "PID"), None)
    mrg = next((s for s in run.message.segments if s.name == "MRG"), None)
    if pid is None or mrg is None or not mrg.get(1).c(1):
        raise TranslationError(
            "A merge needs PID (survivor) and MRG-1 (prior identifier)", code="101", segment="MRG", field=1
        )
    survivor = patients.patient(run, pid, "fill")
    run.used.add(mrg.index)
    prior_key = patients.match_keys(mrg, run)  # MRG-1 (prior identifiers), read like PID-3
    if not prior_key:
        raise TranslationError("MRG-1 has no usable prior identifier", code="101", segment="MRG", field=1)
    prior = stable_id("Patient", *prior_key[0])
    if prior == survivor:
        raise TranslationError("MRG-1 names the surviving patient itself", code="205", segment="MRG", field=1)
    run.merge = (prior, survivor)
    run.merge_keys = prior_key


ADAPTERS: dict[str, Callable[[_Run], None]] = {
    "results": results.results,
    "pharmacy-order": _orders,
    "orders": _orders,
    "dispense": _dispenses,
    "patient": _patients,
    "merge": _merge,
}
# Whose demographics precedence (site key identity.demographics) an adapter's PIDs follow.
ADAPTER_KINDS = {
    "results": "results",
    "pharmacy-order": "orders",
    "orders": "orders",
    "dispense": "orders",
    "patient": "adt",
    "merge": "adt",
}
# The adapters whose messages must yield more than Patients (an ADT's product is its Patient).
_CLINICAL = ("results", "pharmacy-order", "orders", "dispense")

# What each segment converter's result depends on, so that results can be remembered (see rules.memoized).
SEGMENT_KEYS: dict[str, Callable[[Segment], Any]] = {
    "observation-value": lambda obx: (obx.enc, obx.raw(2), obx.raw(3), obx.raw(5), obx.raw(6)),
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

    def __init__(self, mappings: MappingSet, *, default_zone: Zone = UTC) -> None:
        self.mappings = mappings
        self.default_zone = default_zone  # for senders whose site sets no `timezone`
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
        # Never MSH-7's offset: it is right for the sending time only, not for a result from another season.
        zone = (site.timezone if site else None) or self.default_zone
        ctx = datatypes.Context(tables=tables, zone=zone)
        mappings = self._per_site[site.name] if site else self._base
        run = _Run(message, root, mappings, ctx, site)
        run.adapter_kind = ADAPTER_KINDS[definition.adapter]
        run.category = definition.category
        ADAPTERS[definition.adapter](run)
        if site is not None:
            _apply_site(site, run)
        if definition.adapter in _CLINICAL and all(
            p.resource["resourceType"] == "Patient" for p in run.produced
        ):
            marker = "OBR" if definition.adapter == "results" else "ORC"
            missing = "" if any(s.name == marker for s in message.segments) else f" (it has no {marker})"
            raise TranslationError(
                f"The {event} message yields nothing but its patient: no order or result the gateway could"
                f" map{missing}",
                code="101",
                segment=marker,
            )
        return Translation(
            event,
            run.produced,
            ctx.problems,
            loss.unused_segments(message, run.used),
            run.merge,
            site.name if site else None,
            unmapped=loss.unmapped_fields(message),
            patients=run.identities,
            identity=run.identity,
            reused_control_id=site.reused_control_id if site else "process",
            quarantine=run.quarantine,
            merge_keys=run.merge_keys,
        )


def _apply_site(site: Site, run: _Run) -> None:
    """A site's code replacements and Z-segment extensions, on the resources already produced."""
    for rule in site.codes:
        for produced in run.produced:
            resource = produced.resource
            if resource["resourceType"] != rule.get("resource", resource["resourceType"]):
                continue
            concept = resource.get(rule.get("element", "code"))
            if isinstance(concept, dict) and replace_coding(concept, rule):
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
