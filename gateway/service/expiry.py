"""The pa-expiring timer: approved authorizations whose period ends soon fire the `pa-expiring` topic.

No write triggers this topic, so a timer looks at approved PA Tasks every few minutes (setting
`pa_expiring_check_seconds`) and fires once per Task version: what fired is kept in
`topic_timer_fired`, so a restart or a second process does not fire it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import orjson
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.fhir import dates
from gateway.fhir.extract import extract
from gateway.routing.evaluators import APPROVED, EVALUATORS, Change, EvaluationContext
from gateway.service.subscriptions import SubscriptionManager
from gateway.store import search as store_search
from gateway.store.tables import topic_timer_fired

log = logging.getLogger("gateway.expiry")


class ExpiryWatch:
    def __init__(self, manager: SubscriptionManager, *, window_days: int, interval_s: float) -> None:
        self.manager = manager
        self.window_us = window_days * 86_400_000_000
        self.interval_s = interval_s
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._forever(), name="pa-expiring")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _forever(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception:
                log.exception("pa-expiring check failed")
            await asyncio.sleep(self.interval_s)

    async def run_once(self, now_us: int | None = None) -> int:
        """One check; returns the number of events it appended."""
        topics = [t for t in self.manager.topics.topics if t.evaluator == "pa-expiring"]
        if not any(self.manager.index.has_topic(t.url) for t in topics):
            return 0
        async with self.manager.db.write() as conn:
            return await self._check(conn, topics, now_us or dates.now_us())

    async def _check(self, conn: AsyncConnection, topics: list, now_us: int) -> int:  # type: ignore[type-arg]
        tasks = await store_search.by_token(conn, "Task", "business-status", sorted(APPROVED))
        fired_rows = await conn.execute(
            select(
                topic_timer_fired.c.topic, topic_timer_fired.c.focus_id, topic_timer_fired.c.focus_version
            ).where(topic_timer_fired.c.focus_type == "Task")
        )
        done = {(r.topic, r.focus_id, r.focus_version) for r in fired_rows}
        context = EvaluationContext(self.manager.rules, now_us=now_us, window_us=self.window_us)
        fired = []
        for stored in tasks:
            if stored.content is None:
                continue
            task = orjson.loads(stored.content)
            change = Change("Task", stored.id, stored.version, None, task, extract(task, ()))
            for topic in topics:
                if (topic.url, stored.id, stored.version) in done:
                    continue
                events = EVALUATORS[topic.evaluator](change, context)
                if events:
                    fired += [(topic, change, e) for e in events]
                    await conn.execute(
                        insert(topic_timer_fired).values(
                            topic=topic.url,
                            focus_type="Task",
                            focus_id=stored.id,
                            focus_version=stored.version,
                            fired_us=now_us,
                        )
                    )
        return await self.manager.emit(conn, fired) if fired else 0
