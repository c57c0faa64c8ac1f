"""Following deletions upstream (`deletions: history`; the pure part is gateway/ehr/deletions.py).

Per pulled type, a poll of the checkpoint key `{Type}#deleted` (claimed, leased and finished like the pull's
own, by EhrPuller.poll) reads `GET {base}/{Type}/_history?_since={checkpoint}`, following `next` links
(under the base only, paced by the upstream's client). Each page is one transaction: the local copies of
the resources deleted there (local ids as the pull gives them) are deleted through the FHIR service, so
topics, alerts and forwarding see the deletion, with one Provenance naming the upstream. History comes
newest first, so the checkpoint moves to the newest entry's time only after the last page (each page
renews the lease); a crash in between reads the same entries again, and deleting what is already deleted
writes nothing.
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

from gateway.ehr import deletions
from gateway.ehr.pulled import local_id
from gateway.ehr.upstreams import UpstreamConfig
from gateway.fhir import dates
from gateway.service.ehrpull.client import UpstreamError
from gateway.service.ehrpull.poller import LEASE_US, EhrPuller, LeaseLost, PullCounts, newest, next_link
from gateway.service.ehrpull.poller import provenance as pull_provenance
from gateway.store import resources as store
from gateway.store import upstreams as checkpoints
from gateway.store.resources import PendingVersion
from gateway.types import JSON

log = logging.getLogger("gateway.ehrpull")

DELETE_ACTIVITY = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation", "code": "DELETE"}]
}


class DeletionReader:
    """Plugged into an EhrPuller (its `deletions`): reads one type's history since the checkpoint."""

    def __init__(self, puller: EhrPuller) -> None:
        self.puller = puller

    async def __call__(
        self, upstream: UpstreamConfig, key: str, since: str | None, counts: PullCounts
    ) -> None:
        res_type = deletions.deletion_type(key)
        assert res_type is not None
        client = self.puller.clients[upstream.name]
        start = since or deletions.first_since(datetime.now(UTC))
        url: str | None = f"{upstream.fhir_base}/{res_type}/_history"
        params: list[tuple[str, str]] | None = deletions.history_params(start, upstream.page_size)
        seen: set[str] = set()
        checkpoint: str | None = start
        while url is not None:
            bundle = await client.get(url, params)
            if bundle.get("resourceType") != "Bundle":
                raise UpstreamError("history answered without a Bundle")
            gone = deletions.deleted_ids(bundle, res_type, seen)
            counts.fetched += len(gone)
            times = [deletions.entry_time(e) for e in bundle.get("entry") or [] if isinstance(e, dict)]
            checkpoint = newest(checkpoint, [t for t in times if t])
            await self._delete_page(upstream, key, res_type, gone, counts)
            url, params = next_link(bundle), None
        async with self.puller.db.write() as conn:
            if not await checkpoints.advance(
                conn, upstream.name, key, self.puller.worker, checkpoint, dates.now_us() + LEASE_US
            ):
                raise LeaseLost("the checkpoint's lease went to another process")
        log.info("EHR pull upstream=%s type=%s deletions=%d", upstream.name, res_type, counts.written)

    async def _delete_page(
        self, upstream: UpstreamConfig, key: str, res_type: str, gone: list[str], counts: PullCounts
    ) -> None:
        fhir, ctx = self.puller.fhir, self.puller.ctx
        now = dates.now_us()
        async with self.puller.db.write() as conn:
            plans: list[PendingVersion] = []
            for remote_id in gone:
                mine = local_id(upstream.name, res_type, remote_id)
                current = await store.current(conn, res_type, mine)
                if current is None or current.deleted:
                    continue  # never pulled, or already deleted here
                plan = fhir.plan_delete(ctx, res_type, mine, current, None, now)
                if plan is not None:
                    plans.append(plan)
            if plans:
                source: JSON = {**pull_provenance(upstream, plans, now), "activity": DELETE_ACTIVITY}
                plans.append(fhir.plan_new(ctx, source, str(uuid.uuid4()), "POST", now))
                await fhir.write_versions(conn, ctx, plans)
                counts.written += len(plans) - 1
            # The checkpoint stays (history is newest first); the lease is renewed per page.
            if not await checkpoints.advance(
                conn, upstream.name, key, self.puller.worker, None, now + LEASE_US
            ):
                raise LeaseLost("the checkpoint's lease went to another process")


def following_deletions(puller: EhrPuller) -> EhrPuller:
    """The puller, polling the `{Type}#deleted` keys of upstreams with `deletions: history` too."""
    puller.deletions = DeletionReader(puller)
    return puller
