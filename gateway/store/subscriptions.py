"""Subscription delivery state: event numbering, the outbox, delivery progress, leases, attempts.

Event numbers come from `UPDATE subscription_counter SET last_event = last_event + n RETURNING`, in the
writer's transaction: a number exists exactly when its event (and the resource version behind it) is
committed, so numbers are gap-free and survive any crash. Counters are taken in subscription-id order
so that concurrent PostgreSQL writers never deadlock on them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.fhir import jsonio
from gateway.store import driver_sql
from gateway.store.resources import bulk_insert
from gateway.store.tables import (
    delivery_attempt,
    subscription_counter,
    subscription_delivery,
    subscription_event,
    subscription_generation,
    ws_binding_token,
)


@dataclass(frozen=True, slots=True)
class NewEvent:
    topic: str
    focus_type: str
    focus_id: str
    focus_version: int
    created_us: int
    details: Any = None  # JSON-able


@dataclass(frozen=True, slots=True)
class StoredEvent:
    sub_id: str
    number: int
    topic: str
    focus_type: str
    focus_id: str
    focus_version: int
    created_us: int
    details: Any


@dataclass(frozen=True, slots=True)
class DeliveryState:
    sub_id: str
    status: str
    delivered: int
    last_event: int
    secret: str
    owner: str | None
    owner_scope: str
    failures: int
    failing_since_us: int | None
    next_attempt_us: int
    last_error: str | None
    last_sent_us: int | None
    lease_owner: str | None
    lease_until_us: int | None


@dataclass(frozen=True, slots=True)
class Attempt:
    sub_id: str
    kind: str
    first_event: int | None
    last_event: int | None
    started_us: int
    duration_us: int
    outcome: str
    http_status: int | None
    error: str | None
    worker: str


# -- registration ------------------------------------------------------------------------------


async def register(
    conn: AsyncConnection,
    sub_id: str,
    *,
    status: str,
    secret: str,
    owner: str | None,
    owner_scope: str,
    now: int,
) -> None:
    """Create the counter and delivery rows of a new subscription, or reset delivery of an existing one.

    A reset (a client re-requesting a subscription) keeps the event count and what was delivered: the
    subscription picks up where it stopped.
    """
    d = subscription_delivery.c
    existing = (await conn.execute(select(d.sub_id).where(d.sub_id == sub_id))).first()
    if existing is None:
        await conn.execute(insert(subscription_counter).values(sub_id=sub_id, last_event=0))
        await conn.execute(
            insert(subscription_delivery).values(
                sub_id=sub_id,
                status=status,
                delivered=0,
                secret=secret,
                owner=owner,
                owner_scope=owner_scope,
                failures=0,
                next_attempt_us=now,
                updated_us=now,
            )
        )
        return
    await conn.execute(
        update(subscription_delivery)
        .where(d.sub_id == sub_id)
        .values(
            status=status,
            secret=secret,
            owner=owner,
            owner_scope=owner_scope,
            failures=0,
            failing_since_us=None,
            last_error=None,
            next_attempt_us=now,
            updated_us=now,
        )
    )


async def set_status(
    conn: AsyncConnection, sub_id: str, status: str, now: int, error: str | None = None
) -> None:
    values: dict[str, Any] = {"status": status, "updated_us": now}
    if error is not None:
        values["last_error"] = error
    await conn.execute(
        update(subscription_delivery).where(subscription_delivery.c.sub_id == sub_id).values(values)
    )


async def bump_generation(conn: AsyncConnection) -> int:
    """Note a Subscription change for other processes; returns the new generation."""
    g = subscription_generation.c
    result = await conn.execute(
        update(subscription_generation).where(g.id == 1).values(value=g.value + 1).returning(g.value)
    )
    return int(result.scalar_one_or_none() or 0)


async def generation(conn: AsyncConnection) -> int:
    rows = await driver_sql.fetch(conn, "SELECT value FROM subscription_generation", ())
    return int(rows[0][0] or 0) if rows else 0


# -- the outbox --------------------------------------------------------------------------------


async def append_events(
    conn: AsyncConnection, events: Mapping[str, Sequence[NewEvent]]
) -> dict[str, tuple[int, int]]:
    """Number and store events per subscription; returns the (first, last) number given to each."""
    numbered: dict[str, tuple[int, int]] = {}
    rows: list[tuple[Any, ...]] = []
    c = subscription_counter.c
    for sub_id in sorted(events):
        batch = events[sub_id]
        if not batch:
            continue
        last = (
            await conn.execute(
                update(subscription_counter)
                .where(c.sub_id == sub_id)
                .values(last_event=c.last_event + len(batch))
                .returning(c.last_event)
            )
        ).scalar_one_or_none()
        if last is None:  # the subscription was deleted concurrently
            continue
        first = int(last) - len(batch) + 1
        numbered[sub_id] = (first, int(last))
        for offset, event in enumerate(batch):
            # Details may quote a resource's values (a Task's, a result's): decimals as written.
            details = jsonio.dumps(event.details).decode() if event.details is not None else None
            rows.append(
                (
                    sub_id,
                    first + offset,
                    event.topic,
                    event.focus_type,
                    event.focus_id,
                    event.focus_version,
                    event.created_us,
                    details,
                )
            )
    await bulk_insert(
        conn,
        subscription_event,
        ("sub_id", "number", "topic", "focus_type", "focus_id", "focus_version", "created_us", "details"),
        rows,
    )
    return numbered


def _event(row: Any) -> StoredEvent:
    return StoredEvent(
        row.sub_id,
        int(row.number),
        row.topic,
        row.focus_type,
        row.focus_id,
        int(row.focus_version),
        int(row.created_us),
        jsonio.loads(row.details) if row.details else None,
    )


async def events_between(
    conn: AsyncConnection, sub_id: str, after: int, until: int | None = None, limit: int = 1000
) -> list[StoredEvent]:
    """Events numbered after `after` up to `until` (inclusive), oldest first."""
    e = subscription_event.c
    conditions = [e.sub_id == sub_id, e.number > after]
    if until is not None:
        conditions.append(e.number <= until)
    rows = await conn.execute(select(subscription_event).where(*conditions).order_by(e.number).limit(limit))
    return [_event(row) for row in rows]


# -- delivery state ----------------------------------------------------------------------------


def _state_select() -> Any:
    d, c = subscription_delivery.c, subscription_counter.c
    return select(
        d.sub_id,
        d.status,
        d.delivered,
        c.last_event,
        d.secret,
        d.owner,
        d.owner_scope,
        d.failures,
        d.failing_since_us,
        d.next_attempt_us,
        d.last_error,
        d.last_sent_us,
        d.lease_owner,
        d.lease_until_us,
    ).select_from(subscription_delivery.join(subscription_counter, c.sub_id == d.sub_id))


def _state(row: Any) -> DeliveryState:
    return DeliveryState(
        row.sub_id,
        row.status,
        int(row.delivered),
        int(row.last_event),
        row.secret,
        row.owner,
        row.owner_scope,
        int(row.failures),
        row.failing_since_us,
        int(row.next_attempt_us),
        row.last_error,
        row.last_sent_us,
        row.lease_owner,
        row.lease_until_us,
    )


async def state(conn: AsyncConnection, sub_id: str) -> DeliveryState | None:
    row = (await conn.execute(_state_select().where(subscription_delivery.c.sub_id == sub_id))).first()
    return _state(row) if row is not None else None


async def created_by(conn: AsyncConnection, owner: str) -> list[str]:
    """Ids of the subscriptions a client created."""
    rows = await conn.execute(
        select(subscription_delivery.c.sub_id).where(subscription_delivery.c.owner == owner)
    )
    return [row.sub_id for row in rows]


async def states(conn: AsyncConnection, sub_ids: Sequence[str]) -> dict[str, DeliveryState]:
    if not sub_ids:
        return {}
    rows = await conn.execute(_state_select().where(subscription_delivery.c.sub_id.in_(list(sub_ids))))
    return {row.sub_id: _state(row) for row in rows}


async def pending_work(conn: AsyncConnection, now: int, limit: int = 200) -> list[str]:
    """Subscriptions with something to do now: undelivered events or a handshake, and no live lease."""
    d, c = subscription_delivery.c, subscription_counter.c
    rows = await conn.execute(
        select(d.sub_id)
        .select_from(subscription_delivery.join(subscription_counter, c.sub_id == d.sub_id))
        .where(
            or_(
                and_(d.status == "active", c.last_event > d.delivered),
                d.status == "requested",
            ),
            d.next_attempt_us <= now,
            or_(d.lease_owner.is_(None), d.lease_until_us < now),
        )
        .limit(limit)
    )
    return [row.sub_id for row in rows]


async def claim(conn: AsyncConnection, sub_id: str, worker: str, now: int, lease_us: int) -> bool:
    """Take (or renew) the delivery lease of one subscription; False when another live worker has it."""
    d = subscription_delivery.c
    result = await conn.execute(
        update(subscription_delivery)
        .where(
            d.sub_id == sub_id,
            or_(d.lease_owner.is_(None), d.lease_owner == worker, d.lease_until_us < now),
        )
        .values(lease_owner=worker, lease_until_us=now + lease_us)
        .returning(d.sub_id)
    )
    return result.first() is not None


async def renew_leases(conn: AsyncConnection, worker: str, until_us: int) -> None:
    """Extend every lease `worker` holds (the keeper of a live process calls this every few seconds)."""
    d = subscription_delivery.c
    await conn.execute(
        update(subscription_delivery).where(d.lease_owner == worker).values(lease_until_us=until_us)
    )


async def release(conn: AsyncConnection, sub_id: str, worker: str) -> None:
    d = subscription_delivery.c
    await conn.execute(
        update(subscription_delivery)
        .where(d.sub_id == sub_id, d.lease_owner == worker)
        .values(lease_owner=None, lease_until_us=None)
    )


@dataclass(frozen=True, slots=True)
class Progress:
    """Where one subscription's delivery stands after a round of attempts."""

    sub_id: str
    delivered: int
    failures: int
    failing_since_us: int | None
    next_attempt_us: int
    last_error: str | None
    last_sent_us: int | None


