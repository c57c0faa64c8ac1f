"""Non-pharmacy orders (ORM^O01 and OML^O21 with OBR: lab tests, imaging) and the OBX inside any order.

An order becomes a ServiceRequest (order numbers, test code, requester, priority, reason, notes, status
from ORC-1/ORC-5) with its specimens; the ORU that answers it later links to the same ServiceRequest,
because both derive its id from the placer's order number. OBX inside an order (a weight, a level that
justifies the order) become Observations based on that order.
"""

from __future__ import annotations

from gateway.adapters.hl7v2 import results
from gateway.adapters.hl7v2.er7 import Segment
from gateway.adapters.hl7v2.run import Mode, Run, direct, segments_in
from gateway.adapters.hl7v2.structure import Group
from gateway.types import JSON


def order_request(run: Run, order: Group) -> Segment | None:
    """The OBR of an order group (directly, or in its ORDER_DETAIL / OBSERVATION_REQUEST sub-group)."""
    obr = direct(order, "OBR")
    if obr is not None:
        return obr
    for segment, _ in segments_in(order, results._not_nested_order):
        if segment.name == "OBR":
            return segment
    return None


def action_mode(run: Run, orc: Segment) -> Mode:
    """Whether an ORC-1 event replaces the order held (new, update) or only reports a status."""
    action = run.ctx.tables.map("order-control", orc.get(1).c(1))
    return "fill" if isinstance(action, dict) and action.get("action") == "status-only" else "replace"


def service_order(run: Run, order: Group) -> str | None:
    """The ServiceRequest of a non-pharmacy order, with its specimens; None when the group has no OBR."""
    orc = direct(order, "ORC")
    obr = order_request(run, order)
    if orc is None or obr is None:
        return None
    request_id = results.service_request(run, order, orc, obr, action_mode(run, orc))
    request = next(p.resource for p in run.produced if p.resource["id"] == request_id)
    key = run.filler_key(results._filler(orc, obr), results._placer(orc, obr), where=obr)
    specimens = [
        results.specimen(run, spm, key, parent) for spm, parent in segments_in(order) if spm.name == "SPM"
    ]
    if specimens:
        request["specimen"] = [{"reference": f"Specimen/{sid}"} for sid in specimens]
    return request_id


def order_observations(run: Run, order: Group, based_on: JSON | None, key: tuple[str, ...]) -> None:
    """OBX inside an order: Observations of that order, keyed by order number, code and sub-id."""
    keyed = results.Results(run, key)
    orc = direct(order, "ORC")
    for segment, parent in segments_in(order):
        if segment.name == "OBX":
            links: JSON = {"basedOn": [based_on]} if based_on else {}
            results.observation(run, segment, parent, [orc], keyed.key(segment), links=links)
