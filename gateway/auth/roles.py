"""The roles of people who log in, as data: what each may see, and the rules for a user's account.

Only data and pure helpers: gateway/service/access/people.py applies them (the console and the FHIR API
used with a user's token).

- pharmacist: the patients on their CareTeams (through their Practitioner) and unassigned work; their
  worklist, alerts, interventions, with clinical values.
- coordinator: the prior-authorization work (the PA board: Tasks, payer answers, appeals).
- analyst: the HL7 v2 message log (masked) and subscriptions, without clinical values.
- auditor: the AuditEvents.
- admin: everything, users included.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum


class Role(StrEnum):
    PHARMACIST = "pharmacist"
    COORDINATOR = "coordinator"
    ANALYST = "analyst"
    ADMIN = "admin"
    AUDITOR = "auditor"


class Patients(StrEnum):
    """Which patients' records a role reaches."""

    NONE = "none"
    CARE_TEAM = "care-team"  # the patients on CareTeams naming the user's Practitioner
    PRIOR_AUTH = "prior-auth"  # the patients with prior-authorization work
    ALL = "all"


class Area(StrEnum):
    """What a role may see besides patients' records."""

    WORKLIST = "worklist"  # $worklist, alerts, monitoring Tasks, interventions (of its patients)
    UNASSIGNED_WORK = "unassigned-work"  # work on patients on no pharmacist's CareTeam yet
    PA_WORK = "pa-work"  # prior-authorization Tasks, payer answers, appeals
    CLINICAL_VALUES = "clinical-values"  # result values, notes, raw HL7 v2 content
    MESSAGE_LOG = "message-log"  # the HL7 v2 message log (masked without clinical-values)
    SUBSCRIPTIONS = "subscriptions"  # every Subscription, its status and delivery log
    METRICS = "metrics"  # MeasureReports and gauges
    AUDIT_EVENTS = "audit-events"  # the audit trail
    USERS = "users"  # people's accounts and roles


@dataclass(frozen=True, slots=True)
class RoleRules:
    role: Role
    patients: Patients
    areas: frozenset[Area]
    needs_practitioner: bool  # acts as a Practitioner (CareTeams, fhirUser, AuditEvent agent)
    description: str


ROLES: dict[Role, RoleRules] = {
    r.role: r
    for r in (
        RoleRules(
            Role.PHARMACIST,
            Patients.CARE_TEAM,
            frozenset({Area.WORKLIST, Area.UNASSIGNED_WORK, Area.CLINICAL_VALUES, Area.METRICS}),
            needs_practitioner=True,
            description="patients on their CareTeams, plus unassigned work",
        ),
        RoleRules(
            Role.COORDINATOR,
            Patients.PRIOR_AUTH,
            frozenset({Area.PA_WORK}),
            needs_practitioner=False,
            description="prior-authorization work",
        ),
        RoleRules(
            Role.ANALYST,
            Patients.NONE,
            frozenset({Area.MESSAGE_LOG, Area.SUBSCRIPTIONS, Area.METRICS}),
            needs_practitioner=False,
            description="the message log and subscriptions, without clinical values",
        ),
        RoleRules(
            Role.ADMIN,
            Patients.ALL,
            frozenset(Area),
            needs_practitioner=False,
            description="everything",
        ),
        RoleRules(
            Role.AUDITOR,
            Patients.NONE,
            frozenset({Area.AUDIT_EVENTS}),
            needs_practitioner=False,
            description="the AuditEvents",
        ),
    )
}


# What a person's console session may do, as scopes (`Grants.for_person`); their reach (which patients)
# narrows it further. Writes are only those the console's actions make: alert moves and interventions for
# a pharmacist, PA actions for a coordinator.
CONSOLE_SCOPES: dict[Role, str] = {
    Role.PHARMACIST: "user/*.rs user/Task.u user/Communication.c",
    Role.COORDINATOR: "user/*.rs user/Task.cu user/Claim.c user/Communication.c",
    # Subscription read and update: the console's subscriptions page and its Reactivate (an update with
    # `status: requested`, as a client reactivates its own).
    Role.ANALYST: "user/Subscription.rus hl7v2/messages.read hl7v2/messages.reprocess subscriptions/admin",
    Role.AUDITOR: "audit/events.read",
    Role.ADMIN: (
        "user/*.cruds hl7v2/messages.read hl7v2/messages.reprocess subscriptions/admin audit/events.read"
    ),
}


class InvalidAccount(ValueError):
    """A user name, role or Practitioner reference that cannot be used; the message says which and why."""


def parse_role(text: str) -> Role:
    try:
        return Role(text.strip().lower())
    except ValueError:
        names = ", ".join(r.value for r in Role)
        raise InvalidAccount(f"unknown role {text!r} (one of: {names})") from None


def may_see(role: Role, area: Area) -> bool:
    return area in ROLES[role].areas


def sees_clinical_values(role: Role) -> bool:
    return may_see(role, Area.CLINICAL_VALUES)


# A name to type at a login prompt and a command line: letters, digits and . _ @ -, not starting with -.
_NAME = re.compile(r"[A-Za-z0-9._@][A-Za-z0-9._@-]{0,63}")
# FHIR's id: 1 to 64 of A-Z a-z 0-9 - .
_PRACTITIONER = re.compile(r"Practitioner/([A-Za-z0-9\-.]{1,64})")


def check_name(name: str) -> str:
    """The user name as given, when it is usable; InvalidAccount otherwise."""
    if not _NAME.fullmatch(name):
        raise InvalidAccount(
            f"user name {name!r} is not usable: 1 to 64 letters, digits, '.', '_', '@' or '-', "
            "not starting with '-'"
        )
    return name


def name_key(name: str) -> str:
    """What makes two names the same user (names are unique ignoring case)."""
    return name.casefold()


def check_practitioner(role: Role, reference: str | None) -> str | None:
    """The Practitioner reference for a user of `role` (`Practitioner/ID`), None when the role has none;
    InvalidAccount when it is malformed or the role needs one and it is missing."""
    if reference is None or reference == "":
        if ROLES[role].needs_practitioner:
            raise InvalidAccount(f"a {role.value} needs --practitioner Practitioner/ID")
        return None
    if not _PRACTITIONER.fullmatch(reference):
        raise InvalidAccount(f"practitioner reference {reference!r} is not of the form Practitioner/ID")
    return reference
