"""Forwarding what this gateway produces to an upstream FHIR server (pure logic; sending is in
gateway/service/subscriptions/delivery.py).

Each forwarding upstream has one internal Subscription (`forward-{name}`, channel type `fhir-forward`) on
a topic of its own that fires on every create/update/delete of the forwarded types: the subscription
outbox gives durability, order per upstream and retries. One event becomes one transaction Bundle:

    PUT Patient?identifier=sys|val      (the Patient the resource is about, when there is one)
    PUT Observation?identifier=sys|val  (the resource; its reference to the Patient points at the entry)

and a deletion `DELETE Observation?identifier=sys|val`, the identifier taken from the last version before
it. Conditional writes on an identifier make a re-send update (or delete) the same resource, never
duplicate. A resource without an identifier is given one (`RESOURCE_ID_SYSTEM`, `{Type}/{id}` here) in the
forwarded copy only.

`fhir-forward` is not an R4 channel type (`Subscription.channel.type` has a required binding), so the
Subscription says it the Subscriptions Backport IG's way for a custom channel: `channel.type` without a
value and, on `_type`, the `backport-channel-type` extension with a Coding of our CodeSystem.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any
from urllib.parse import quote

from gateway.types import JSON

GATEWAY_FHIR = "https://specialty-gateway.org/fhir"  # as gateway.routing.topics (a layer above)
FORWARD_CHANNEL = "fhir-forward"
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
CHANNEL_TYPE_EXTENSION = f"{BACKPORT}/backport-channel-type"
CHANNEL_TYPE_SYSTEM = f"{GATEWAY_FHIR}/CodeSystem/subscription-channel-type"
EVALUATOR = "resource-written"
RESOURCE_ID_SYSTEM = f"{GATEWAY_FHIR}/sid/resource-id"
_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, f"{GATEWAY_FHIR}/forward")
# Where a resource names the patient it is about, most specific first.
_PATIENT_ELEMENTS = ("subject", "for", "patient", "beneficiary")


def subscription_id(upstream: str) -> str:
    return f"forward-{upstream}"


def topic_url(upstream: str) -> str:
    return f"{GATEWAY_FHIR}/SubscriptionTopic/forward-{upstream}"


def forward_subscription(upstream: str, endpoint: str) -> JSON:
    """The internal Subscription; one event per notification keeps the upstream's writes in event order."""
    return {
        "resourceType": "Subscription",
        "id": subscription_id(upstream),
        "status": "requested",
        "reason": f"Forward to upstream {upstream} (from the upstreams file)",
        "criteria": topic_url(upstream),
        "channel": {
            "_type": {
                "extension": [
                    {
                        "url": CHANNEL_TYPE_EXTENSION,
                        "valueCoding": {"system": CHANNEL_TYPE_SYSTEM, "code": FORWARD_CHANNEL},
                    }
                ]
            },
            "endpoint": endpoint,
            "payload": "application/fhir+json",
            "extension": [
                {
                    "url": f"{BACKPORT}/backport-max-count",
                    "valuePositiveInt": 1,
                }
            ],
            "_payload": {
                "extension": [
                    {
                        "url": f"{BACKPORT}/backport-payload-content",
                        "valueCode": "id-only",
                    }
                ]
            },
        },
    }


def business_identifier(resource: JSON) -> tuple[str, str]:
    """The (system, value) a resource is matched on upstream: its first complete identifier, else ours."""
    identifiers = resource.get("identifier")
    if isinstance(identifiers, dict):  # e.g. an element that allows one only
        identifiers = [identifiers]
    for identifier in identifiers or []:
        if isinstance(identifier, dict) and identifier.get("system") and identifier.get("value"):
            return str(identifier["system"]), str(identifier["value"])
    return RESOURCE_ID_SYSTEM, f"{resource['resourceType']}/{resource['id']}"


def conditional_url(resource_type: str, system: str, value: str) -> str:
    return f"{resource_type}?identifier={quote(f'{system}|{value}', safe=':/')}"


def full_url(resource_type: str, resource_id: str) -> str:
    """Stable per local resource, so a re-sent Bundle is the same Bundle."""
    return f"urn:uuid:{uuid.uuid5(_NAMESPACE, f'{resource_type}/{resource_id}')}"


