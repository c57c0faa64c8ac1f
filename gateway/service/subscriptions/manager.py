"""Topic-based subscriptions: checking Subscription writes, matching every write, filling the outbox.

The manager is a write observer of the FHIR service, so it runs inside the transaction of every write,
whatever its source (REST, transaction Bundle, HL7 v2 pipeline, payer feed):

    write -> store.write -> observe():
        Subscription versions  -> checked (topic, filters, channel, endpoint, owner's scopes); delivery rows
        other versions         -> topic evaluators -> index of subscriptions -> numbered outbox rows
    commit -> after-commit hook -> the deliverer is woken for the subscriptions that got events

Events and the resource versions behind them commit or roll back together: nothing is lost between them.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence

import orjson
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway import tracing
from gateway.exceptions import BadRequest, Forbidden, NotFound, Unprocessable
from gateway.fhir import dates, jsonio
from gateway.mapping.monitoring import MonitoringRules
from gateway.routing.endpoints import Allowlist, endpoint_host, endpoint_problem
from gateway.routing.evaluators import EVALUATORS, Change, EvaluationContext, Fired
from gateway.routing.filters import index_keys
from gateway.routing.matching import SubscriptionIndex
from gateway.routing.requests import SECRET_EXTENSION, SubscriptionSpec, parse_subscription
from gateway.routing.topics import Topic, TopicSet
from gateway.service.access.context import READ, RequestContext
from gateway.store import resources as store
from gateway.store import search as store_search
from gateway.store import subscriptions as sub_store
from gateway.store.database import Database
from gateway.store.resources import PendingVersion, Stored
from gateway.store.subscriptions import NewEvent
from gateway.types import JSON, Issue

log = logging.getLogger("gateway.subscriptions")

# Subscription statuses that collect events; `off` does not (IG: in `error` the count keeps increasing).
COLLECTING = ("requested", "active", "error")


async def resolve_host(host: str) -> list[str]:
    """Addresses of a host name (an address resolves to itself); empty when it does not resolve."""
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except OSError:
        return []
    return sorted({str(info[4][0]) for info in infos})


class SubscriptionManager:
    def __init__(
        self,
        db: Database,
        topics: TopicSet,
        rules: MonitoringRules,
        *,
        allowlist: Allowlist,
        resolver: Callable[[str], Awaitable[list[str]]] | None = None,
    ) -> None:
        self.db = db
        self.topics = topics
        self.rules = rules
        self.allowlist = allowlist
        self._resolve = resolver or resolve_host
        self._index = SubscriptionIndex(())
        self._generation = -1
        self._dirty = False
        # Per write transaction not yet committed (several run at once on PostgreSQL), by its connection:
        # the subscriptions that got events, and Subscription changes as (id, spec or None, generation).
        self._woken: dict[AsyncConnection, set[str]] = {}
        self._pending: dict[AsyncConnection, list[tuple[str, SubscriptionSpec | None, int]]] = {}
        # Transactions that have read the generation already: a transaction sees the subscriptions as of
        # its first write (an HL7 v2 batch writes twice: its resources, then the alerts they raise).
        self._checked: set[AsyncConnection] = set()
        # Called after commit with the subscriptions that got events (the deliverer's wake-up).
        self.on_events: list[Callable[[set[str]], None]] = []
        self.on_registry_change: list[Callable[[], None]] = []
        db.after_commit.append(self._after_commit)
        db.after_rollback.append(self._after_rollback)

    # -- the registry of live subscriptions ------------------------------------------------------

    @property
    def index(self) -> SubscriptionIndex:
        return self._index

    def spec(self, sub_id: str) -> SubscriptionSpec | None:
        return self._index.specs.get(sub_id)

    async def reload(self, conn: AsyncConnection | None = None) -> None:
        """Rebuild the index from the stored Subscriptions and their delivery rows."""
        if conn is None:
            async with self.db.read() as own:
                await self._reload_on(own)
        else:
            await self._reload_on(conn)

    async def _reload_on(self, conn: AsyncConnection) -> None:
        generation = await sub_store.generation(conn)
        query_rows = await store_search.all_current(conn, "Subscription")
        states = await sub_store.states(conn, [s.id for s in query_rows])
        specs: list[SubscriptionSpec] = []
        for stored in query_rows:
            state = states.get(stored.id)
            if state is None or state.status not in COLLECTING or stored.content is None:
                continue
            spec, _ = parse_subscription(orjson.loads(stored.content), self.topics)
            if spec is None:
                log.warning("stored Subscription/%s no longer parses; it is skipped", stored.id)
                continue
            specs.append(spec)
        self._index = SubscriptionIndex(specs)
        self._generation = generation
        self._dirty = False
        for callback in self.on_registry_change:
            callback()

    async def _ensure_current(self, conn: AsyncConnection) -> None:
        """Another process may have changed subscriptions: one primary-key read tells.

        When this transaction changed Subscriptions itself, the generation row is locked and its value
        before the first bump is what the index must have seen.
        """
        own = self._pending.get(conn)
        if self._dirty:
            await self._reload_on(conn)
        elif conn in self._checked and not own:
            return
        else:
            # On SQLite too: `gateway clients remove | disable` turns subscriptions off from another process.
            seen = own[0][2] - 1 if own else await sub_store.generation(conn)
            if seen != self._generation:
                await self._reload_on(conn)
        self._checked.add(conn)

    def _after_commit(self, conn: AsyncConnection) -> None:
        """Apply this transaction's Subscription changes to the index (no reload), then wake the deliverer."""
        self._checked.discard(conn)
        for sub_id, spec, generation in self._pending.pop(conn, ()):
            if spec is None:
                self._index.remove(sub_id)
            else:
                self._index.add(spec)
            # Our own bump: the index is current unless another process bumped too (then it reloads).
            if generation == self._generation + 1:
                self._generation = generation
        woken = self._woken.pop(conn, None)
        if woken:
            for callback in self.on_events:
                callback(woken)

    def _after_rollback(self, conn: AsyncConnection | None) -> None:
        if conn is None:
            return
        self._checked.discard(conn)
        self._woken.pop(conn, None)
        # A reload may have happened inside the failed transaction, seeing its own uncommitted changes.
        if self._pending.pop(conn, None):
            self._dirty = True

    # -- the write observer ----------------------------------------------------------------------

    async def observe(
        self,
        conn: AsyncConnection,
        ctx: RequestContext,
        pending: Sequence[PendingVersion],
        written: list[Stored],
    ) -> None:
        subscription_writes = [
            (p, s) for p, s in zip(pending, written, strict=True) if p.type == "Subscription"
        ]
        for p, s in subscription_writes:
            spec = await self._subscription_written(conn, ctx, p, s)
            generation = await sub_store.bump_generation(conn)
            self._pending.setdefault(conn, []).append((s.id, spec, generation))
        if not self.topics.topics:
            return
        await self._ensure_current(conn)
        if not len(self._index):
            return
        changes = [
            (p, s)
            for p, s in zip(pending, written, strict=True)
            if p.type != "Subscription"
            and any(self._index.has_topic(t.url) for t in self.topics.for_type(p.type))
        ]
        if changes:
            await self.match(conn, [self._change(p, s) for p, s in changes])

    @staticmethod
    def _change(p: PendingVersion, s: Stored) -> Change:
        # Topics only read values (codes, statuses, numbers compared as floats), and nothing parsed here
        # is written or sent: orjson, faster than `jsonio`, is right. Likewise the other loads here.
        return Change(
            s.type,
            s.id,
            s.version,
            orjson.loads(p.previous) if p.previous else None,
            orjson.loads(p.content) if p.content else None,
            p.index,
        )

    async def match(self, conn: AsyncConnection, changes: Sequence[Change]) -> None:
        """Evaluate topics for changes being written and append the events they fire to the outbox."""
        with tracing.span("subscriptions.match", {"versions": len(changes)}) as current:
            context = EvaluationContext(self.rules)
            await self._prefetch(conn, changes, context)
            fired = [
                (topic, change, event)
                for change in changes
                for topic in self.topics.for_type(change.type)
                if self._index.has_topic(topic.url) and change.interaction in topic.interactions
                for event in EVALUATORS[topic.evaluator](change, context)
            ]
            tracing.set_attributes(current, {"events": len(fired)})
            await self.emit(conn, fired)

    async def emit(self, conn: AsyncConnection, fired: Iterable[tuple[Topic, Change, Fired]]) -> int:
        """Number and store the events for every subscription each fired event matches; returns how many."""
        now = dates.now_us()
        events: dict[str, list[NewEvent]] = {}
        keys_of: dict[tuple[str, str], set[str]] = {}
        for topic, change, event in fired:
            keys = keys_of.get((change.type, change.id))
            if keys is None:
                keys = keys_of[(change.type, change.id)] = index_keys(change.index)
            event_keys = keys | event.keys if event.keys else keys
            for spec in self._index.match(topic.url, event_keys):
                events.setdefault(spec.id, []).append(
                    NewEvent(topic.url, change.type, change.id, change.version, now, event.details)
                )
        if not events:
            return 0
        numbered = await sub_store.append_events(conn, events)
        self._woken.setdefault(conn, set()).update(numbered)
        return sum(last - first + 1 for first, last in numbered.values())

    async def _prefetch(
        self, conn: AsyncConnection, changes: Sequence[Change], context: EvaluationContext
    ) -> None:
        """What evaluators need beyond the change: Medications that orders of this batch reference (their
        codes are the orders' drug), and the active MedicationRequests of the batch's patients when a
        monitoring topic is subscribed."""
        referenced = {
            ("Medication", reference.split("/", 1)[1])
            for c in changes
            if c.type == "MedicationRequest" and c.current
            for reference in [str((c.current.get("medicationReference") or {}).get("reference", ""))]
            if reference.startswith("Medication/")
        }
        if referenced:
            context.medications = {
                f"Medication/{m.id}": orjson.loads(m.content)
                for m in await store.load_by_keys(conn, referenced)
                if m.content
            }
        monitoring = [t for t in self.topics.topics if t.evaluator == "medication-monitoring"]
        if not any(self._index.has_topic(t.url) for t in monitoring):
            return
        patients = sorted({c.patient for c in changes if c.type == "Observation" and c.patient and c.current})
        if not patients:
            return
        found = await store_search.by_reference(conn, "MedicationRequest", "patient", patients)
        by_patient: dict[str, list[JSON]] = {}
        medication_refs: set[tuple[str, str]] = set()
        for stored in found:
            if stored.content is None:
                continue
            request = orjson.loads(stored.content)
            if request.get("status") != "active":
                continue
            subject = request.get("subject", {}).get("reference", "")
            by_patient.setdefault(subject, []).append(request)
            reference = request.get("medicationReference", {}).get("reference", "")
            if reference.startswith("Medication/"):
                medication_refs.add(("Medication", reference.split("/", 1)[1]))
        context.active_requests = by_patient
        if medication_refs:
            context.medications = {
                **context.medications,
                **{
                    f"Medication/{m.id}": orjson.loads(m.content)
                    for m in await store.load_by_keys(conn, medication_refs)
                    if m.content
                },
            }

    # -- Subscription writes ---------------------------------------------------------------------

    async def _subscription_written(
        self, conn: AsyncConnection, ctx: RequestContext, p: PendingVersion, stored: Stored
    ) -> SubscriptionSpec | None:
        """Check a Subscription version and set up its delivery; returns it if it collects events."""
        if p.content is None:
            await sub_store.forget(conn, stored.id)
            return None
        resource = orjson.loads(p.content)
        spec, issues = parse_subscription(resource, self.topics)
        if spec is None:
            raise Unprocessable(issues=issues)
        if ctx.grants is not None and spec.status != "off":
            # A client's write (the gateway's own status writes skip it: the deliverer checks on every
            # attempt, and an endpoint whose answer turned private must still be put in `error`); an off
            # subscription calls no endpoint, and turning one off must not fail.
            await self._check_endpoint(spec)
        previous = orjson.loads(p.previous) if p.previous else None
        if (
            ctx.grants is not None
            and spec.channel == "fhir-forward"
            and (previous is None or previous.get("channel") != resource.get("channel"))
        ):
            # Where the gateway writes with its upstream credentials is the upstreams file's to say; a
            # client may only re-request (or turn off) the gateway's own forwarding subscription.
            raise Unprocessable(
                issues=[
                    Issue(
                        "error",
                        "business-rule",
                        "fhir-forward subscriptions come from the upstreams file",
                        ("Subscription.channel.type",),
                    )
                ]
            )
        current_state = await sub_store.state(conn, stored.id)
        if not _reactivated_for_owner(ctx, current_state, previous, resource):
            self._check_scopes(ctx, spec)
        if (
            ctx.grants is not None
            and spec.status == "error"
            and (current_state is None or current_state.status != "error")
        ):
            raise Unprocessable(
                issues=[
                    Issue(
                        "error",
                        "business-rule",
                        "Only the gateway sets status error",
                        ("Subscription.status",),
                    )
                ]
            )
        secret = spec.secret or (current_state.secret if current_state else None) or secrets.token_urlsafe(32)
        owner_scope = ctx.grants.scope_string() if ctx.grants is not None else "system/*.cruds"
        now = dates.now_us()
        if current_state is None:
            await sub_store.register(
                conn,
                stored.id,
                status=_start_status(spec),
                secret=secret,
                owner=ctx.client_id,
                owner_scope=owner_scope,
                now=now,
            )
            return None if spec.status == "off" else spec
        if spec.status == "off":  # by its client, or by the gateway (its owner was removed or disabled)
            await sub_store.set_status(conn, stored.id, "off", now)
            return None
        if ctx.grants is None:
            return spec  # the gateway's own status bookkeeping (handshake, error)
        if (
            _delivery_changed(previous, resource)
            or current_state.status in ("error", "off")
            or spec.status == "requested"
        ):
            # A client (re)requesting, or changing where and how it is called: handshake again. The
            # owner stays the creator: an administrator editing it does not lend it its own scopes.
            keeps_owner = current_state.owner is not None and current_state.owner != ctx.client_id
            await sub_store.register(
                conn,
                stored.id,
                status=_start_status(spec),
                secret=secret,
                owner=current_state.owner if keeps_owner else ctx.client_id,
                owner_scope=current_state.owner_scope if keeps_owner else owner_scope,
                now=now,
            )
        return spec

    async def _check_endpoint(self, spec: SubscriptionSpec) -> None:
        if spec.channel != "rest-hook" or spec.endpoint is None:
            return
        try:
            _, host, _ = endpoint_host(spec.endpoint)
        except ValueError as exc:
            raise Unprocessable(
                issues=[Issue("error", "value", str(exc), ("Subscription.channel.endpoint",))]
            ) from exc
        addresses = await self.addresses(host)
        problem = endpoint_problem(spec.endpoint, addresses, self.allowlist)
        if problem is not None:
            raise Unprocessable(
                issues=[Issue("error", "security", problem, ("Subscription.channel.endpoint",))]
            )

    async def addresses(self, host: str) -> list[str]:
        return await self._resolve(host)

    def _check_scopes(self, ctx: RequestContext, spec: SubscriptionSpec) -> None:
        for focus_type in spec.topic.focus_types:
            if not ctx.can(focus_type, READ):
                raise Forbidden(
                    f"Topic {spec.topic.url} notifies about {focus_type};"
                    " the token's scopes do not allow reading it"
                )

    # -- operations ------------------------------------------------------------------------------

    async def status_of(
        self, conn: AsyncConnection, ctx: RequestContext, sub_id: str
    ) -> tuple[JSON, sub_store.DeliveryState]:
        """A Subscription and its delivery state, for its owner (or an administrator) only: to anyone else
        it does not exist."""
        ctx.require("Subscription", READ)
        current = await store.current(conn, "Subscription", sub_id)
        state = await sub_store.state(conn, sub_id)
        if current is None or current.deleted or current.content is None or not _may_operate(ctx, state):
            raise NotFound(f"Subscription/{sub_id} does not exist")
        if state is None:
            raise NotFound(f"Subscription/{sub_id} has no delivery state")
        return orjson.loads(current.content), state

    async def visible_ids(self, conn: AsyncConnection, ctx: RequestContext) -> list[str] | None:
        """The Subscriptions a caller may see: its own, or every one with `subscriptions/admin`."""
        if ctx.grants is None or ctx.may(ADMIN_SCOPE):
            return None
        return await sub_store.created_by(conn, ctx.client_id or "")

    def spec_of(self, resource: JSON) -> SubscriptionSpec:
        spec, issues = parse_subscription(resource, self.topics)
        if spec is None:
            raise BadRequest(issues[0].diagnostics if issues else "Subscription no longer valid")
        return spec


