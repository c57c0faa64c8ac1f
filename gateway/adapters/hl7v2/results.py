"""Results (ORU^R01, OUL^R22) and the OBX of other messages: reports, Observations, specimens, orders.

Per order (OBR): the ServiceRequest the results answer (filled in, never overwritten: the order message
knows the order better), a Specimen per SPM, a DiagnosticReport, and an Observation per coded OBX.

Observation ids come from what identifies a result in HL7 (the V2-to-FHIR IG's approach): the filler
order number, the OBX-3 code and the OBX-4 sub-id. A later version of a report that orders its OBX
differently, or leaves one out, therefore updates the right Observations; one left out stays as it was
and the pipeline flags it. Report text (TX/FT/ST OBX without a code) and embedded documents (ED: PDFs,
images) become the report's presentedForm.
"""

from __future__ import annotations

import base64
from typing import Any

from gateway.adapters.hl7v2 import datatypes, patients
from gateway.adapters.hl7v2.er7 import Segment, Value
from gateway.adapters.hl7v2.run import Run, direct, following, order_groups, segments_in, walk
from gateway.adapters.hl7v2.structure import Group
from gateway.types import JSON

# OBX value types whose content is text: without a code they are lines of a report, not Observations.
TEXT_TYPES = {"TX", "FT", "ST"}
DR_NOTE_EXTENSION = "http://hl7.org/fhir/5.0/StructureDefinition/extension-DiagnosticReport.note"
# R4 Observations have no valueAttachment; R5's element travels in its cross-version extension.
R5_VALUE_EXTENSION = "http://hl7.org/fhir/5.0/StructureDefinition/extension-Observation.value"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
SECTION_SYSTEM = "http://terminology.hl7.org/CodeSystem/v2-0074"
MDC = "urn:iso:std:iso:11073:10101"
_CATEGORY_DISPLAY = {
    "laboratory": "Laboratory",
    "vital-signs": "Vital Signs",
    "imaging": "Imaging",
    "procedure": "Procedure",
    "therapy": "Therapy",
    "exam": "Exam",
    "survey": "Survey",
    "social-history": "Social History",
    "activity": "Activity",
}


def results(run: Run) -> None:
    """The `results` adapter: one report per OBR, then the OBX that belong to no order."""
    orders = order_groups(run.root, "OBR")
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
    loose_observations(run, set(obx_order))


# -- orders and specimens ------------------------------------------------------------------------


def service_request(run: Run, order: Group, orc: Segment | None, obr: Segment, mode: Any) -> str:
    """The ServiceRequest of an order (ORC+OBR), keyed by the placer's order number (else the filler's)."""
    key = run.order_key(_placer(orc, obr), _filler(orc, obr), where=obr)
    context = [s for s, _ in segments_in(order, _not_nested_order)]
    scope = run.scope(*[s for s in context if s.name in ("ORC", "OBR", "TQ1", "NTE") and _of_order(s, obr)])
    request = run.apply("ServiceRequest", scope)
    request["id"] = run.stable("ServiceRequest", *key)
    request["subject"] = {"reference": f"Patient/{patients.patient_of(run, obr)}"}
    run.add(request, mode, orc or obr)
    return str(request["id"])


def _of_order(segment: Segment, obr: Segment) -> bool:
    """NTEs of the order are those right after its OBR (the NTEs after an OBX are that result's)."""
    return segment.name != "NTE" or segment.index > obr.index


def _not_nested_order(group: Group) -> bool:
    return group.name.endswith(("OBSERVATION", "SPECIMEN", "PRIOR_RESULT"))


def _placer(orc: Segment | None, obr: Segment) -> Value:
    placer = obr.get(2)
    if not placer.c(1).strip() and orc is not None:
        placer = orc.get(2)
    return placer


def _filler(orc: Segment | None, obr: Segment) -> Value:
    filler = obr.get(3)
    if not filler.c(1).strip() and orc is not None:
        filler = orc.get(3)
    return filler


def specimens_of(order: Group, ancestors: tuple[Group, ...]) -> list[Segment]:
    """The SPM segments of an order: in its SPECIMEN groups (ORU), or the SPECIMEN it sits in (OUL)."""
    found = [spm for sub in order.find("SPECIMEN") if (spm := sub.segment("SPM")) is not None]
    if found:
        return found
    for ancestor in reversed(ancestors):
        spm = ancestor.segment("SPM")
        if spm is not None:
            return [spm]
    return []


