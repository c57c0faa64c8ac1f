"""The run: capability, create, read back, search back, delete; one Step per check.

Each step is timed and passes or fails on its own, with a detail that names what differed. A step that
needs a resource whose creation failed is skipped, not failed twice. Whatever was created is deleted in
reverse order (references point backwards: the Task at the order, the order at the patient) even when
steps failed, and each delete is verified by reading the resource again (404 or 410).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from gateway.sandbox import resources
from gateway.sandbox.client import JSON, SandboxError, Server, location_id, problem
from gateway.sandbox.compare import differences

PASS, FAIL, SKIP = "pass", "fail", "skip"
GONE = (404, 410)
# Searches ask the server not to answer from a cache: HAPI reuses a search's results for a minute by
# default, which would hide a resource created or deleted a moment ago.
FRESH = {"cache-control": "no-cache"}


@dataclass
class Step:
    name: str
    result: str
    detail: str
    seconds: float

    def as_json(self) -> JSON:
        return {
            "step": self.name,
            "result": self.result,
            "detail": self.detail,
            "seconds": round(self.seconds, 3),
        }


@dataclass
class Report:
    base_url: str
    run: str
    steps: list[Step] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return all(s.result != FAIL for s in self.steps)

    def as_json(self) -> JSON:
        return {
            "base_url": self.base_url,
            "run": self.run,
            "passed": self.passed,
            "steps": [s.as_json() for s in self.steps],
        }


@dataclass
class Created:
    label: str
    sent: JSON
    id: str

    @property
    def ref(self) -> str:
        return f"{self.sent['resourceType']}/{self.id}"


class Skip(Exception):
    """A step that cannot run because an earlier one failed."""


class Runner:
    def __init__(self, server: Server, report: Report, now: datetime) -> None:
        self.server = server
        self.report = report
        self.now = now
        self.created: list[Created] = []

    @contextmanager
    def step(self, name: str) -> Iterator[list[str]]:
        """Times a step; the body appends detail lines and raises to fail (or Skip)."""
        detail: list[str] = []
        started = time.perf_counter()
        result = PASS
        try:
            yield detail
        except Skip as exc:
            result, detail = SKIP, [str(exc)]
        except (SandboxError, AssertionError) as exc:
            result, detail = FAIL, [*detail, str(exc)]
        self.report.steps.append(
            Step(name, result, "; ".join(d for d in detail if d), time.perf_counter() - started)
        )

    def check(self, sent: JSON, returned: JSON, detail: list[str]) -> None:
        found = differences(sent, returned)
        if found:
            raise AssertionError("; ".join(found))

    # -- steps -------------------------------------------------------------------------------------

    def metadata(self) -> None:
        with self.step("read CapabilityStatement") as detail:
            answer = self.server.request("GET", "metadata")
            if answer.status_code != 200:
                raise SandboxError(problem(answer))
            body = self.server.json(answer)
            software = body.get("software") or {}
            detail.append(f"{software.get('name', '?')} {software.get('version', '')}".strip())
            detail.append(f"FHIR {body.get('fhirVersion')}")
            if body.get("resourceType") != "CapabilityStatement":
                raise AssertionError(f"not a CapabilityStatement: {body.get('resourceType')}")
            if not str(body.get("fhirVersion", "")).startswith("4.0"):
                raise AssertionError("not FHIR R4 (4.0.x)")

    def token(self, client_id: str, client_secret: str) -> None:
        with self.step("token (client credentials)") as detail:
            detail.append(f"from {self.server.fetch_token(client_id, client_secret)}")

    def create(self, label: str, build: Callable[[], JSON]) -> Created | None:
        rtype = label.split()[0]
        with self.step(f"create {label}") as detail:
            sent = build()
            answer = self.server.request(
                "POST", rtype, body=sent, headers={"prefer": "return=representation"}
            )
            if answer.status_code not in (200, 201):
                raise SandboxError(problem(answer))
            body = self.server.json(answer) if answer.content.strip() else None
            new_id = (body or {}).get("id") or location_id(answer.headers.get("location"), rtype)
            if not isinstance(new_id, str):
                raise AssertionError("the answer names no id (no body id, no usable Location header)")
            made = Created(label, sent, new_id)
            self.created.append(made)
            detail.append(made.ref)
            if body is None:
                detail.append("no body (return=minimal): checked by the read")
            else:
                self.check(sent, body, detail)
            return made
        return None

    def read(self, made: Created) -> None:
        with self.step(f"read {made.label}") as detail:
            answer = self.server.request("GET", made.ref)
            if answer.status_code != 200:
                raise SandboxError(problem(answer))
            self.check(made.sent, self.server.json(answer), detail)
            detail.append(made.ref)

    def search(
        self, name: str, rtype: str, params: dict[str, str], expected: list[Created], *, exact: bool = True
    ) -> None:
        """The search must find the expected resources, each as it was sent. By identifier nothing else may
        match; by patient a server may have made its own resources for the patient (the gateway makes
        work items for a low ANC), which are counted, not failed, and are the server's to keep."""
        with self.step(f"search {name}") as detail:
            answer = self.server.request("GET", rtype, params=params, headers=FRESH)
            if answer.status_code != 200:
                raise SandboxError(problem(answer))
            found = {
                e["resource"].get("id"): e["resource"]
                for e in self.server.json(answer).get("entry") or []
                if (e.get("search") or {}).get("mode", "match") == "match" and "resource" in e
            }
            wanted = {m.id for m in expected}
            missing, extra = wanted - found.keys(), found.keys() - wanted
            detail.append(f"{len(found) - len(extra)} of {len(wanted)} found")
            if extra and not exact:
                detail.append(f"{len(extra)} more the server made")
            detail.append(f"{rtype}?{'&'.join(f'{k}={v}' for k, v in params.items())}")
            if missing or (extra and exact):
                unexpected = sorted(k or "?" for k in extra) if exact else []
                raise AssertionError(
                    f"missing {sorted(missing) or 'none'}, unexpected {unexpected or 'none'}"
                )
            for made in expected:
                found_diff = differences(made.sent, found[made.id])
                if found_diff:
                    raise AssertionError(f"{made.ref}: " + "; ".join(found_diff))

    def delete(self, made: Created) -> None:
        with self.step(f"delete {made.label}") as detail:
            answer = self.server.request("DELETE", made.ref)
            if answer.status_code not in (200, 202, 204):
                raise SandboxError(problem(answer))
            again = self.server.request("GET", made.ref)
            detail.append(f"{made.ref}: read again {again.status_code}")
            if again.status_code not in GONE:
                raise AssertionError(f"{made.ref} still readable after delete (HTTP {again.status_code})")

    def derived(self, patient: Created, made: list[Created]) -> None:
        """What the server made itself about the run's test patient (a gateway's alert Tasks, monitoring
        CarePlans, Provenance...): deleted too, so the run leaves nothing behind. Only resources in that
        patient's compartment, which is made-up test data, are touched."""
        with self.step("delete what the server derived for the test patient") as detail:
            ours = {item.ref for item in made}
            removed = []
            for rtype, param in DERIVED_SEARCHES:
                answer = self.server.request("GET", rtype, params={param: patient.ref}, headers=FRESH)
                if answer.status_code != 200:
                    continue  # a type or parameter this server does not have
                for entry in self.server.json(answer).get("entry") or []:
                    found = entry.get("resource") or {}
                    ref = f"{found.get('resourceType')}/{found.get('id')}"
                    if found.get("resourceType") != rtype or ref in ours:
                        continue
                    gone = self.server.request("DELETE", ref)
                    if gone.status_code not in (200, 202, 204):
                        raise SandboxError(f"{ref}: {problem(gone)}")
                    removed.append(ref)
            detail.append(f"{len(removed)} deleted" + (f": {', '.join(sorted(removed))}" if removed else ""))

    def nothing_left(self, made: list[Created]) -> None:
        with self.step("search the run's identifiers after cleanup") as detail:
            left = []
            for item in made:
                ident = item.sent["identifier"][0]
                answer = self.server.request(
                    "GET",
                    item.sent["resourceType"],
                    params={"identifier": f"{ident['system']}|{ident['value']}"},
                    headers=FRESH,
                )
                if answer.status_code != 200:
                    raise SandboxError(problem(answer))
                left += [
                    f"{item.sent['resourceType']}/{e['resource'].get('id')}"
                    for e in self.server.json(answer).get("entry") or []
                    if "resource" in e
                ]
            detail.append(f"{len(made)} identifiers searched")
            if left:
                raise AssertionError(f"still found: {', '.join(left)}")


