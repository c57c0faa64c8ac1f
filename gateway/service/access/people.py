"""What a person may see: a user in the console, or a SMART app acting for them with a user token.

A person's reach is their role's (gateway/auth/roles.py) applied to the data, decided here once and
consulted by every interaction (FhirService), every operation and every console page:

- Patients' records (Patient and every type of the Patient compartment, gateway/fhir/compartment.py):
  a pharmacist's are the patients of the active CareTeams that name their Practitioner, or one of their
  PractitionerRoles, as a current participant; a coordinator's the patients with prior-authorization
  Tasks; an admin's every patient; the analyst and the auditor reach none. A resource is in reach when
  every Patient it is linked to through its compartment parameters is one of the person's, and it is
  linked to at least one (an Observation naming no Patient belongs to nobody's record, so to no
  person's). Searches are narrowed
  in SQL by the same rule (`PatientRestriction`), so pages and totals hold only what may be seen.
- Types outside any patient's record that describe no patient (Practitioner, PractitionerRole,
  Organization, Medication) are in reach as their scopes allow.
- Subscriptions: every one for a role with the subscriptions area (analyst, admin), none otherwise.
- AuditEvents: for a role with the audit area (auditor, admin); their own routes check that.
- Anything else: nothing.

What is out of reach does not exist for the person: a read is 404, a search leaves it out, an include
drops it, a write is refused.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.auth.roles import ROLES, Area, Patients, Role, may_see
from gateway.auth.tokens import AccessClaims
from gateway.exceptions import Unauthorized
from gateway.fhir import dates, jsonio
from gateway.fhir.compartment import PATIENT_COMPARTMENT, REFERENCED_TYPES, compartment_patients
from gateway.fhir.query import PatientRestriction
from gateway.pa.lifecycle import TASK_TYPE_SYSTEM
from gateway.pharmacist.worklist import PA_TASK_CODES, current_members
from gateway.store import launch as launch_store
from gateway.store import reach as reach_store
from gateway.store import smart_apps as app_store
from gateway.store import users as user_store
from gateway.store.database import Database
from gateway.store.users import UserRecord
from gateway.types import JSON

# Types that describe no patient: every person reaches them (as far as their scopes go).
SHARED_TYPES = frozenset({*REFERENCED_TYPES, "SubscriptionTopic", "Measure"})


class Reach(Enum):
    ALL = "all"  # every resource of the type
    RECORDS = "records"  # those in the person's patients' records
    NONE = "none"


@dataclass(frozen=True, slots=True)
class PersonAccess:
    user_id: str
    name: str
    role: Role
    practitioner: str | None  # Practitioner/ID the person acts as (AuditEvent agent, fhirUser)
    patients: frozenset[str] | None  # the patients whose records they reach; None: every patient

    def reaches(self, area: Area) -> bool:
        return may_see(self.role, area)

    def reach(self, resource_type: str) -> Reach:
        if resource_type == "Subscription":
            return Reach.ALL if self.reaches(Area.SUBSCRIPTIONS) else Reach.NONE
        if resource_type == "AuditEvent":
            return Reach.ALL if self.reaches(Area.AUDIT_EVENTS) else Reach.NONE
        if resource_type == "Patient" or resource_type in PATIENT_COMPARTMENT:
            if ROLES[self.role].patients is Patients.NONE:
                return Reach.NONE
            return Reach.ALL if self.patients is None else Reach.RECORDS
        return Reach.ALL if resource_type in SHARED_TYPES else Reach.NONE

    def sees(self, resource: JSON, local_bases: tuple[str, ...] = ()) -> bool:
        """Whether this resource (as stored or as about to be written) is within reach."""
        reach = self.reach(str(resource.get("resourceType")))
        if reach is not Reach.RECORDS:
            return reach is Reach.ALL
        assert self.patients is not None
        linked = compartment_patients(resource, local_bases)
        return bool(linked) and linked <= self.patients

    def sees_patient(self, patient_id: str) -> bool:
        if ROLES[self.role].patients is Patients.NONE:
            return False
        return self.patients is None or patient_id in self.patients

    def restriction(self, resource_type: str) -> PatientRestriction | None:
        """How a search of this type is narrowed (None: not at all). Callers check `reach` first."""
        if self.reach(resource_type) is not Reach.RECORDS:
            return None
        assert self.patients is not None
        return PatientRestriction(PATIENT_COMPARTMENT.get(resource_type, ()), self.patients)


def care_team_patients(members: set[str], teams: Iterable[JSON], now_us: int | None = None) -> set[str]:
    """The patients (subjects) of these CareTeams on which one of `members` (`Practitioner/ID`,
    `PractitionerRole/ID`) is a current participant (one whose period has ended no longer counts)."""
    at = dates.now_us() if now_us is None else now_us
    found: set[str] = set()
    for team in teams:
        holder = team.get("subject")
        subject = holder.get("reference") if isinstance(holder, dict) else None
        if not isinstance(subject, str) or not subject.startswith("Patient/"):
            continue
        if members & set(current_members(team, at)):
            found.add(subject.split("/", 1)[1])
    return found


# The prior-authorization work a coordinator reaches: the patients of these Tasks.
PA_TASKS = (TASK_TYPE_SYSTEM, PA_TASK_CODES)


class People:
    """Builds a person's access from their user record (console sessions) or their token (SMART apps)."""

    def __init__(self, db: Database, clock: Callable[[], int] = dates.now_us) -> None:
        self.db = db
        self.clock = clock

    async def for_user(self, user: UserRecord, patient: str | None = None) -> PersonAccess:
        async with self.db.read() as conn:
            return await self._access(conn, user, patient)

    async def for_token(self, claims: AccessClaims) -> PersonAccess:
        """The access of a person's token; Unauthorized when its app or its user was disabled since."""
        assert claims.user_id is not None
        async with self.db.read() as conn:
            app = await app_store.get_app(conn, claims.client_id)
            user = await user_store.get_user_by_id(conn, claims.user_id)
            if app is None or app.disabled:
                raise Unauthorized("The access token is not valid: its app was removed or disabled")
            if user is None or user.disabled:
                raise Unauthorized("The access token is not valid: its user was removed or disabled")
            if claims.family is not None and await launch_store.family_revoked(conn, claims.family):
                raise Unauthorized("The access token is not valid: its authorization was revoked")
            return await self._access(conn, user, claims.patient)

    async def _access(self, conn: AsyncConnection, user: UserRecord, patient: str | None) -> PersonAccess:
        role = Role(user.role)
        reach = ROLES[role].patients
        patients: frozenset[str] | None
        if reach is Patients.ALL:
            patients = None
        elif reach is Patients.CARE_TEAM and user.practitioner:
            # The person is on a CareTeam as their Practitioner or as one of their PractitionerRoles
            # (pharmacist matching assigns roles: one site, one caseload).
            practitioner_id = user.practitioner.split("/", 1)[1]
            roles = await reach_store.roles_of(conn, practitioner_id)
            members = [("Practitioner", practitioner_id), *(("PractitionerRole", r) for r in roles)]
            teams = await reach_store.active_care_teams(conn, members)
            found = care_team_patients(
                {f"{t}/{i}" for t, i in members}, [_loads(t.content) for t in teams], self.clock()
            )
            patients = frozenset(found)
        elif reach is Patients.PRIOR_AUTH:
            patients = frozenset(await reach_store.patients_with_tasks(conn, *PA_TASKS))
        else:
            patients = frozenset()
        if patient is not None:  # a launch chose one patient: the token reaches that one at most
            patients = frozenset({patient}) if patients is None else patients & {patient}
        return PersonAccess(user.id, user.name, role, user.practitioner, patients)


def _loads(content: bytes | None) -> JSON:
    found = jsonio.loads(content) if content else {}
    return found if isinstance(found, dict) else {}
