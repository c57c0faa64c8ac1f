"""The incremental pull: per upstream and resource type, what changed since the checkpoint.

A round, per (upstream, type) that is due: claim its checkpoint row (store/upstreams.py: a lease, so one
process polls it at a time on a shared PostgreSQL), then
`GET {base}/{Type}?_lastUpdated=gt{checkpoint}&_sort=_lastUpdated&_count={page_size}` (+ `patient=` or, for
Patient, `_id=` when patients are configured), following `next` links. Each page is one transaction: its
resources validated, localized (gateway/ehr/pulled.py) and written through the FHIR service (so topics
match and an unchanged resource writes no version), one Provenance naming the upstream for what changed,
and the checkpoint moved to the page's greatest `meta.lastUpdated`. A crash between pages loses nothing:
the next poll starts after the last committed page.

An invalid resource is counted, logged by id and skipped (the checkpoint still moves past it, or it
would be fetched forever); its next change upstream is fetched again.

`group:` upstreams read their Group from the upstream once a round and pull its current members like
`patients:`. `first_load: bulk-export` upstreams run the first load by `$export` (bulkload.py) while no
type has a checkpoint yet; their incremental polls wait until it is done, or has failed (then they start
from the beginning).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncConnection

from gateway.ehr import deletions
from gateway.ehr.pulled import local_id, localize
from gateway.ehr.upstreams import UpstreamConfig
from gateway.exceptions import FhirError
from gateway.fhir import dates
from gateway.fhir.bulkdata import Manifest, group_members
from gateway.service.access.context import RequestContext
from gateway.service.ehrpull.bulkload import ExportFailed, FirstLoad
from gateway.service.ehrpull.client import BackOff, UpstreamClient, UpstreamError
from gateway.service.fhirapi.interactions import FhirService
from gateway.service.workers import Repeating
from gateway.store import resources as store
from gateway.store import upstreams as checkpoints
from gateway.store.resources import PendingVersion
from gateway.types import JSON

log = logging.getLogger("gateway.ehrpull")

# A poll renews its lease with every page; a holder silent this long is taken to have died.
LEASE_US = 120_000_000
MAX_BACKOFF_S = 3600.0  # failures in a row double the wait up to an hour


class LeaseLost(Exception):
    """Another process took the checkpoint (ours ran out): this poll stops, its last page rolled back."""


@dataclass
class PullCounts:
    polls: int = 0
    fetched: int = 0  # resources received
    written: int = 0  # new versions stored (unchanged ones write none)
    rejected: int = 0  # failed validation
    failures: int = 0  # polls that ended in an error
    exports: int = 0  # first loads by $export completed
    export_failures: int = 0  # first loads by $export given up (the incremental pull took over)


def _instant(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def newest(current: str | None, candidates: list[str]) -> str | None:
    """The latest of the instants (compared as times, kept as the upstream wrote it)."""
    best = current
    for text in candidates:
        try:
            if best is None or _instant(text) > _instant(best):
                best = text
        except ValueError:
            continue
    return best


def first_page(
    upstream: UpstreamConfig, res_type: str, since: str | None, patients: list[str] | None = None
) -> list[tuple[str, str]]:
    """The first search of a poll; `patients` (a Group's members) in place of the configured ones."""
    params = [("_sort", "_lastUpdated"), ("_count", str(upstream.page_size))]
    if since is not None:
        params.insert(0, ("_lastUpdated", f"gt{since}"))
    chosen = upstream.patients if patients is None else patients
    if chosen:
        params.append(("_id" if res_type == "Patient" else "patient", ",".join(chosen)))
    return params


def next_link(bundle: JSON) -> str | None:
    for link in bundle.get("link") or []:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return str(link["url"])
    return None


def matches(bundle: JSON, res_type: str) -> list[JSON]:
    """The search's own matches (not `_include`d resources or OperationOutcomes), the last of each id."""
    found: dict[str, JSON] = {}
    for entry in bundle.get("entry") or []:
        resource = entry.get("resource") if isinstance(entry, dict) else None
        mode = (entry.get("search") or {}).get("mode", "match") if isinstance(entry, dict) else None
        if (
            isinstance(resource, dict)
            and resource.get("resourceType") == res_type
            and mode == "match"
            and isinstance(resource.get("id"), str)
        ):
            found[resource["id"]] = resource
    return list(found.values())


def provenance(upstream: UpstreamConfig, written: list[PendingVersion], now: int) -> JSON:
    """Where these versions came from: the upstream, as author and source."""
    return {
        "resourceType": "Provenance",
        "target": [{"reference": f"{v.type}/{v.id}/_history/{v.version}"} for v in written],
        "recorded": dates.format_instant(now),
        "agent": [
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                            "code": "author",
                        }
                    ]
                },
                "who": {"display": f"EHR {upstream.name}"},
            }
        ],
        "entity": [{"role": "source", "what": {"display": f"EHR FHIR pull from {upstream.fhir_base}"}}],
    }