# Where servers put what they derive about a patient (type, search parameter naming the patient).
DERIVED_SEARCHES = (
    ("Provenance", "patient"),
    ("Task", "patient"),
    ("CarePlan", "subject"),
    ("CareTeam", "subject"),
    ("Communication", "subject"),
    ("DiagnosticReport", "subject"),
    ("ServiceRequest", "subject"),
    ("Observation", "subject"),
    ("MedicationRequest", "subject"),
)


def identifier_param(made: Created) -> dict[str, str]:
    ident = made.sent["identifier"][0]
    return {"identifier": f"{ident['system']}|{ident['value']}"}


def run(
    server: Server,
    *,
    run_id: str,
    now: datetime,
    credentials: tuple[str, str] | None = None,
) -> Report:
    """Runs every step against `server`; always cleans up what it created."""
    report = Report(server.base, run_id)
    runner = Runner(server, report, now)
    try:
        runner.metadata()
        if credentials:
            runner.token(*credentials)
        _exercise(runner, run_id, now)
    finally:
        made = list(runner.created)
        patients = [item for item in made if item.sent["resourceType"] == "Patient"]
        for item in reversed(made):
            if item in patients:
                runner.derived(item, made)  # before the patient goes: what points at it goes first
            runner.delete(item)
        if made:
            runner.nothing_left(made)
    return report


