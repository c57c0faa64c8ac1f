"""Feeds the story (`gateway.demo.story`) through a gateway's real paths and gathers what to show.

    FHIR API   pharmacists, prescribers, the insurer (conditional update: reused by later runs), the two
               patients and their Coverage, James's leflunomide order, the pharmacist's call
    MLLP       Maria's clozapine order (RDE^O11), two fills (RDS^O13), three ANCs and James's ALT (ORU^R01)
    payer      prior authorization for the clozapine order (see `PriorAuth` for the three ways)

Events go in the order they happened (the story's clinical dates), then the prior authorization and the
call, which happen today. The gateway assigns each patient's pharmacist on the first specialty order and
opens the clozapine-anc alert on the low ANC; the feeder only reads back what it did, and asks
`$match-pharmacist` (without `assign`) to rank the candidates again for the summary.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from gateway.demo.client import Api, DemoError, Mllp, next_second
from gateway.demo.payer import DemoPayer
from gateway.demo.story import LOINC, Person, Story
from gateway.pharmacist.vocabulary import ALERT_RULE, CARE_PLAN_CATEGORY, GATEWAY, WORK_ITEM_TYPE

JSON = dict[str, Any]
Say = Callable[[str], None]
CARE_TEAM_CATEGORY = f"{GATEWAY}/CodeSystem/care-team-category"
PA_BUSINESS_STATUS = f"{GATEWAY}/CodeSystem/pa-business-status"
TASK_TYPE = f"{GATEWAY}/CodeSystem/task-type"
TRACE_SYSTEM = f"{GATEWAY}/pa-trace-number"


def business_status(task: JSON) -> str:
    for coding in (task.get("businessStatus") or {}).get("coding") or []:
        if coding.get("system") == PA_BUSINESS_STATUS:
            return str(coding.get("code"))
    return str(task.get("status"))


def _input(task: JSON, code: str) -> str | None:
    for entry in task.get("input") or []:
        if any(c.get("code") == code for c in (entry.get("type") or {}).get("coding") or []):
            reference = (entry.get("valueReference") or {}).get("reference")
            return str(reference) if reference else None
    return None


def _output_values(task: JSON, code: str) -> list[str]:
    found = []
    for entry in task.get("output") or []:
        if any(c.get("code") == code for c in (entry.get("type") or {}).get("coding") or []):
            value = next((v for k, v in entry.items() if k.startswith("value")), None)
            if isinstance(value, str):
                found.append(value)
    return found


# -- prior authorization: three ways --------------------------------------------------------------------


class PriorAuth(Protocol):
    description: str

    def request(
        self, api: Api, story: Story, order: str, coverage: str, insurer: str, anc: str | None
    ) -> JSON:
        """Submits the request; the PA Task as the payer's first answer left it."""

    def decide(self, api: Api, task: JSON) -> JSON | None:
        """The payer's decision on the pended request; the Task after it (None: not the demo's to make)."""


class ThroughPayer:
    """`$request-prior-auth` to the payer the gateway has configured for the insurer: the self-served
    demo's own stand-in (which pends, then approves by notification when told), or a real one behind a
    running gateway (`--payer-insurer`), whose decision the demo leaves to it."""

    def __init__(self, payer: DemoPayer | None, name: str) -> None:
        self.payer = payer
        self.description = (
            f"$request-prior-auth to {name}; it pends, then approves by PAS subscription notification"
            if payer
            else f"$request-prior-auth to the payer configured for {name}; its decision is its own"
        )

    def request(
        self, api: Api, story: Story, order: str, coverage: str, insurer: str, anc: str | None
    ) -> JSON:
        return api.json(
            "POST",
            f"/fhir/MedicationRequest/{order}/$request-prior-auth",
            body=story.prior_auth_parameters(coverage, anc),
        )

    def decide(self, api: Api, task: JSON) -> JSON | None:
        if self.payer is None:
            return None
        claim = _input(task, "claim")
        if not claim:
            raise DemoError(f"Task/{task['id']} names no Claim: nothing went to the payer")
        self.payer.approve(claim.split("/", 1)[1])
        return api.read(f"Task/{task['id']}")