class EhrPuller:
    def __init__(
        self, fhir: FhirService, upstreams: list[UpstreamConfig], http: httpx.AsyncClient | None = None
    ):
        self.fhir = fhir
        self.db = fhir.db
        self.upstreams = [u for u in upstreams if u.resources]  # forward-only upstreams are not polled
        upstreams = self.upstreams
        self._http = http or httpx.AsyncClient(follow_redirects=False)
        self.clients = {u.name: UpstreamClient(u, self._http) for u in upstreams}
        self.loader = FirstLoad(self.clients, self._store_export_page)
        self.worker = f"{socket.gethostname()[:30]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.ctx = RequestContext(base_url=fhir.configured_base or "")
        self.counts: dict[tuple[str, str], PullCounts] = defaultdict(PullCounts)
        self.checkpoints: list[checkpoints.Checkpoint] = []  # as of the last round, for /metrics
        # x10 while the upstream's notifications arrive (subscriber.py): polling is then only a safety net.
        self.interval_factor: Callable[[str], float] = lambda _upstream: 1.0
        tick = min([u.interval_seconds for u in upstreams] or [5.0])
        self.timer = Repeating("ehr-pull", "EHR pull round", self.run_once, min(tick, 5.0), log, jitter=0.3)
        # Polls of the `{Type}#deleted` keys (`deletions: history`): service/ehrpull/deletions.py.
        self.deletions: Callable[[UpstreamConfig, str, str | None, PullCounts], Awaitable[None]] | None = None

    async def start(self) -> None:
        if not self.upstreams:
            return
        await self.prepare()
        self.timer.start()

    async def prepare(self) -> None:
        """A checkpoint row per configured type (and the first load's pseudo-row), kept across restarts."""
        async with self.db.write() as conn:
            for upstream in self.upstreams:
                await checkpoints.ensure(conn, upstream.name, deletions.poll_keys(upstream))
                if upstream.first_load == "bulk-export":
                    await checkpoints.ensure(conn, upstream.name, [checkpoints.EXPORT_ROW])

    async def stop(self) -> None:
        await self.timer.stop()
        await self._http.aclose()

    async def run_once(self) -> None:
        """Every due (upstream, type), upstreams side by side, each one's types in turn."""
        await asyncio.gather(*(self._upstream_round(u) for u in self.upstreams))
        async with self.db.read() as conn:
            self.checkpoints = await checkpoints.all_checkpoints(conn)

    async def _upstream_round(self, upstream: UpstreamConfig) -> None:
        try:
            if upstream.first_load == "bulk-export" and await self.first_load(upstream):
                return  # the first load is not over: the searches would start from the beginning
            patients = await self.group_members(upstream) if upstream.group is not None else None
        except Exception:
            log.exception("EHR pull upstream=%s failed", upstream.name)
            return
        if patients == []:
            log.info("EHR pull upstream=%s: the Group has no current members", upstream.name)
            return
        for res_type in deletions.poll_keys(upstream):
            try:
                await self.poll(upstream, res_type, patients)
            except Exception:
                log.exception("EHR pull upstream=%s type=%s failed", upstream.name, res_type)

    async def group_members(self, upstream: UpstreamConfig) -> list[str] | None:
        """The Group's current member Patients on the upstream (their ids there); None when it could not be
        read (counted as a failure of the round)."""
        try:
            group = await self.clients[upstream.name].get(f"{upstream.fhir_base}/Group/{upstream.group}")
        except UpstreamError as exc:
            self.counts[(upstream.name, "Group")].failures += 1
            log.warning(
                "EHR pull upstream=%s: reading Group/%s failed: %s", upstream.name, upstream.group, exc
            )
            raise
        if group.get("resourceType") != "Group":
            raise UpstreamError("the Group read gave no Group")
        return group_members(group, datetime.now(UTC), upstream.fhir_base)

    async def first_load(self, upstream: UpstreamConfig) -> bool:
        """One step of the first load by $export when it is still to do; whether it is (so the incremental
        polls wait). Another process holding it counts as still to do."""
        async with self.db.read() as conn:
            state = await checkpoints.first_load(conn, upstream.name, upstream.resources)
        if state.state is not None or state.types_started:
            return False
        now = dates.now_us()
        row = checkpoints.EXPORT_ROW
        async with self.db.write() as conn:
            claimed = await checkpoints.claim(conn, upstream.name, row, self.worker, now, LEASE_US)
            # read again under the lease: another process may have kicked off (or finished) meanwhile
            state = await checkpoints.first_load(conn, upstream.name, upstream.resources)
        if claimed is None:
            return True
        counts = self.counts[(upstream.name, row)]
        counts.polls += 1
        error: str | None = None
        next_poll = now + int(upstream.interval_seconds * 1_000_000)
        pending = True
        try:
            if state.state is None and not state.types_started:
                wait = await self._export_step(upstream, state.export_url, counts)
                if wait is None:
                    pending = False
                else:
                    next_poll = dates.now_us() + int(wait * 1_000_000)
            else:
                pending = False
        except ExportFailed as exc:
            counts.export_failures += 1
            log.warning("EHR export upstream=%s failed, pulling by search instead: %s", upstream.name, exc)
            async with self.db.write() as conn:
                await checkpoints.set_export(
                    conn, upstream.name, self.worker, url=None, state=checkpoints.EXPORT_FAILED, until_us=0
                )
            if state.export_url is not None:
                await self.loader.cancel(upstream, state.export_url)
            error, pending = str(exc), False
        except BackOff as exc:
            error, next_poll = str(exc), now + int(max(exc.retry_after_s, upstream.interval_seconds) * 1e6)
        except (UpstreamError, LeaseLost) as exc:
            error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:
            log.exception("EHR export upstream=%s failed", upstream.name)
            error = type(exc).__name__
        if error is not None and pending:
            counts.failures += 1
            delay_s = min(MAX_BACKOFF_S, upstream.interval_seconds * 2 ** min(claimed.failures + 1, 20))
            next_poll = max(next_poll, now + int(delay_s * 1_000_000))
            log.warning("EHR export upstream=%s: %s", upstream.name, error)
        async with self.db.write() as conn:
            await checkpoints.finish(
                conn, upstream.name, row, self.worker, now=dates.now_us(), next_poll_us=next_poll, error=error
            )
        return pending

    async def _export_step(
        self, upstream: UpstreamConfig, status_url: str | None, counts: PullCounts
    ) -> float | None:
        """Kick-off (once), status, files, checkpoints; the seconds to wait when the export is not ready."""
        if status_url is None:
            status_url = await self.loader.kick_off(upstream)
            async with self.db.write() as conn:
                if not await checkpoints.set_export(
                    conn,
                    upstream.name,
                    self.worker,
                    url=status_url,
                    state=None,
                    until_us=dates.now_us() + LEASE_US,
                ):
                    raise LeaseLost("the first load's lease went to another process")
            log.info("EHR export upstream=%s kicked off", upstream.name)
        manifest = await self.loader.wait_for_manifest(upstream, status_url)
        if not isinstance(manifest, Manifest):
            return manifest
        await self.loader.load(upstream, manifest, counts)
        async with self.db.write() as conn:
            if not await checkpoints.complete_first_load(
                conn,
                upstream.name,
                self.worker,
                upstream.resources,
                manifest.transaction_time,
                dates.now_us() + LEASE_US,
            ):
                raise LeaseLost("the first load's lease went to another process")
        counts.exports += 1
        log.info(
            "EHR export upstream=%s done: fetched=%d written=%d",
            upstream.name,
            counts.fetched,
            counts.written,
        )
        await self.loader.cancel(upstream, status_url)  # the upstream may delete its files now
        return None

    async def _store_export_page(self, upstream: UpstreamConfig, res_type: str, found: list[JSON]) -> None:
        await self._store_page(
            upstream, res_type, found, None, self.counts[(upstream.name, checkpoints.EXPORT_ROW)],
            lease_row=checkpoints.EXPORT_ROW,
        )  # fmt: skip

    async def poll(self, upstream: UpstreamConfig, res_type: str, patients: list[str] | None = None) -> bool:
        """One poll of (upstream, type) if it is due and no one else holds it; whether it ran."""
        now = dates.now_us()
        async with self.db.write() as conn:
            claimed = await checkpoints.claim(conn, upstream.name, res_type, self.worker, now, LEASE_US)
        if claimed is None:
            return False
        counts = self.counts[(upstream.name, res_type)]
        counts.polls += 1
        interval_us = int(upstream.interval_seconds * self.interval_factor(upstream.name) * 1_000_000)
        error: str | None = None
        next_poll = now + interval_us
        try:
            if deletions.deletion_type(res_type) is None:
                await self._pull(upstream, res_type, claimed.last_updated, counts, patients)
            elif self.deletions is not None:
                await self.deletions(upstream, res_type, claimed.last_updated, counts)
        except BackOff as exc:
            error, next_poll = str(exc), now + int(max(exc.retry_after_s, upstream.interval_seconds) * 1e6)
        except (UpstreamError, LeaseLost) as exc:
            error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a bug or the database: logged with its traceback, retried later
            log.exception("EHR pull upstream=%s type=%s failed", upstream.name, res_type)
            error = type(exc).__name__
        if error is not None:
            counts.failures += 1
            delay_s = min(MAX_BACKOFF_S, upstream.interval_seconds * 2 ** min(claimed.failures + 1, 20))
            next_poll = max(next_poll, now + int(delay_s * 1_000_000))
            log.warning("EHR pull upstream=%s type=%s: %s", upstream.name, res_type, error)
        async with self.db.write() as conn:
            await checkpoints.finish(
                conn,
                upstream.name,
                res_type,
                self.worker,
                now=dates.now_us(),
                next_poll_us=next_poll,
                error=error,
            )
        return True

    async def _pull(
        self,
        upstream: UpstreamConfig,
        res_type: str,
        since: str | None,
        counts: PullCounts,
        patients: list[str] | None = None,
    ) -> None:
        client = self.clients[upstream.name]
        url: str | None = f"{upstream.fhir_base}/{res_type}"
        params: list[tuple[str, str]] | None = first_page(upstream, res_type, since, patients)
        checkpoint = since
        while url is not None:
            bundle = await client.get(url, params)
            found = matches(bundle, res_type)
            counts.fetched += len(found)
            checkpoint = newest(
                checkpoint, [str((r.get("meta") or {}).get("lastUpdated") or "") for r in found]
            )
            await self._store_page(upstream, res_type, found, checkpoint, counts)
            url, params = next_link(bundle), None
        log.info("EHR pull upstream=%s type=%s fetched=%d", upstream.name, res_type, counts.fetched)

    async def _store_page(
        self,
        upstream: UpstreamConfig,
        res_type: str,
        found: list[JSON],
        checkpoint: str | None,
        counts: PullCounts,
        *,
        lease_row: str | None = None,
    ) -> None:
        """One page in one transaction; the lease renewed is `res_type`'s checkpoint's, or `lease_row`'s."""
        localized = self.localized(upstream, found, counts, "pull")
        now = dates.now_us()
        async with self.db.write() as conn:
            counts.written += await self.write_pulled(conn, upstream, localized, now)
            if not await checkpoints.advance(
                conn, upstream.name, lease_row or res_type, self.worker, checkpoint, now + LEASE_US
            ):
                raise LeaseLost("the checkpoint's lease went to another process")

    def localized(self, upstream: UpstreamConfig, found: list[JSON], counts: Any, how: str) -> list[JSON]:
        """The upstream's resources as stored here (gateway/ehr/pulled.py), those that validate; the others
        are counted in `counts.rejected` and logged by id (`how`: pull or subscription)."""
        pulled = frozenset(upstream.resources)
        localized: list[JSON] = []
        for resource in found:
            mine = localize(resource, upstream=upstream.name, base=upstream.fhir_base, pulled=pulled)
            try:
                self.fhir.validate(mine)
            except FhirError:
                counts.rejected += 1
                log.warning(
                    "EHR %s upstream=%s skipped invalid %s/%s",
                    how,
                    upstream.name,
                    mine["resourceType"],
                    mine["id"],
                )
                continue
            localized.append(mine)
        return localized

    async def write_pulled(
        self, conn: AsyncConnection, upstream: UpstreamConfig, localized: list[JSON], now: int
    ) -> int:
        """Store localized resources through the FHIR service (topics match; an unchanged one writes no
        version), with one Provenance naming the upstream for those that changed; how many changed."""
        plans: list[PendingVersion] = []
        for resource in localized:
            current = await store.current(conn, resource["resourceType"], resource["id"])
            plan = self.fhir.plan_update(self.ctx, resource, resource["id"], current, None, now)
            if isinstance(plan, PendingVersion):
                plans.append(plan)
        if not plans:
            return 0
        source = provenance(upstream, plans, now)
        plans.append(self.fhir.plan_new(self.ctx, source, str(uuid.uuid4()), "POST", now))
        await self.fhir.write_versions(conn, self.ctx, plans)
        return len(plans) - 1


__all__ = ["EhrPuller", "PullCounts", "local_id"]
