"""Prior-authorization operations as the transports and the CLI call them.

- `request`: `POST /fhir/MedicationRequest/{id}/$request-prior-auth` (prepare, send, return the Task).
- `appeal`: `POST /fhir/Task/{id}/$appeal` (a denied Task: a new appeal Task partOf it, sent likewise).
- `cancel`: `POST /fhir/Task/{id}/$cancel` (withdraw: the Task is cancelled, the payer told if it has it).
- `payer_message`: `POST /payer/pas/notifications` (PAS response Bundles, PAS subscription notifications).
- `payer_file`: X12 278 response files and CSV status files (`gateway ingest`, `POST /payer/files`).
- `turnaround`: per-payer turnaround as a Parameters resource (`GET /fhir/Task/$pa-turnaround`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

import orjson

from gateway.adapters.payer import csv_status, pas, x12_278
from gateway.exceptions import BadRequest, Conflict, Unprocessable
from gateway.fhir import jsonio
from gateway.fhir.outcome import operation_outcome
from gateway.pa.decision import PayerDecision
from gateway.service.access.context import RequestContext
from gateway.service.fhirapi.interactions import Outcome
from gateway.service.priorauth.requests import Applied, PriorAuthService
from gateway.service.priorauth.worker import PayerWorker
from gateway.service.workers import WorkerFailed, WorkerPool
from gateway.store import resources as store
from gateway.store.resources import VersionConflict
from gateway.types import JSON, Issue

T = TypeVar("T")


@dataclass
class PayerFileReport:
    kind: str  # x12-278 | csv
    applied: list[Applied] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # rows not applied (CSV), with line numbers

    def lines(self) -> list[str]:
        changed = sum(1 for a in self.applied if a.changed)
        head = f"{self.kind}: {len(self.applied)} answers ({changed} changed a Task)"
        return [head, *(f"  Task/{a.task_id}: {a.business_status}" for a in self.applied), *self.problems]


@contextlib.contextmanager
def _conflicts_as_409() -> Iterator[None]:
    """A Task written by someone else between read and write: the client may simply try again."""
    try:
        yield
    except VersionConflict as exc:
        raise Conflict(
            f"A prior-authorization Task changed while this was being applied ({exc}); try again"
        ) from exc


class PriorAuthOps:
    def __init__(
        self, service: PriorAuthService, worker: PayerWorker, *, pool: WorkerPool | None = None
    ) -> None:
        self.service = service
        self.worker = worker
        self.pool = pool  # payer files are parsed there, off the event loop (None: in it)

    async def request(self, ctx: RequestContext, request_id: str, body: bytes) -> Outcome:
        parameters = _json(body) if body.strip() else None
        with _conflicts_as_409():
            sub_id = await self.service.prepare_request(ctx, request_id, parameters)
        return await self._sent(ctx, sub_id)

    async def appeal(self, ctx: RequestContext, task_id: str, body: bytes) -> Outcome:
        parameters = _json(body) if body.strip() else None
        with _conflicts_as_409():
            sub_id = await self.service.prepare_appeal(ctx, task_id, parameters)
        return await self._sent(ctx, sub_id)

    async def cancel(self, ctx: RequestContext, task_id: str, body: bytes) -> Outcome:
        parameters = _json(body) if body.strip() else None
        with _conflicts_as_409():
            sub_id = await self.service.prepare_cancel(ctx, task_id, parameters)
        if sub_id is not None:
            await self.worker.send(sub_id)
        return await self._task(ctx, task_id)

    async def _sent(self, ctx: RequestContext, sub_id: str) -> Outcome:
        """Send the recorded request now and answer with its Task as the payer's answer left it."""
        await self.worker.send(sub_id)
        return await self._task(ctx, sub_id.split("/", 1)[0])

    async def _task(self, ctx: RequestContext, task_id: str) -> Outcome:
        async with self.service.db.read() as conn:
            stored = await store.current(conn, "Task", task_id)
        assert stored is not None and stored.content is not None
        return Outcome(
            200, stored, stored.content, [], f"{ctx.base_url}/Task/{task_id}/_history/{stored.version}"
        )

    async def payer_message(self, ctx: RequestContext, body: bytes) -> Outcome:
        ctx.require("ClaimResponse", "c")
        try:
            decisions = pas.decisions_from_any(_json(body))
        except pas.PasError as exc:
            raise BadRequest(exc.message, expression=exc.expression) from None
        with _conflicts_as_409():
            applied = await self.service.receive(decisions, ctx.client_id)
        for answered in applied:  # for the audit trail: the Tasks (and so the Patients) this answer moved
            ctx.note("Task", answered.task_id)
        issues = [
            Issue(
                "information",
                "informational",
                f"Task/{a.task_id} is {a.business_status}"
                + ("" if a.changed else " (unchanged: the same answer again)"),
                (),
            )
            for a in applied
        ] or [Issue("information", "informational", "Nothing to apply (handshake or heartbeat)", ())]
        return Outcome(200, None, orjson.dumps(operation_outcome(issues)), issues)

    async def payer_file(self, text: str, client_id: str | None = None) -> PayerFileReport:
        """An X12 278 response or a CSV status file: all its answers applied, or none."""
        with _conflicts_as_409():
            return await self._payer_file(text, client_id)

    async def _payer_file(self, text: str, client_id: str | None) -> PayerFileReport:
        if x12_278.looks_like_x12(text):
            try:
                decisions: list[PayerDecision] = await self._parse(x12_278.parse_278_response, text)
            except x12_278.X12Error as exc:
                raise BadRequest(str(exc)) from None
            return PayerFileReport("x12-278", await self.service.receive(decisions, client_id))
        if csv_status.looks_like_status_csv(text):
            try:
                result = await self._parse(csv_status.parse_status_csv, text)
            except csv_status.CsvStatusError as exc:
                raise BadRequest(str(exc)) from None
            report = PayerFileReport("csv", await self.service.receive(result.decisions, client_id))
            report.problems = [
                f"  line {p.line}{f' ({p.column})' if p.column else ''}: {p.message}" for p in result.problems
            ]
            if result.unknown_columns:
                report.problems.append(f"  columns not used: {', '.join(result.unknown_columns)}")
            return report
        raise BadRequest("Not a payer file: expected an X12 278 response (ISA...) or a CSV status file")

    async def _parse(self, parse: Callable[[str], T], text: str) -> T:
        """A payer file parsed in a worker process: a large or hostile one never stalls the event loop."""
        if self.pool is None:
            return parse(text)
        try:
            return await self.pool.run(parse, text)
        except WorkerFailed as exc:
            raise Unprocessable(f"The payer file could not be parsed: {exc}") from None

    async def turnaround(self, ctx: RequestContext) -> Outcome:
        ctx.require("Task", "s")
        rows = await self.worker.compute_turnaround()
        parameter = []
        for row in rows:
            parts: list[JSON] = [
                {"name": "payer", "valueString": row.payer},
                {"name": "decided", "valueInteger": row.decided},
                {"name": "pending", "valueInteger": row.pending},
                {"name": "overdue", "valueInteger": row.overdue},
            ]
            for name, value in (
                ("median-hours", row.median_hours),
                ("p90-hours", row.p90_hours),
                ("mean-hours", row.mean_hours),
            ):
                if value is not None:
                    parts.append({"name": name, "valueDecimal": round(value, 2)})
            parameter.append({"name": "turnaround", "part": parts})
        body = {"resourceType": "Parameters", "parameter": parameter}
        return Outcome(200, None, orjson.dumps(body))


def _json(body: bytes) -> JSON:
    """A JSON object from a request body. Decimals keep their literals: a payer's ClaimResponse is
    stored as received."""
    try:
        value = jsonio.loads(body)
    except jsonio.JSONDecodeError:
        raise BadRequest("The body is not JSON") from None
    if not isinstance(value, dict):
        raise Unprocessable("The body must be a FHIR resource (a JSON object)")
    return value