class PayerFeeds:
    """A running gateway without a payer for the insurer: the request is recorded as a PA Task over the
    FHIR API (`submitted`; there is no payer to send it to), and the demo plays the payer through the
    feed every gateway takes without a payers file: CSV status files POSTed to `/payer/files`, first
    `pended`, then `approved` (with an authorization number and period)."""

    description = "PA Task over the FHIR API; the payer's CSV status files to /payer/files (pended, approved)"

    def request(
        self, api: Api, story: Story, order: str, coverage: str, insurer: str, anc: str | None
    ) -> JSON:
        medication_request = api.read(f"MedicationRequest/{order}")
        now = datetime.now(UTC).isoformat(timespec="milliseconds")
        task: JSON = {
            "resourceType": "Task",
            "identifier": [{"system": TRACE_SYSTEM, "value": f"DEMO{story.run}PA"}],
            "status": "requested",
            "businessStatus": {"coding": [{"system": PA_BUSINESS_STATUS, "code": "submitted"}]},
            "intent": "order",
            "priority": "routine",
            "code": {"coding": [{"system": TASK_TYPE, "code": "prior-authorization"}]},
            "focus": {"reference": f"MedicationRequest/{order}"},
            "for": medication_request["subject"],
            "authoredOn": now,
            "lastModified": now,
            "owner": {"reference": f"Organization/{insurer}"},
            "input": [
                {
                    "type": {
                        "coding": [{"system": f"{GATEWAY}/CodeSystem/pa-task-parameter", "code": "coverage"}]
                    },
                    "valueReference": {"reference": f"Coverage/{coverage}"},
                }
            ],
        }
        created = api.create(task)
        self._file(api, created, "pended", note="pended for clinical review")
        return api.read(f"Task/{created['id']}")

    def decide(self, api: Api, task: JSON) -> JSON | None:
        start = datetime.now(UTC).date()
        self._file(
            api,
            task,
            "approved",
            note="certified in total",
            number=f"BHP-PA-{task['id'][:8].upper()}",
            period=(start.isoformat(), (start + timedelta(days=182)).isoformat()),
        )
        return api.read(f"Task/{task['id']}")

    @staticmethod
    def _file(
        api: Api,
        task: JSON,
        decision: str,
        *,
        number: str = "",
        period: tuple[str, str] = ("", ""),
        note: str = "",
    ) -> None:
        next_second()
        csv = (
            "task_id,decision,authorization_number,period_start,period_end,payer,note\n"
            f"{task['id']},{decision},{number},{period[0]},{period[1]},Bluebonnet Health Plan (demo),{note}\n"
        )
        api.call(
            "POST", "/payer/files", text=csv, headers={"content-type": "text/csv", "accept": "text/plain"}
        )


# -- what the feed found --------------------------------------------------------------------------------


@dataclass
class Candidate:
    rank: int
    practitioner: str
    role: str
    name: str
    eligible: bool
    score: float
    reasons: list[tuple[str, str]]


@dataclass
class PatientResult:
    key: str
    person: Person
    drug: str
    patient: str = ""  # Patient/{id}
    coverage: str = ""
    order: str = ""  # MedicationRequest/{id}
    order_source: str = ""
    care_team: str | None = None
    assigned_role: str | None = None
    assigned_practitioner: str | None = None
    assigned_name: str | None = None
    ranking: list[Candidate] = field(default_factory=list)
    alerts: list[JSON] = field(default_factory=list)  # {"task", "rule", "priority", "owner", "status"}
    care_plans: list[str] = field(default_factory=list)
    prior_auth: JSON | None = None  # {"task", "moves": [...], "status", "number", "period"}
    intervention: str | None = None
    worklist: list[JSON] = field(default_factory=list)  # the pharmacist's $worklist rows of this patient


@dataclass
class Result:
    run: str
    base_url: str
    mllp: str
    prior_auth: str
    pharmacists: dict[str, JSON] = field(default_factory=dict)  # role ref -> {name, practitioner, ...}
    patients: list[PatientResult] = field(default_factory=list)