ADMIN_SCOPE = "subscriptions/admin"
# What a channel.header value reads as to any reader: header values are credentials for the endpoint.
HIDDEN = "[hidden]"


def _may_operate(ctx: RequestContext, state: sub_store.DeliveryState | None) -> bool:
    if ctx.grants is None or ctx.may(ADMIN_SCOPE):
        return True
    return state is not None and state.owner is not None and state.owner == ctx.client_id


class SubscriptionPolicy:
    """Subscriptions belong to the client that created them, and their secrets are write-only.

    Only the owner (or a client holding `subscriptions/admin`, which no resource scope implies) sees,
    changes or deletes one; everyone else gets 404. Reads never show the signing secret (the
    subscription-secret extension) or the values of `channel.header` (credentials for the endpoint,
    shown as `Name: [hidden]`); a write that leaves them out, or sends a hidden value back, keeps the
    stored ones.
    """

    def __init__(self, manager: SubscriptionManager) -> None:
        self.manager = manager

    async def visible(self, conn: AsyncConnection, ctx: RequestContext) -> set[str] | None:
        ids = await self.manager.visible_ids(conn, ctx)
        return None if ids is None else set(ids)

    def redact(self, ctx: RequestContext, content: bytes) -> bytes:
        resource = jsonio.loads(content)
        changed = _hide_secrets(resource)
        return jsonio.dumps(resource) if changed else content

    def restore(self, previous: bytes | None, content: JSON) -> JSON:
        if previous is None:
            return content
        stored = jsonio.loads(previous)
        restored = dict(content)
        extensions = list(restored.get("extension") or [])
        if not any(e.get("url") == SECRET_EXTENSION for e in extensions):
            kept = [e for e in stored.get("extension") or [] if e.get("url") == SECRET_EXTENSION]
            if kept:
                restored["extension"] = [*extensions, *kept]
        channel = restored.get("channel")
        if isinstance(channel, dict) and isinstance(channel.get("header"), list):
            before = {_header_name(h): h for h in (stored.get("channel") or {}).get("header") or []}
            channel = dict(channel)
            channel["header"] = [
                before.get(_header_name(h), h) if _is_hidden(h) else h for h in channel["header"]
            ]
            restored["channel"] = channel
        return restored