def specimen(run: Run, spm: Segment, order_key: tuple[str, ...], parent: Group | None) -> str:
    """A Specimen per SPM, keyed by its specimen id (SPM-2) or else its place in the order."""
    number = spm.peek(2)
    placer, filler = number.part(1), number.part(2)
    chosen = filler if filler.c(1).strip() else placer
    if chosen.c(1).strip():
        key: tuple[str, ...] = (chosen.c(2) or chosen.c(3) or f"facility:{run.facility}", chosen.c(1).strip())
    else:
        key = (*order_key, "specimen", spm.get(1).c(1) or str(spm.index))
    notes = following(parent, spm, "NTE") if parent is not None else []
    resource = run.apply("Specimen", run.scope(spm, *notes))
    resource["id"] = run.stable("Specimen", *key)
    resource["subject"] = {"reference": f"Patient/{patients.patient_of(run, spm)}"}
    if any(e.get("url") == datatypes.SPECIMEN_REJECT_REASON for e in resource.get("extension", [])):
        resource["status"] = "unsatisfactory"  # a rejected specimen, whatever SPM-20 says
    run.add(resource, "replace", spm)
    return str(resource["id"])


# -- categories ----------------------------------------------------------------------------------


def _section_category(run: Run, obr: Segment | None) -> str | None:
    """The category OBR-24's diagnostic service section stands for (HL7 table 0074)."""
    section = obr.get(24).c(1).strip() if obr is not None else ""
    found = run.ctx.tables.map("diagnostic-service-section", section) if section else None
    return found if isinstance(found, str) else None


def _default_category(run: Run) -> str | None:
    if run.site is not None and run.site.category:
        return run.site.category
    return run.category


def _category_code(run: Run, obr: Segment | None, obx: Segment) -> str | None:
    """A vital sign by its code (whatever report carries it), else OBR-24's section, else the site's or
    the message kind's default."""
    coding = obx.peek(3)
    key = (coding.raw, obx.peek(6).raw, id(run.ctx.tables))
    vital = _VITAL.get(key)
    if vital is None:
        system = datatypes.coding_system(coding.c(3), run.ctx) or ""
        by_code = run.ctx.tables.map("vital-sign-codes", f"{system}|{coding.c(1).strip()}")
        # ISO/IEEE 11073 (MDC) codes or units: a device's own nomenclature, what monitors measure.
        vital = system == MDC or _mdc_units(obx, run) or by_code == "vital-signs"
        if len(_VITAL) >= 10_000:
            _VITAL.clear()
        _VITAL[key] = vital
    if vital:
        return "vital-signs"
    return _section_category(run, obr) or _default_category(run)


# Whether an OBX-3 code and OBX-6 units make a vital sign, per code table set (feeds repeat codes).
_VITAL: dict[tuple[str, str, int], bool] = {}


def _mdc_units(obx: Segment, run: Run) -> bool:
    """Units coded in MDC: the value came from a device's own nomenclature."""
    units = obx.peek(6)
    return bool(units.c(1).strip()) and datatypes.coding_system(units.c(3), run.ctx) == MDC


def category(code: str) -> list[JSON]:
    coding = {"system": OBSERVATION_CATEGORY, "code": code}
    if code in _CATEGORY_DISPLAY:
        coding["display"] = _CATEGORY_DISPLAY[code]
    return [{"coding": [coding]}]


# -- observations --------------------------------------------------------------------------------


def result_key(obx: Segment) -> tuple[str, str]:
    """What identifies a result within its order: the OBX-3 code (with its coding system) and OBX-4."""
    code = obx.peek(3)
    identifier = code.c(1).strip() or code.c(2).strip() or code.c(9).strip()
    return f"{code.c(3).strip()}|{identifier}", obx.peek(4).c(1).strip()