async def record(
    conn: AsyncConnection, progress: Sequence[Progress], attempts: Sequence[Attempt], worker: str, now: int
) -> None:
    """Persist delivery progress and attempt rows (one transaction for many subscriptions).

    `delivered` only moves forward, whichever process writes it.
    """
    d = subscription_delivery.c
    for p in progress:
        await conn.execute(
            update(subscription_delivery)
            .where(d.sub_id == p.sub_id)
            .values(
                delivered=_greatest(conn, d.delivered, p.delivered),
                failures=p.failures,
                failing_since_us=p.failing_since_us,
                next_attempt_us=p.next_attempt_us,
                last_error=p.last_error,
                last_sent_us=p.last_sent_us,
                updated_us=now,
            )
        )
    await bulk_insert(
        conn,
        delivery_attempt,
        (
            "sub_id",
            "kind",
            "first_event",
            "last_event",
            "started_us",
            "duration_us",
            "outcome",
            "http_status",
            "error",
            "worker",
        ),
        [
            (
                a.sub_id,
                a.kind,
                a.first_event,
                a.last_event,
                a.started_us,
                a.duration_us,
                a.outcome,
                a.http_status,
                a.error,
                a.worker,
            )
            for a in attempts
        ],
    )


def _greatest(conn: AsyncConnection, column: Any, value: int) -> Any:
    from sqlalchemy import func

    name = "max" if conn.dialect.name == "sqlite" else "greatest"
    return getattr(func, name)(column, value)