def _header_name(header: object) -> str:
    return str(header).split(":", 1)[0].strip().lower()


def _is_hidden(header: object) -> bool:
    return isinstance(header, str) and header.split(":", 1)[-1].strip() == HIDDEN


def _hide_secrets(resource: JSON) -> bool:
    changed = False
    extensions = resource.get("extension")
    if isinstance(extensions, list) and any(e.get("url") == SECRET_EXTENSION for e in extensions):
        kept = [e for e in extensions if e.get("url") != SECRET_EXTENSION]
        if kept:
            resource["extension"] = kept
        else:
            del resource["extension"]
        changed = True
    channel = resource.get("channel")
    if isinstance(channel, dict) and isinstance(channel.get("header"), list):
        channel["header"] = [f"{str(h).split(':', 1)[0]}: {HIDDEN}" for h in channel["header"]]
        changed = True
    return changed


def _reactivated_for_owner(
    ctx: RequestContext, state: sub_store.DeliveryState | None, previous: JSON | None, current: JSON
) -> bool:
    """An administrator re-requesting another client's subscription, changing nothing about what it
    notifies: delivery keeps the owner's scopes (checked when the owner wrote it), so the editor's own
    read rights on the topic's types do not matter (an analyst may reactivate without reading results)."""
    return (
        state is not None
        and state.owner is not None
        and state.owner != ctx.client_id
        and ctx.may(ADMIN_SCOPE)
        and not _delivery_changed(previous, current)
    )


def _start_status(spec: SubscriptionSpec) -> str:
    if spec.status == "off":
        return "off"
    # Websocket subscriptions need no handshake over HTTP: they are active once created.
    return "requested" if spec.channel == "rest-hook" else "active"


def _delivery_changed(previous: JSON | None, current: JSON) -> bool:
    if previous is None:
        return True
    return (
        previous.get("channel") != current.get("channel")
        or previous.get("criteria") != current.get("criteria")
        or (
            [e for e in previous.get("extension", []) if e.get("url") == SECRET_EXTENSION]
            != [e for e in current.get("extension", []) if e.get("url") == SECRET_EXTENSION]
        )
    )