class Results:
    """The Observations of one order, keyed by code and sub-id; a key seen twice is told apart."""

    def __init__(self, run: Run, order_key: tuple[str, ...]) -> None:
        self.run = run
        self.order_key = order_key
        self.seen: dict[tuple[str, str], int] = {}

    def key(self, obx: Segment) -> tuple[str, ...]:
        code, sub_id = result_key(obx)
        count = self.seen.get((code, sub_id), 0) + 1
        self.seen[(code, sub_id)] = count
        if count == 1:
            return (*self.order_key, "obx", code, sub_id)
        self.run.ctx.report(
            f"OBX#{obx.index + 1}: code {code.split('|')[-1]!r} sub-id {sub_id!r} repeats in its order;"
            f" kept apart as occurrence {count} (an OBX-4 sub-id would identify it)"
        )
        return (*self.order_key, "obx", code, sub_id, str(count))


def observation(
    run: Run,
    obx: Segment,
    parent: Group,
    context: list[Segment | None],
    key: tuple[str, ...],
    *,
    obr: Segment | None = None,
    links: JSON | None = None,
) -> JSON | None:
    """The Observation of an OBX, or None for an OBX without OBX-3 (no code: not an Observation)."""
    if not obx.get(3):
        run.ctx.problems.append(
            f"OBX#{obx.index + 1} has no observation identifier (OBX-3)"
            + ("; its text is in the report's presentedForm" if obx.get(2).c(1) in TEXT_TYPES else "")
        )
        return None
    scope = run.scope(obx, *following(parent, obx, "NTE"), *context)
    resource = run.apply("Observation", scope)
    resource["id"] = run.stable("Observation", *key)
    code = _category_code(run, obr, obx)
    if code:
        resource["category"] = category(code)
    resource["subject"] = {"reference": f"Patient/{patients.patient_of(run, obx)}"}
    resource.update(links or {})
    performer = performing_organization(run, obx)
    if performer is not None:
        resource.setdefault("performer", []).append(performer)
    if not any(k.startswith("value") for k in resource) and "component" not in resource:
        resource["dataAbsentReason"] = {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/data-absent-reason", "code": "unknown"}
            ]
        }
    _order_keys(resource)
    run.add(resource, "replace", obx)
    return resource


def _order_keys(resource: JSON) -> None:
    """Elements in the order FHIR lists them (links added after mapping go where a reader expects)."""
    order = ("basedOn", "status", "category", "code", "subject", "effectiveDateTime", "issued", "performer")
    head: JSON = {k: resource.pop(k) for k in ("resourceType", "id", "extension") if k in resource}
    ordered = {k: resource.pop(k) for k in order if k in resource}
    rest = dict(resource)
    resource.clear()
    resource.update(head, **ordered, **rest)


def performing_organization(run: Run, obx: Segment) -> JSON | None:
    """The Organization that performed a result (OBX-23/24, OBX-15), as a reference for `performer`."""
    if not (obx.peek(23) or obx.peek(15)):
        return None
    resource = run.apply("Organization", run.scope(obx))
    identifiers = resource.get("identifier") or []
    if identifiers:
        first = identifiers[0]
        key: tuple[str, ...] = (str(first.get("system", f"facility:{run.facility}")), str(first["value"]))
    elif resource.get("name"):
        key = ("name", f"facility:{run.facility}", str(resource["name"]))
    else:
        return None
    resource["id"] = run.stable("Organization", *key)
    run.add(resource, "fill", obx)
    reference: JSON = {"reference": f"Organization/{resource['id']}"}
    if resource.get("name"):
        reference["display"] = resource["name"]
    return reference


def _attachment(run: Run, resource: JSON, obx: Segment) -> JSON | None:
    """An embedded document (ED) taken out of an Observation, titled with the OBX-3 text."""
    attachment: JSON | None = resource.pop("valueAttachment", None)
    if attachment is None:
        return None
    label = obx.peek(3).c(2).strip() or obx.peek(3).c(1).strip()
    if label:
        attachment["title"] = label
    return attachment