async def attempts(conn: AsyncConnection, sub_id: str, limit: int = 50) -> list[Attempt]:
    a = delivery_attempt.c
    rows = await conn.execute(
        select(delivery_attempt).where(a.sub_id == sub_id).order_by(a.id.desc()).limit(limit)
    )
    return [
        Attempt(
            r.sub_id,
            r.kind,
            r.first_event,
            r.last_event,
            r.started_us,
            r.duration_us,
            r.outcome,
            r.http_status,
            r.error,
            r.worker,
        )
        for r in rows
    ]


async def owned_by(conn: AsyncConnection, owner: str) -> list[str]:
    """Subscriptions the client `owner` created (or last re-requested) that are not off."""
    d = subscription_delivery.c
    rows = await conn.execute(select(d.sub_id).where(d.owner == owner, d.status != "off").order_by(d.sub_id))
    return [row.sub_id for row in rows]


async def forget(conn: AsyncConnection, sub_id: str) -> None:
    """A deleted subscription: its delivery stops; its events stay until the row is purged."""
    await conn.execute(
        update(subscription_delivery).where(subscription_delivery.c.sub_id == sub_id).values(status="off")
    )


# -- websocket binding tokens ------------------------------------------------------------------


async def add_binding_token(
    conn: AsyncConnection, token: str, sub_ids: Sequence[str], expires_us: int
) -> None:
    await conn.execute(
        insert(ws_binding_token).values(
            token=token, sub_ids=orjson.dumps(list(sub_ids)).decode(), expires_us=expires_us
        )
    )


async def take_binding_token(conn: AsyncConnection, token: str, now: int) -> list[str] | None:
    """The subscriptions a token binds, once: the token is deleted whether or not it had expired."""
    t = ws_binding_token.c
    row = (await conn.execute(select(ws_binding_token).where(t.token == token))).first()
    if row is None:
        return None
    await conn.execute(delete(ws_binding_token).where(t.token == token))
    await conn.execute(delete(ws_binding_token).where(t.expires_us < now))
    if row.expires_us < now:
        return None
    ids: list[str] = orjson.loads(row.sub_ids)
    return ids
