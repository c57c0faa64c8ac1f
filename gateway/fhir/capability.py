"""The CapabilityStatement: built from the same tables the server runs on, so it states only what is real."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from gateway.fhir.audit import capability_entry as audit_capability
from gateway.fhir.bulkdata import (
    BULK_CAPABILITY,
    EXPORT_OPERATION,
    GROUP_EXPORT_OPERATION,
    PATIENT_EXPORT_OPERATION,
)
from gateway.fhir.dates import format_instant, now_us
from gateway.fhir.searchparams import RESOURCE_TYPES, ParamType, params_for, reference_params

_INTERACTIONS = (
    "read",
    "vread",
    "update",
    "delete",
    "history-instance",
    "history-type",
    "create",
    "search-type",
)
_COMMON_PARAMS = [
    {"name": "_id", "type": "token", "definition": "http://hl7.org/fhir/SearchParameter/Resource-id"},
    {
        "name": "_lastUpdated",
        "type": "date",
        "definition": "http://hl7.org/fhir/SearchParameter/Resource-lastUpdated",
    },
]


def _resource_entry(rtype: str, supported_profiles: list[str]) -> dict[str, Any]:
    params = params_for(rtype)
    includes = [f"{rtype}:{p.name}" for p in params.values() if p.type is ParamType.REFERENCE]
    revincludes = [f"{src}:{p.name}" for src, p in reference_params() if not p.targets or rtype in p.targets]
    entry: dict[str, Any] = {
        "type": rtype,
        "profile": f"http://hl7.org/fhir/StructureDefinition/{rtype}",
        "interaction": [{"code": code} for code in _INTERACTIONS],
        "versioning": "versioned-update",
        "readHistory": True,
        "updateCreate": True,
        "conditionalCreate": True,
        "conditionalRead": "not-supported",
        "conditionalUpdate": True,
        "conditionalDelete": "single",
        "searchInclude": includes,
        "searchRevInclude": sorted(set(revincludes)),
        "searchParam": _COMMON_PARAMS
        + [
            {
                "name": p.name,
                "type": p.type.value,
                "definition": f"http://hl7.org/fhir/SearchParameter/{rtype}-{p.name}",
            }
            for p in params.values()
        ],
    }
    if supported_profiles:
        entry["supportedProfile"] = supported_profiles
    return entry


_BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport"
_TOPIC_CANONICAL = f"{_BACKPORT}/StructureDefinition/capabilitystatement-subscriptiontopic-canonical"


def _with_subscriptions(entry: dict[str, Any], topic_urls: list[str]) -> dict[str, Any]:
    """The Subscription entry as the R4 Subscriptions Backport IG asks: profile, operations, topics."""
    entry["supportedProfile"] = [f"{_BACKPORT}/StructureDefinition/backport-subscription"]
    entry["extension"] = [{"url": _TOPIC_CANONICAL, "valueCanonical": url} for url in topic_urls]
    entry["documentation"] = (
        "Topic-based subscriptions (R4 backport). Topics are readable (R4B SubscriptionTopic JSON) at"
        " [base]/SubscriptionTopic and [base]/SubscriptionTopic/{id}."
    )
    entry["operation"] = [
        {"name": "status", "definition": f"{_BACKPORT}/OperationDefinition/backport-subscription-status"},
        {"name": "events", "definition": f"{_BACKPORT}/OperationDefinition/backport-subscription-events"},
        {
            "name": "get-ws-binding-token",
            "definition": f"{_BACKPORT}/OperationDefinition/backport-subscription-get-ws-binding-token",
        },
    ]
    return entry


_GATEWAY_OPERATIONS = "https://specialty-gateway.org/fhir/OperationDefinition"
# Prior-authorization operations (README, "Prior authorization with payers"); pharmacist operations
# (README, "Pharmacist matching and assignment", "Patient $timeline", "Worklist ($worklist)").
_OPERATIONS = {
    "MedicationRequest": ["request-prior-auth"],
    "Patient": ["match-pharmacist", "timeline"],
    "Task": ["appeal", "cancel", "pa-turnaround", "worklist"],
}


# Standard operations (their definitions are the specification's).
_STANDARD_OPERATIONS = {
    "Patient": [
        ("everything", "http://hl7.org/fhir/OperationDefinition/Patient-everything"),
        ("export", PATIENT_EXPORT_OPERATION),
    ],
    "Group": [("export", GROUP_EXPORT_OPERATION)],
}


def _with_operations(entry: dict[str, Any]) -> dict[str, Any]:
    operations = [
        {"name": n, "definition": url} for n, url in _STANDARD_OPERATIONS.get(entry["type"], [])
    ] + [{"name": n, "definition": f"{_GATEWAY_OPERATIONS}/{n}"} for n in _OPERATIONS.get(entry["type"], [])]
    if operations:
        entry["operation"] = operations
    return entry


_MEASURE_OPERATION = "http://hl7.org/fhir/OperationDefinition/Measure-evaluate-measure"


def _measure_entry() -> dict[str, Any]:
    """Measure: the pharmacist measures (profiles/Measure-*.json), read-only, and $evaluate-measure."""
    return {
        "type": "Measure",
        "profile": "http://hl7.org/fhir/StructureDefinition/Measure",
        "documentation": (
            "The pharmacist measures (PDC, time to first dose, PA turnaround, alert response, monitoring on"
            " time), read-only, to any valid token. $evaluate-measure (periodStart, periodEnd, subject"
            " Patient/{id} or Practitioner/{id}, practitioner, reportType subject | population) needs read on"
            " every type the measure reads."
        ),
        "interaction": [{"code": "read"}, {"code": "search-type"}],
        "versioning": "no-version",
        "searchParam": [
            {"name": "url", "type": "uri", "definition": "http://hl7.org/fhir/SearchParameter/Measure-url"}
        ],
        "operation": [{"name": "evaluate-measure", "definition": _MEASURE_OPERATION}],
    }


def capability_statement(
    *,
    base_url: str,
    version: str,
    token_url: str,
    profiles_for: Callable[[str], list[str]],
    topic_urls: list[str] | None = None,
) -> dict[str, Any]:
    resources = [_with_operations(_resource_entry(t, profiles_for(t))) for t in RESOURCE_TYPES]
    resources = [
        _with_subscriptions(r, topic_urls or []) if r["type"] == "Subscription" else r for r in resources
    ]
    resources.append(audit_capability())
    resources.append(_measure_entry())
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": format_instant(now_us())[:10],
        "publisher": "specialty-gateway",
        "kind": "instance",
        "instantiates": [BULK_CAPABILITY],  # Bulk Data Access: system, Patient and Group $export
        "software": {"name": "specialty-gateway", "version": version},
        "implementation": {"description": "Specialty medication integration gateway", "url": base_url},
        "fhirVersion": "4.0.1",
        "format": ["application/fhir+json", "json"],
        "rest": [
            {
                "mode": "server",
                "security": {
                    "cors": False,
                    "service": [
                        {
                            "coding": [
                                {
                                    "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                                    "code": "SMART-on-FHIR",
                                }
                            ]
                        }
                    ],
                    "extension": [
                        {
                            "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                            "extension": [{"url": "token", "valueUri": token_url}],
                        }
                    ],
                    "description": "OAuth 2.0 client credentials (SMART Backend Services), SMART v2 scopes.",
                },
                "resource": resources,
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
                "operation": [{"name": "export", "definition": EXPORT_OPERATION}],
            }
        ],
    }