def _report(run: Run, order: Group, ancestors: tuple[Group, ...], obx_order: dict[int, Group]) -> None:
    obr = direct(order, "OBR")
    orc = direct(order, "ORC")
    assert obr is not None
    spms = specimens_of(order, ancestors)
    report_key = run.order_key(_placer(orc, obr), _filler(orc, obr), obr.peek(4).c(1), where=obr)
    results_key = run.filler_key(_filler(orc, obr), _placer(orc, obr), where=obr)
    request_id = service_request(run, order, orc, obr, "fill")
    specimen_ids = {
        spm.index: specimen(run, spm, results_key, _parent_of(order, ancestors, spm)) for spm in spms
    }
    based_on = [{"reference": f"ServiceRequest/{request_id}"}]
    results = Results(run, results_key)
    observations: list[JSON] = []
    documents: list[JSON] = []
    lines: list[str] = []
    for segment, parent in segments_in(order):
        if segment.name != "OBX" or obx_order.get(segment.index) is not order:
            continue
        spm = _specimen_for(segment, spms)
        links: JSON = {"basedOn": based_on}
        if spm is not None:
            links["specimen"] = {"reference": f"Specimen/{specimen_ids[spm.index]}"}
        obs = observation(run, segment, parent, [obr, orc, spm], results.key(segment), obr=obr, links=links)
        if obs is None:
            if segment.get(2).c(1) in TEXT_TYPES:
                lines += [datatypes.free_text(rep, run.ctx) for rep in segment.repetitions(5)] or [""]
            continue
        document = _attachment(run, obs, segment)
        if document is not None:
            # A document is the report's rendition, not a result: it goes to presentedForm.
            documents.append(document)
            run.discard(obs)
            continue
        observations.append(obs)
    report = run.apply("DiagnosticReport", run.scope(obr, orc, *spms))
    report["id"] = run.stable("DiagnosticReport", *report_key)
    report["basedOn"] = based_on
    report["subject"] = {"reference": f"Patient/{patients.patient_of(run, obr)}"}
    if "category" not in report:
        code = _section_category(run, obr) or _default_category(run)
        if code == "laboratory":
            report["category"] = [
                {"coding": [{"system": SECTION_SYSTEM, "code": "LAB", "display": "Laboratory"}]}
            ]
    if specimen_ids:
        report["specimen"] = [{"reference": f"Specimen/{sid}"} for sid in specimen_ids.values()]
    if observations:
        report["result"] = [{"reference": f"Observation/{o['id']}"} for o in observations]
    notes = [datatypes.annotation(n, run.ctx) for n in following(order, obr, "NTE")]
    if any(notes):
        report["extension"] = [{"url": DR_NOTE_EXTENSION, "valueAnnotation": n} for n in notes if n]
    forms = list(documents)
    if lines:
        text = "\n".join(lines)
        forms.insert(
            0,
            {
                "contentType": "text/plain",
                "data": base64.b64encode(text.encode()).decode(),
                "title": "Report text",
            },
        )
    if forms:
        report["presentedForm"] = forms
    run.add(report, "replace", obr)


def _parent_of(order: Group, ancestors: tuple[Group, ...], spm: Segment) -> Group | None:
    for group in (order, *order.find("SPECIMEN"), *ancestors):
        if spm in group.items:
            return group
    return None


def _specimen_for(obx: Segment, spms: list[Segment]) -> Segment | None:
    """The specimen a result is about: the last SPM before it (OUL, ORU specimen groups), else the first."""
    before = [spm for spm in spms if spm.index < obx.index]
    if before:
        return before[-1]
    return spms[0] if spms else None


def loose_observations(run: Run, placed: set[int]) -> None:
    """OBX outside any order (patient observations, ADT vitals): Observations keyed by patient and code."""
    keys: dict[tuple[str, str], Results] = {}
    sent = run.message.msh.peek(7).c(1)
    for segment, path in walk(run.root):
        if segment.name != "OBX" or segment.index in placed:
            continue
        parent = path[-1]
        patient = patients.patient_of(run, segment)
        # A measurement outside any order (an ADT's weight) is one per time: a later one is new, no update.
        when = segment.peek(14).c(1) or sent
        results = keys.setdefault(
            (patient, when), Results(run, ("patient", patient, run.message.sender, when))
        )
        obs = observation(run, segment, parent, [], results.key(segment))
        if obs is None:
            continue
        attachment = obs.pop("valueAttachment", None)
        if attachment is not None:
            obs["extension"] = [
                *obs.get("extension", []),
                {"url": R5_VALUE_EXTENSION, "valueAttachment": attachment},
            ]
            obs["dataAbsentReason"] = {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/data-absent-reason",
                        "code": "unsupported",
                    }
                ]
            }