def patient_reference(resource: JSON) -> str | None:
    """`Patient/id` the resource is about, from its usual elements."""
    for element in _PATIENT_ELEMENTS:
        value = resource.get(element)
        reference = value.get("reference") if isinstance(value, dict) else None
        if isinstance(reference, str) and reference.startswith("Patient/") and reference.count("/") == 1:
            return reference
    return None


def _copy_for_upstream(resource: JSON, source_base: str) -> JSON:
    """Without our id and version bookkeeping; `meta.source` names the original (and stops loops: the
    puller and the forwarder never send a resource back to where it came from)."""
    out = copy.deepcopy(resource)
    out.pop("id", None)
    meta = {k: v for k, v in (out.pop("meta", None) or {}).items() if k in ("profile", "tag", "security")}
    meta["source"] = f"{source_base.rstrip('/')}/{resource['resourceType']}/{resource['id']}"
    out["meta"] = meta
    system, value = business_identifier(resource)
    if system == RESOURCE_ID_SYSTEM:
        out["identifier"] = [*(out.get("identifier") or []), {"system": system, "value": value}]
    return out


def _rewrite_references(node: Any, targets: dict[str, str]) -> Any:
    """References to resources in the Bundle point at their fullUrl; other relative references become
    logical ones (our resource-id identifier): the upstream does not hold them, so a literal one would
    dangle or be refused."""
    if isinstance(node, list):
        return [_rewrite_references(item, targets) for item in node]
    if not isinstance(node, dict):
        return node
    out = {k: _rewrite_references(v, targets) for k, v in node.items()}
    reference = node.get("reference")
    if isinstance(reference, str) and reference.count("/") == 1 and not reference.startswith(("#", "urn:")):
        if reference in targets:
            out["reference"] = targets[reference]
        elif "://" not in reference:
            del out["reference"]
            out.setdefault("type", reference.split("/", 1)[0])
            out.setdefault("identifier", {"system": RESOURCE_ID_SYSTEM, "value": reference})
    return out


def _entry(resource: JSON, source_base: str, targets: dict[str, str]) -> JSON:
    rtype, rid = resource["resourceType"], resource["id"]
    system, value = business_identifier(resource)
    return {
        "fullUrl": full_url(rtype, rid),
        "resource": _rewrite_references(_copy_for_upstream(resource, source_base), targets),
        "request": {"method": "PUT", "url": conditional_url(rtype, system, value)},
    }


def forward_bundle(resource: JSON, patient: JSON | None, source_base: str) -> JSON:
    """The transaction Bundle that writes `resource` (and `patient`, the Patient it references) upstream."""
    included = [r for r in (patient, resource) if r is not None]
    targets = {f"{r['resourceType']}/{r['id']}": full_url(r["resourceType"], r["id"]) for r in included}
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [_entry(r, source_base, targets) for r in included],
    }


def delete_bundle(last: JSON) -> JSON:
    """The transaction that deletes upstream what `last` (the version before the deletion) was written as."""
    system, value = business_identifier(last)
    url = conditional_url(last["resourceType"], system, value)
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"request": {"method": "DELETE", "url": url}}],
    }


def only_deletes(bundle: JSON) -> bool:
    """Deletions only: a 404 or 410 for them means the upstream does not hold them, which is done."""
    entries = bundle.get("entry") or []
    return bool(entries) and all((e.get("request") or {}).get("method") == "DELETE" for e in entries)


def delivered(status: int | None, deletion: bool) -> bool:
    return status is not None and (200 <= status < 300 or (deletion and status in (404, 410)))


def came_from(resource: JSON, upstream_base: str) -> bool:
    """Pulled from that upstream (meta.source under its base): forwarding it back would loop."""
    source = (resource.get("meta") or {}).get("source")
    base = upstream_base.rstrip("/")
    return isinstance(source, str) and (source == base or source.startswith(base + "/"))


def permanent(status: int | None) -> bool:
    """A refusal that a retry will not change: the event is recorded as failed and the lane moves on."""
    return status is not None and 400 <= status < 500 and status not in (408, 429)