def _exercise(runner: Runner, run_id: str, now: datetime) -> None:
    patient = runner.create("Patient", lambda: resources.patient(run_id))
    if patient is None:
        return
    order = runner.create(
        "MedicationRequest clozapine", lambda: resources.clozapine_order(run_id, patient.ref, now)
    )
    labs = [
        made
        for observation in resources.lab_observations(run_id, patient.ref, now)
        if (made := runner.create(f"Observation {_code(observation)}", _given(observation))) is not None
    ]
    task = None
    if order is not None:
        task = runner.create(
            "Task prior-authorization", lambda: resources.pa_task(run_id, order.ref, patient.ref, now)
        )
    for made in list(runner.created):
        runner.read(made)
    for made in list(runner.created):
        runner.search(
            f"{made.label} by identifier", made.sent["resourceType"], identifier_param(made), [made]
        )
    by_patient = {"patient": patient.ref}
    if order is not None:
        runner.search("MedicationRequest by patient", "MedicationRequest", by_patient, [order], exact=False)
        code = f"{resources.RXNORM}|{resources.CLOZAPINE}"
        runner.search(
            "MedicationRequest by patient and code",
            "MedicationRequest",
            {**by_patient, "code": code},
            [order],
        )
    if labs:
        runner.search("Observation by patient", "Observation", by_patient, labs, exact=False)
        anc = [m for m in labs if _code(m.sent) == resources.ANC]
        code = f"{resources.LOINC}|{resources.ANC}"
        runner.search(
            "Observation by patient and code (ANC)", "Observation", {**by_patient, "code": code}, anc
        )
    if task is not None:
        runner.search("Task by patient", "Task", by_patient, [task], exact=False)


def _given(resource: JSON) -> Callable[[], JSON]:
    return lambda: resource


def _code(resource: JSON) -> str:
    codings: list[Any] = (resource.get("code") or {}).get("coding") or [{}]
    return str(codings[0].get("code"))
