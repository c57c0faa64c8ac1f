"""Sending PA requests to payers, retrying, polling pended ones, and the PA timers.

- `send(id)`: claim the submission row (so no other worker or process sends it), call the payer, then
  one transaction records the outcome: the decision applied, or the Task in submission-error with the
  next retry due (payer's retry policy), or rejected-by-payer.
- A failed submission is retried as a *new* Task version (submission-error -> submitted) with its own
  Idempotency-Key: a Task version is sent at most once. A row left `sending` by a process that died is
  not sent again (the payer may have it): it counts as a failed attempt whose outcome is unknown.
- Pended Tasks are asked about with `Claim/$inquire` every `inquire_every_seconds` of their payer.
- Timers: decision overdue (CMS due date passed) raises `pa-overdue` once per due date; an approval
  ending within the window raises `pa-expiring` and opens a renewal Task, once per authorization
  period (whatever the timer's pace, in any number of processes); a period that has ended moves the
  Task to expired. All of it reads the `pa_tracking` rows, never the Tasks themselves.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.adapters.payer import pas
from gateway.exceptions import FhirError
from gateway.fhir import dates
from gateway.fhir.extract import extract
from gateway.pa import lifecycle, tasks, turnaround
from gateway.pa.decision import PayerDecision
from gateway.pa.payers import PayerConfig, PayerDirectory
from gateway.routing.evaluators import EVALUATORS, Change, EvaluationContext
from gateway.service.priorauth.payer_client import (
    Accepted,
    Answered,
    Failed,
    Outcome,
    PayerClient,
    Refused,
)
from gateway.service.priorauth.requests import PriorAuthService, resource_of, submission_id
from gateway.service.subscriptions.manager import SubscriptionManager
from gateway.service.workers import Repeating
from gateway.store import priorauth as pa_store
from gateway.store import resources as store
from gateway.store.priorauth import Submission
from gateway.store.resources import VersionConflict

log = logging.getLogger("gateway.priorauth")

# A claimed request is someone's for the payer's timeout plus this margin.
LEASE_MARGIN_US = 30_000_000
DAY_US = 86_400_000_000


@dataclass(frozen=True, slots=True)
class PayerTurnaround:
    payer: str
    decided: int
    pending: int
    overdue: int
    median_hours: float | None
    p90_hours: float | None
    mean_hours: float | None


class PayerWorker:
    def __init__(
        self,
        service: PriorAuthService,
        client: PayerClient,
        manager: SubscriptionManager,
        *,
        expiring_days: int,
        interval_s: float,
    ) -> None:
        self.service = service
        self.db = service.db
        self.client = client
        self.manager = manager
        self.window_us = expiring_days * DAY_US
        self.timer = Repeating("prior-auth", "prior-authorization round", self.run_once, interval_s, log)
        self.turnaround: list[PayerTurnaround] = []

    @property
    def payers(self) -> PayerDirectory:
        return self.service.payers  # one directory, which tests and reloads may replace

    async def start(self) -> None:
        self.timer.start()

    async def stop(self) -> None:
        await self.timer.stop()
        await self.client.close()

    async def run_once(self, now_us: int | None = None) -> None:
        now = now_us or dates.now_us()
        async with self.db.read() as conn:
            due = await pa_store.due_submissions(conn, now)
        for row in due:
            try:
                if row.state == "failed":
                    await self.retry(row, now)
                elif row.state == "sending":
                    await self._recover(row, now)
                else:
                    await self.send(row.id)
            except Exception:
                log.exception("payer request %s could not be handled", row.id)
        await self._inquire_pended(now)
        await self._timers(now)
        self.turnaround = await self.compute_turnaround(now)

    # -- sending ---------------------------------------------------------------------------------

    async def send(self, sub_id: str) -> None:
        """Send one recorded request, unless someone else does or its Task has moved on."""
        now = dates.now_us()
        token = uuid.uuid4().hex
        async with self.db.write() as conn:
            row = await pa_store.submission(conn, sub_id)
            if row is None:
                return
            payer = self.payers.by_name(row.payer)
            lease = LEASE_MARGIN_US + int(_call_budget_s(payer) * 1_000_000)
            if not await pa_store.claim_submission(conn, sub_id, now, lease, token):
                return  # someone else sends it (or sent it)
            if row.kind != "inquire" and await self._task_version(conn, row.task_id) != row.task_version:
                # Answered, cancelled or resubmitted since this was recorded: sending it now would act
                # on a request the Task no longer stands for.
                await pa_store.supersede(conn, sub_id, token)
                return
        if payer is None:
            failed = Failed(f"payer {row.payer!r} is no longer configured", None, 0)
            await self._record(row, token, None, failed)
            return
        body = row.body.encode()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(_call_budget_s(payer)):
                if row.kind == "inquire":
                    outcome = await self.client.inquire(payer, body, row.id)
                else:  # submit and cancel are both Claim/$submit
                    outcome = await self.client.submit(payer, body, row.id)
        except TimeoutError:
            took = int((time.perf_counter() - started) * 1_000_000)
            outcome = Failed(f"no answer within {_call_budget_s(payer):g} s", None, took)
        await self._record(row, token, payer, outcome)

    async def _recover(self, row: Submission, now: int) -> None:
        """A request left `sending` by a process that died: a failed attempt whose outcome is unknown."""
        token = uuid.uuid4().hex
        async with self.db.write() as conn:
            if not await pa_store.recover_stale(conn, row.id, now, token):
                return
        await self._record(row, token, self.payers.by_name(row.payer), Failed(UNKNOWN, None, 0))

    async def _task_version(self, conn: AsyncConnection, task_id: str) -> int | None:
        stored = await store.current(conn, "Task", task_id)
        return None if stored is None or stored.deleted else stored.version

    async def _record(self, row: Submission, token: str, payer: PayerConfig | None, outcome: Outcome) -> None:
        now = dates.now_us()
        if isinstance(outcome, Accepted):
            await self._accepted(row, token, outcome, now)
            return
        if isinstance(outcome, Answered) and row.kind == "cancel":  # the Task was cancelled already
            async with self.db.write() as conn:
                await pa_store.finish_submission(
                    conn, row.id, token, state="sent", sent_us=now, duration_us=outcome.duration_us,
                    http_status=outcome.http_status, error=None,
                )  # fmt: skip
            return
        if isinstance(outcome, Answered):
            source = "pas-response" if row.kind == "submit" else "pas-inquiry"
            try:
                decisions = pas.decisions_from_response(outcome.body, source)
            except pas.PasError as exc:
                if outcome.http_status == 202:
                    # Queued with some other body (e.g. an informational OperationOutcome): taken, no
                    # decision yet, and not to be sent again.
                    await self._accepted(row, token, Accepted(202, outcome.duration_us), now)
                    return
                outcome = Failed(
                    f"the payer's answer is not a PAS response: {exc}"[:500], outcome.http_status, 0
                )
            else:
                await self._answered(row, token, payer, outcome, decisions[0], now)
                return
        async with self.db.write() as conn:
            current = await self._task_version(conn, row.task_id) == row.task_version
            if isinstance(outcome, Refused):
                if not await pa_store.finish_submission(
                    conn, row.id, token, state="sent", sent_us=now, duration_us=outcome.duration_us,
                    http_status=outcome.http_status, error=outcome.error,
                ):  # fmt: skip
                    return  # not ours to record any more
                if row.kind == "submit" and current:
                    await self._move(
                        conn, row.task_id, "rejected-by-payer", f"Refused by the payer: {outcome.error}"
                    )
                log.warning("payer request %s refused: HTTP %s", row.id, outcome.http_status)
                return
            retry = payer.retry if payer else None
            gives_up = retry is None or row.attempt >= retry.max_attempts or row.kind == "inquire"
            next_at = 0 if gives_up or retry is None else now + int(retry.delay_s(row.attempt) * 1_000_000)
            if not await pa_store.finish_submission(
                conn, row.id, token, state="abandoned" if gives_up else "failed", sent_us=now,
                duration_us=outcome.duration_us, http_status=outcome.http_status, error=outcome.error,
                next_attempt_us=next_at,
            ):  # fmt: skip
                return
            # Only the Task version this request stood for turns into a submission error: a Task that
            # moved on meanwhile (the payer's question, an answer by notification) keeps its state.
            if row.kind == "submit" and current:
                note = (
                    f"gave up after {row.attempt} attempts: {outcome.error}"
                    if gives_up
                    else f"attempt {row.attempt} failed ({outcome.error});"
                    f" retry at {dates.format_instant(next_at)}"
                )
                await self._move(conn, row.task_id, "submission-error", note)
        # The payer's diagnostics may hold patient details: the log gets the status only.
        log.warning("payer request %s failed: HTTP %s", row.id, outcome.http_status or "-")

    async def _accepted(self, row: Submission, token: str, outcome: Accepted, now: int) -> None:
        """The payer took the request without deciding (202, queued): sent, not failed, so it is never
        sent again. A submission's Task becomes payer-received; an inquiry or a cancellation changes
        nothing more."""
        async with self.db.write() as conn:
            if not await pa_store.finish_submission(
                conn, row.id, token, state="sent", sent_us=now, duration_us=outcome.duration_us,
                http_status=outcome.http_status, error=None,
            ):  # fmt: skip
                return  # not ours to record any more
            if row.kind == "submit" and await self._task_version(conn, row.task_id) == row.task_version:
                said = f": {outcome.note}" if outcome.note else ""
                await self._move(
                    conn,
                    row.task_id,
                    "payer-received",
                    f"Accepted by the payer for review (HTTP {outcome.http_status}{said}); no decision yet",
                )
        log.info("payer request %s accepted without a decision: HTTP %s", row.id, outcome.http_status)

    async def _answered(
        self,
        row: Submission,
        token: str,
        payer: PayerConfig | None,
        outcome: Answered,
        decision: PayerDecision,
        now: int,
    ) -> None:
        for attempt in range(3):
            unusable: str | None = None
            async with self.db.write() as conn:
                try:
                    async with conn.begin_nested():
                        await self.service.apply(conn, row.task_id, decision)
                except VersionConflict:
                    if attempt < 2:
                        continue  # a concurrent write to the Task: apply again on the newer version
                    unusable = "the Task kept changing while the answer was applied"
                except FhirError as exc:
                    unusable = str(exc)
                moved_on = await self._task_version(conn, row.task_id) != row.task_version
                if unusable is None or moved_on:
                    # Applied; or the Task was answered, cancelled or resubmitted meanwhile: keep the
                    # answer's record and say why it was not applied.
                    await pa_store.finish_submission(
                        conn, row.id, token, state="sent", sent_us=now, duration_us=outcome.duration_us,
                        http_status=outcome.http_status,
                        error=f"answer not applied: {unusable}"[:2000] if unusable else None,
                    )  # fmt: skip
                    if unusable:
                        log.warning("answer to %s not applied: the Task moved on", row.id)
                    return
            # The answer itself is unusable (e.g. an invalid ClaimResponse): a failed attempt.
            failed = Failed(f"the payer's answer could not be used: {unusable}"[:500], outcome.http_status, 0)
            await self._record(row, token, payer, failed)
            return

    async def _move(self, conn: AsyncConnection, task_id: str, status: str, reason: str) -> int | None:
        try:
            async with conn.begin_nested():
                return await self.service.move(conn, task_id, status, reason)
        except (FhirError, VersionConflict) as exc:
            log.warning("Task/%s not moved to %s: %s", task_id, status, type(exc).__name__)
            return None

    async def retry(self, row: Submission, now: int) -> None:
        """Send a failed request again under a new key: a submission as a new Task version
        (submission-error -> submitted), a cancellation as a new row for the same (cancelled) version."""
        async with self.db.write() as conn:
            if not await pa_store.set_submission_state(conn, row.id, "retried", "failed"):
                return  # another worker took it
            if row.kind == "cancel":
                version = row.task_version
                new_id = submission_id(row.task_id, row.task_version, "cancel", row.attempt + 1)
            else:
                task = resource_of(await store.current(conn, "Task", row.task_id))
                focus = str((task or {}).get("focus", {}).get("reference", ""))
                await pa_store.lock_order(conn, focus.partition("/")[2])  # as a resubmission by hand does
                task = resource_of(await store.current(conn, "Task", row.task_id))
                if task is None or tasks.business_status(task) != "submission-error":
                    return  # answered meanwhile (a late notification), cancelled, or resubmitted by hand
                moved = await self._move(conn, row.task_id, "submitted", "")
                if moved is None:
                    return
                version, new_id = moved, submission_id(row.task_id, moved)
            await pa_store.add_submission(
                conn,
                pa_store.new_submission(
                    new_id, row.task_id, version, row.kind, row.payer, row.attempt + 1, now, row.body
                ),
            )
        await self.send(new_id)

    # -- $inquire for pended requests ------------------------------------------------------------

    async def _inquire_pended(self, now: int) -> None:
        async with self.db.read() as conn:
            # Pended requests, and those the payer took without deciding (202): their answer may only
            # come by $inquire when the payer sends no notification.
            pended = await pa_store.in_status(conn, list(INQUIRED))
            histories = await pa_store.submissions_of_tasks(conn, [row.task_id for row in pended])
            plans = []
            for row in pended:
                history = histories.get(row.task_id, [])
                submits = [s for s in history if s.kind == "submit"]
                if not submits:
                    continue
                payer = self.payers.by_name(submits[-1].payer)
                if payer is None or payer.inquire_every_seconds <= 0:
                    continue
                last = max([s.created_us for s in history] + [row.updated_us])
                if now - last >= payer.inquire_every_seconds * 1_000_000:
                    plans.append((row, submits[-1], len(history)))
        for row, submit, n in plans:
            new_id = submission_id(row.task_id, row.task_version, "inquire", n)
            async with self.db.write() as conn:
                added = await pa_store.add_submission(
                    conn,
                    pa_store.new_submission(
                        new_id, row.task_id, row.task_version, "inquire", submit.payer, 1, now, submit.body
                    ),
                )
            if added:
                await self.send(new_id)

    # -- timers ----------------------------------------------------------------------------------

    async def _timers(self, now: int) -> None:
        async with self.db.write() as conn:
            for row in await pa_store.overdue(conn, sorted(lifecycle.AWAITING_PAYER), now):
                await self._once(conn, row.task_id, "overdue", str(row.due_us), now, self._overdue)
            for row in await pa_store.in_status(conn, sorted(lifecycle.APPROVED)):
                if not row.auth_end:
                    continue
                try:
                    end_us = dates.date_range(row.auth_end)[1]
                except ValueError:
                    continue
                if end_us <= now:
                    await self._once(conn, row.task_id, "expired", row.auth_end, now, self._expired)
                elif end_us - now <= self.window_us:
                    await self._once(conn, row.task_id, "expiring", row.auth_end, now, self._expiring)

    async def _once(
        self,
        conn: AsyncConnection,
        task_id: str,
        kind: str,
        key: str,
        now: int,
        action: Callable[[AsyncConnection, str, int], Awaitable[None]],
    ) -> None:
        """Fire a timer once (in any process); a failing one is undone alone and tried next round."""
        try:
            async with conn.begin_nested():
                if await pa_store.fire_once(conn, task_id, kind, key, now):
                    await action(conn, task_id, now)
        except (FhirError, VersionConflict) as exc:
            log.warning(
                "%s timer for Task/%s failed (%s); next round tries again", kind, task_id, type(exc).__name__
            )

    async def _overdue(self, conn: AsyncConnection, task_id: str, now: int) -> None:
        await self._emit_timer(conn, "pa-overdue", task_id, now)

    async def _expired(self, conn: AsyncConnection, task_id: str, now: int) -> None:
        stored = await store.current(conn, "Task", task_id)
        task = resource_of(stored)
        end = tasks.authorized_end(task) if task else None
        async with conn.begin_nested():
            await self.service.move(conn, task_id, "expired", f"The authorization ended {end}")

    async def _expiring(self, conn: AsyncConnection, task_id: str, now: int) -> None:
        await self._emit_timer(conn, "pa-expiring", task_id, now)
        await self._open_renewal(conn, task_id, now)

    async def _open_renewal(self, conn: AsyncConnection, task_id: str, now: int) -> None:
        task = resource_of(await store.current(conn, "Task", task_id))
        if task is None:
            return
        renewal_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"renewal:{task_id}:{tasks.authorized_end(task)}"))
        renewal = tasks.renewal(task, renewal_id, dates.from_us(now))
        self.service.fhir.validate(renewal)
        pending = self.service.fhir.plan_new(self.service.internal, renewal, renewal_id, "POST", now)
        await self.service.fhir.write_versions(conn, self.service.internal, [pending])
        log.info("renewal Task/%s opened for Task/%s", renewal_id, task_id)

    async def _emit_timer(self, conn: AsyncConnection, evaluator: str, task_id: str, now: int) -> None:
        stored = await store.current(conn, "Task", task_id)
        task = resource_of(stored)
        topics = [t for t in self.manager.topics.topics if t.evaluator == evaluator]
        if task is None or stored is None or not any(self.manager.index.has_topic(t.url) for t in topics):
            return
        change = Change("Task", task_id, stored.version, None, task, extract(task, ()))
        context = EvaluationContext(self.manager.rules, now_us=now, window_us=self.window_us)
        fired = [(t, change, e) for t in topics for e in EVALUATORS[t.evaluator](change, context)]
        if fired:
            await self.manager.emit(conn, fired)

    # -- turnaround ------------------------------------------------------------------------------

    async def compute_turnaround(self, now: int | None = None) -> list[PayerTurnaround]:
        now = now or dates.now_us()
        async with self.db.read() as conn:
            rows = await pa_store.submitted_ever(conn)
            # The payers file may list an insurer by reference or by an identifier of it: each owner is
            # resolved as a submission is (its Organization's identifiers count), once per owner.
            names: dict[str, str] = {}
            for owner in sorted({row.payer for row in rows if row.payer}):
                payer = await self.service.payer_for_owner(conn, owner)
                names[owner] = payer.name if payer else owner
        by_payer: dict[str, list[pa_store.Tracking]] = {}
        for row in rows:
            name = names[row.payer] if row.payer else "unknown"
            by_payer.setdefault(name, []).append(row)
        report = []
        for name, group in sorted(by_payer.items()):
            figures = turnaround.summarize((clock_of(r) for r in group), now)
            report.append(
                PayerTurnaround(
                    name,
                    figures.decided,
                    figures.pending,
                    figures.overdue,
                    figures.median_hours,
                    figures.p90_hours,
                    figures.mean_hours,
                )
            )
        return report


def clock_of(row: pa_store.Tracking) -> turnaround.Clock:
    """A tracking row (first submitted) as the turnaround figures read it."""
    assert row.submitted_us is not None
    return turnaround.Clock(
        row.submitted_us, row.decided_us, row.due_us, row.business_status in lifecycle.AWAITING_PAYER
    )


def _call_budget_s(payer: PayerConfig | None) -> float:
    """The longest one request to a payer may take in all: a token, the call, and one retry of both
    after a 401 (httpx timeouts apply per phase, not to the whole call)."""
    return 4 * (payer.timeout_seconds if payer else 15.0) + 5


INQUIRED = ("pended", "payer-received")
UNKNOWN = "the gateway stopped while this request was in flight; whether the payer got it is unknown"