# -- the feed -------------------------------------------------------------------------------------------


class Feeder:
    def __init__(
        self,
        api: Api,
        mllp: Mllp,
        story: Story,
        prior_auth: PriorAuth,
        *,
        insurer: tuple[str, str] | None = None,
        say: Say = lambda _: None,
    ) -> None:
        self.api = api
        self.mllp = mllp
        self.story = story
        self.pa = prior_auth
        self.insurer_identifier = insurer
        self.say = say
        self.result = Result(story.run, api.root, mllp.where, prior_auth.description)
        self.maria = PatientResult("maria", story.maria, "clozapine")
        self.james = PatientResult("james", story.james, "leflunomide")
        self.result.patients += [self.maria, self.james]
        self._prescribers: dict[str, str] = {}
        self._insurer = ""

    def run(self) -> Result:
        self._staff()
        self._patients()
        self._events()
        self._prior_auth()
        self._call()
        for patient in self.result.patients:
            self._read_back(patient)
        return self.result

    # -- steps -------------------------------------------------------------------------------------

    def _staff(self) -> None:
        self.say("The pharmacy's staff, prescribers and payer (FHIR API, conditional update by identifier)")
        for pharmacist in self.story.pharmacists:
            practitioner = self.api.ensure(pharmacist.practitioner())
            role = self.api.ensure(pharmacist.role(practitioner["id"]))
            role_ref = f"PractitionerRole/{role['id']}"
            self.result.pharmacists[role_ref] = {
                "key": pharmacist.key,
                "name": pharmacist.name,
                "practitioner": f"Practitioner/{practitioner['id']}",
                "role": role_ref,
                "languages": list(pharmacist.languages),
                "licensed": [state for state, _ in pharmacist.licences],
                "drugClasses": list(pharmacist.drug_classes),
                "capacity": pharmacist.capacity,
            }
            self.say(
                f"  pharmacist {pharmacist.name:<16} speaks {', '.join(pharmacist.languages):<6}"
                f" licensed {', '.join(s for s, _ in pharmacist.licences):<3}"
                f" {', '.join(pharmacist.drug_classes):<20} {role_ref}"
            )
        for prescriber in (self.story.psychiatrist, self.story.rheumatologist):
            made = self.api.ensure(prescriber.practitioner())
            self._prescribers[prescriber.family] = made["id"]
            self.say(
                f"  prescriber Dr. {prescriber.given} {prescriber.family} ({prescriber.specialty},"
                f" NPI {prescriber.npi})"
            )
        insurer = self.api.ensure(self.story.insurer(self.insurer_identifier))
        self._insurer = insurer["id"]
        identifier = insurer["identifier"][0]
        self.say(f"  insurer    {insurer['name']} ({identifier['system']}|{identifier['value']})")

    def _patients(self) -> None:
        self.say("Patients, registered by the pharmacy's intake (FHIR API)")
        for result, member in ((self.maria, "1"), (self.james, "2")):
            person = result.person
            patient = self.api.create(person.patient())
            result.patient = f"Patient/{patient['id']}"
            coverage = self.api.create(self.story.coverage(person, patient["id"], self._insurer, member))
            result.coverage = coverage["id"]
            self.say(
                f"  {person.name:<18} MRN {person.mrn}  {person.city}, {person.state}; prefers"
                f" {person.language_name}  {result.patient}"
            )

    def _events(self) -> None:
        story = self.story
        maria, james = story.maria, story.james
        events: list[tuple[datetime, str, Callable[[], None]]] = [
            (
                story.clozapine_start,
                f"HL7 RDE^O11  clozapine 100 mg twice daily for {maria.name} (Dr. Okafor)",
                lambda: self._hl7(story.clozapine_order()),
            ),
            *[
                (
                    fill.handed_over,
                    f"HL7 RDS^O13  clozapine fill {fill.number}: {fill.quantity} tablets",
                    lambda fill=fill: self._hl7(story.dispense(fill)),
                )
                for fill in story.fills
            ],
            *[
                (
                    lab.collected,
                    f"HL7 ORU^R01  {maria.given[0]}'s ANC {lab.value} x10^3/uL"
                    + (" (flagged low)" if lab.flag == "L" else ""),
                    lambda lab=lab: self._hl7(story.result(lab)),
                )
                for lab in story.ancs
            ],
            (
                story.alt.collected,
                f"HL7 ORU^R01  {james.given[0]}'s baseline ALT {story.alt.value} U/L",
                lambda: self._hl7(story.result(story.alt)),
            ),
            (
                story.leflunomide_start,
                f"FHIR POST MedicationRequest  leflunomide 20 mg daily for {james.name} (Dr. Raman)",
                self._leflunomide,
            ),
        ]
        self.say("What happened, in the order it happened (HL7 v2 over MLLP, FHIR API)")
        for when, what, send in sorted(events, key=lambda e: e[0]):
            send()
            self.say(f"  {when.date().isoformat()}  {what}")
            if what.startswith("HL7 RDE"):
                self._order_of(self.maria, "HL7 v2 RDE^O11 from EHR / ALAMO HEALTH")
        self.james.order_source = "FHIR API (POST MedicationRequest)"

    def _hl7(self, message: str) -> None:
        self.mllp.send(message)

    def _order_of(self, result: PatientResult, source: str) -> None:
        orders = self.api.search("MedicationRequest", patient=result.patient)
        if not orders:
            raise DemoError(f"the gateway holds no order for {result.patient} after the RDE^O11")
        result.order = f"MedicationRequest/{orders[0]['id']}"
        result.order_source = source

    def _leflunomide(self) -> None:
        order = self.api.create(
            self.story.leflunomide_order(self.james.patient.split("/")[1], self._prescribers["Raman"])
        )
        self.james.order = f"MedicationRequest/{order['id']}"

    def _prior_auth(self) -> None:
        self.say(f"Prior authorization of the clozapine order ({self.pa.description})")
        latest = self.api.search(
            "Observation", patient=self.maria.patient, code=f"{LOINC}|751-8", _sort="-date"
        )
        anc = latest[0]["id"] if latest else None
        next_second()  # today's steps in the order they happen (see `next_second`)
        task = self.pa.request(
            self.api, self.story, self.maria.order.split("/")[1], self.maria.coverage, self._insurer, anc
        )
        self.say(f"  today       submitted; the payer answered: {business_status(task)}  Task/{task['id']}")
        decided = self.pa.decide(self.api, task)
        if decided is not None:
            task = decided
            self.say(f"  today       the payer decided: {business_status(task)}")
        history = self.api.json("GET", f"/fhir/Task/{task['id']}/_history", params={"_count": "50"})
        moves: list[str] = []
        for entry in reversed(history.get("entry") or []):
            version = entry.get("resource") or {}
            status = business_status(version)
            if not moves or moves[-1] != status:
                moves.append(status)
        numbers = _output_values(task, "authorization-number")
        period = (task.get("restriction") or {}).get("period")
        self.maria.prior_auth = {
            "task": f"Task/{task['id']}",
            "status": business_status(task),
            "moves": moves,
            "number": numbers[0] if numbers else None,
            "period": period,
        }

    def _call(self) -> None:
        """The assigned pharmacist calls Maria about the alert (a Communication)."""
        self._assignment(self.maria)
        self._alerts(self.maria)
        if not self.maria.assigned_role:
            self.say("  (no pharmacist is assigned to Maria: no call recorded)")
            return
        alert = self.maria.alerts[0]["task"].split("/")[1] if self.maria.alerts else None
        made = self.api.create(
            self.story.intervention(
                self.maria.patient.split("/")[1],
                self.maria.assigned_role.split("/")[1],
                self.maria.order.split("/")[1],
                alert,
                datetime.now(UTC),
            )
        )
        self.maria.intervention = f"Communication/{made['id']}"
        name = self.maria.assigned_name or self.maria.assigned_role
        self.say(
            f"Pharmacist intervention: {name} called {self.maria.person.name}  {self.maria.intervention}"
        )

    # -- reading back what the gateway did ---------------------------------------------------------

    def _read_back(self, result: PatientResult) -> None:
        self._assignment(result)
        self._alerts(result)
        result.care_plans = [
            f"CarePlan/{plan['id']}"
            for plan in self.api.search(
                "CarePlan", patient=result.patient, category=f"{CARE_PLAN_CATEGORY}|monitoring-calendar"
            )
        ]
        if result.assigned_practitioner:
            result.worklist = self._worklist(result.assigned_practitioner, result.patient)
        ranking = self.api.json(
            "POST", f"/fhir/{result.patient}/$match-pharmacist", body={"resourceType": "Parameters"}
        )
        result.ranking = [
            self._candidate(p) for p in ranking.get("parameter") or [] if p.get("name") == "candidate"
        ]

    def _worklist(self, owner: str, patient: str) -> list[JSON]:
        """The pharmacist's worklist rows of this patient; none from a gateway that does not serve it."""
        answer = self.api.call(
            "GET", "/fhir/Task/$worklist", params={"owner": owner, "patient": patient}, ok=(200, 400, 404)
        )
        if answer.status_code != 200:
            return []
        return [
            {
                "rank": row.get("rank"),
                "kind": row.get("kind"),
                "severity": row.get("severity"),
                "task": row.get("task"),
                "why": row.get("why"),
            }
            for row in answer.json().get("rows") or []
        ]

    def _assignment(self, result: PatientResult) -> None:
        """The pharmacist the gateway assigned: the current member of the active assignment CareTeam."""
        teams = self.api.search(
            "CareTeam",
            patient=result.patient,
            category=f"{CARE_TEAM_CATEGORY}|pharmacist-assignment",
            status="active",
        )
        result.care_team = result.assigned_role = result.assigned_practitioner = None
        for team in teams:
            for participant in team.get("participant") or []:
                if (participant.get("period") or {}).get("end"):
                    continue
                member = (participant.get("member") or {}).get("reference")
                if isinstance(member, str):
                    result.care_team = f"CareTeam/{team['id']}"
                    result.assigned_role = member
        known = self.result.pharmacists.get(result.assigned_role or "")
        if known:
            result.assigned_name = known["name"]
            result.assigned_practitioner = known["practitioner"]
        elif result.assigned_role:
            role = self.api.read(result.assigned_role)
            result.assigned_practitioner = (role.get("practitioner") or {}).get("reference")

    def _alerts(self, result: PatientResult) -> None:
        result.alerts = [
            {
                "task": f"Task/{task['id']}",
                "rule": next(
                    (
                        c.get("code")
                        for c in (task.get("reasonCode") or {}).get("coding") or []
                        if c.get("system") == ALERT_RULE
                    ),
                    None,
                ),
                "priority": task.get("priority"),
                "status": task.get("status"),
                "owner": (task.get("owner") or {}).get("reference"),
                "description": task.get("description"),
            }
            for task in self.api.search("Task", patient=result.patient, code=f"{WORK_ITEM_TYPE}|alert")
        ]

    def _candidate(self, parameter: JSON) -> Candidate:
        parts: dict[str, Any] = {}
        reasons: list[tuple[str, str]] = []
        for part in parameter.get("part") or []:
            if part.get("name") == "reason":
                values = {
                    p.get("name"): p.get("valueCode") or p.get("valueString") for p in part.get("part") or []
                }
                reasons.append((str(values.get("code")), str(values.get("text") or "")))
            else:
                parts[part["name"]] = next((v for k, v in part.items() if k.startswith("value")), None)
        role = str((parts.get("practitionerRole") or {}).get("reference"))
        known = self.result.pharmacists.get(role)
        return Candidate(
            rank=int(parts.get("rank") or 0),
            practitioner=str((parts.get("practitioner") or {}).get("reference")),
            role=role,
            name=known["name"] if known else role,
            eligible=bool(parts.get("eligible")),
            score=float(parts.get("score") or 0),
            reasons=reasons,
        )
