"""What the demo prints when the story is in: who the matching chose and why, where to look next, and how
to get a token to look. Text for the terminal, or one JSON document (`--json`). Both are the operator's:
they hold the demo's invented names, and go to the terminal, never to a log."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from gateway.demo.feed import PatientResult, Result

JSON = dict[str, Any]


@dataclass(frozen=True, slots=True)
class Access:
    """How the operator gets a token: the read-only client the self-served demo registered (secret shown
    here once), or the client the operator gave (`--client-id`; its secret is not echoed)."""

    client_id: str
    client_secret: str | None
    scope: str | None


def links(result: Result, patient: PatientResult) -> list[tuple[str, str]]:
    fhir = f"{result.base_url}/fhir"
    found: list[tuple[str, str]] = []
    if patient.assigned_practitioner:
        who = patient.assigned_name or patient.assigned_practitioner
        found.append((f"worklist of {who}", f"{fhir}/Task/$worklist?owner={patient.assigned_practitioner}"))
    found.append(("timeline", f"{fhir}/{patient.patient}/$timeline"))
    found.append(("everything", f"{fhir}/{patient.patient}/$everything"))
    for alert in patient.alerts:
        found.append((f"alert ({alert['rule']}, {alert['priority']})", f"{fhir}/{alert['task']}"))
    for plan in patient.care_plans:
        found.append(("monitoring calendar", f"{fhir}/{plan}"))
    if patient.prior_auth:
        found.append(
            (f"prior authorization ({patient.prior_auth['status']})", f"{fhir}/{patient.prior_auth['task']}")
        )
    if patient.care_team:
        found.append(("pharmacist assignment", f"{fhir}/{patient.care_team}"))
    if patient.intervention:
        found.append(("pharmacist's call", f"{fhir}/{patient.intervention}"))
    return found


def as_json(result: Result, access: Access, where: JSON) -> JSON:
    return {
        "run": result.run,
        **where,
        "gateway": {"baseUrl": result.base_url, "fhir": f"{result.base_url}/fhir", "mllp": result.mllp},
        "priorAuthorization": result.prior_auth,
        "client": {
            "client_id": access.client_id,
            "client_secret": access.client_secret,
            "scope": access.scope,
        },
        "tokenUrl": f"{result.base_url}/auth/token",
        "pharmacists": list(result.pharmacists.values()),
        "patients": [
            {
                "key": p.key,
                "name": p.person.name,
                "patient": p.patient,
                "mrn": {"system": p.person.identifier["system"], "value": p.person.mrn},
                "state": p.person.state,
                "language": p.person.language,
                "drug": p.drug,
                "order": p.order,
                "orderSource": p.order_source,
                "coverage": f"Coverage/{p.coverage}",
                "assigned": {
                    "careTeam": p.care_team,
                    "practitionerRole": p.assigned_role,
                    "practitioner": p.assigned_practitioner,
                    "name": p.assigned_name,
                },
                "ranking": [
                    {
                        "rank": c.rank,
                        "name": c.name,
                        "practitioner": c.practitioner,
                        "practitionerRole": c.role,
                        "eligible": c.eligible,
                        "score": c.score,
                        "reasons": [{"code": code, "text": text} for code, text in c.reasons],
                    }
                    for c in p.ranking
                ],
                "alerts": p.alerts,
                "carePlans": p.care_plans,
                "priorAuthorization": p.prior_auth,
                "intervention": p.intervention,
                "worklist": p.worklist,
                "links": dict((label, url) for label, url in links(result, p)),
            }
            for p in result.patients
        ],
    }


def text(result: Result, access: Access, where: list[str]) -> str:
    lines = ["", "=" * 100, f"The story is in (run {result.run}).", *where, ""]
    lines.append(
        "Pharmacist matching: the gateway assigned a pharmacist on each patient's first specialty order;"
    )
    lines.append("$match-pharmacist (without assign) ranks the candidates again, with its reasons:")
    for patient in result.patients:
        person = patient.person
        lines.append("")
        lines.append(
            f"  {person.name} ({patient.patient}): prefers {person.language_name} ({person.language}),"
            f" lives in {person.state}, {patient.drug}"
        )
        if patient.assigned_role:
            lines.append(
                f"    assigned: {patient.assigned_name or patient.assigned_practitioner}"
                f" ({patient.assigned_role}) in {patient.care_team}"
            )
        else:
            lines.append("    assigned: nobody (see the patient's unassigned-patient work item)")
        for candidate in patient.ranking:
            eligible = "eligible" if candidate.eligible else "not eligible"
            lines.append(
                f"    {candidate.rank}. {candidate.name:<18} score {candidate.score:5.1f}  {eligible}"
            )
            lines += [f"         {code}: {why}" for code, why in candidate.reasons]
        if patient.prior_auth:
            pa = patient.prior_auth
            detail = f", authorization {pa['number']}" if pa.get("number") else ""
            period = pa.get("period") or {}
            if period:
                detail += f" valid {period.get('start')} to {period.get('end')}"
            lines.append(f"    prior authorization: {' -> '.join(pa['moves'])}{detail}")
        for alert in patient.alerts:
            lines.append(
                f"    alert {alert['task']} ({alert['rule']}, {alert['priority']}) owned by {alert['owner']}"
            )
        for row in patient.worklist:
            lines.append(
                f"    on the worklist: {row['rank']}. {row['kind']} ({row['severity']}): {row['why']}"
            )
    lines += ["", "Where to look next (GET, with a token):"]
    for patient in result.patients:
        lines.append(f"  {patient.person.name}")
        lines += [f"    {label:<36} {url}" for label, url in links(result, patient)]
    token_url = f"{result.base_url}/auth/token"
    secret = access.client_secret or "$CLIENT_SECRET"
    lines += ["", "A token:"]
    if access.client_secret:
        lines.append(f"  client_id      {access.client_id}")
        lines.append(f"  client_secret  {access.client_secret}   (shown once; only its hash is stored)")
        lines.append(f"  scope          {access.scope}")
    else:
        lines.append(f"  with the client you gave ({access.client_id}) and its secret")
    first = links(result, result.patients[0])[1][1] if result.patients else f"{result.base_url}/fhir/Patient"
    lines += [
        f"  TOKEN=$(curl -s -u '{access.client_id}:{secret}' -d grant_type=client_credentials {token_url} \\",
        "          | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"access_token\"])')",
        f"  curl -s -H \"Authorization: Bearer $TOKEN\" '{first}'",
        "",
    ]
    return "\n".join(lines)
