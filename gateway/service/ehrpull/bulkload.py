"""The first load of an upstream by Bulk Data `$export` (`first_load: bulk-export` in the upstreams file).

One step per round, under the lease of the upstream's `$export` pseudo-row (store/upstreams.py):

1. Kick-off, unless a status URL is kept from an earlier round (or process): `GET
   {base}/Group/{group}/$export` when `group` is set, `{base}/Patient/$export` when `patients` are, else
   `{base}/$export`, with `_type` = the configured types and `Prefer: respond-async`; the 202's
   Content-Location is stored before anything else.
2. Status: polled while the upstream says 202 (or 429/503), waiting its `Retry-After` when that fits in
   `MAX_STATUS_WAIT_S`; a longer wait ends the step and the round comes back then.
3. Files: each output of a configured type streamed line by line (at most `MAX_LINE_BYTES` a line), every
   `page_size` resources stored as one page of the incremental pull (validated, localized, Provenance,
   unchanged ones write nothing). With `patients`, only their compartments are kept (`Patient/$export`
   has every patient's).
4. Done: every type's checkpoint set to the manifest's `transactionTime` in one transaction, so the
   `_lastUpdated` searches continue from where the export's snapshot ends, nothing missed in between.

A refused kick-off, an error status, a manifest listing errors or a malformed file is `ExportFailed`: the
poller counts and logs it and the incremental pull starts from the beginning instead. A transport failure
keeps the status URL for the next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Protocol

from gateway.ehr.upstreams import UpstreamConfig
from gateway.fhir import jsonio
from gateway.fhir.bulkdata import (
    NDJSON,
    BulkDataError,
    LineTooLong,
    Manifest,
    NdjsonLines,
    OutputFile,
    parse_line,
    read_manifest,
)
from gateway.fhir.compartment import compartment_patients, in_compartment
from gateway.service.ehrpull.client import BackOff, UpstreamClient, UpstreamError, retry_after_seconds
from gateway.types import JSON

log = logging.getLogger("gateway.ehrpull")

MAX_STATUS_WAIT_S = 20.0  # waited within one step; a longer Retry-After ends the step until then
DEFAULT_STATUS_WAIT_S = 5.0  # a 202 without Retry-After
MAX_LINE_BYTES = 4 * 1024 * 1024

StorePage = Callable[[UpstreamConfig, str, list[JSON]], Awaitable[None]]
Sleep = Callable[[float], Awaitable[None]]


class Counts(Protocol):
    """The counters a load moves (the poller's PullCounts)."""

    fetched: int
    rejected: int


class ExportFailed(Exception):
    """The export cannot give a first load; `str()` names the status or reason, never content."""


def kick_off_path(upstream: UpstreamConfig) -> str:
    if upstream.group is not None:
        return f"Group/{upstream.group}/$export"
    return "Patient/$export" if upstream.patients else "$export"


def wanted(upstream: UpstreamConfig, resource: JSON) -> bool:
    """With `patients`, only what is in their compartments (and what is outside every compartment)."""
    if not upstream.patients or not in_compartment(str(resource.get("resourceType"))):
        return True
    return bool(compartment_patients(resource, (upstream.fhir_base,)) & set(upstream.patients))


class FirstLoad:
    def __init__(
        self, clients: dict[str, UpstreamClient], store_page: StorePage, sleep: Sleep = asyncio.sleep
    ):
        self.clients = clients
        self.store_page = store_page
        self.sleep = sleep

    async def kick_off(self, upstream: UpstreamConfig) -> str:
        client = self.clients[upstream.name]
        response = await client.send(
            f"{upstream.fhir_base}/{kick_off_path(upstream)}",
            [("_type", ",".join(upstream.resources)), ("_outputFormat", NDJSON)],
            headers={"Prefer": "respond-async"},
        )
        if response.status_code in (429, 503):
            wait = retry_after_seconds(response.headers.get("retry-after")) or upstream.interval_seconds
            raise BackOff(f"kick-off HTTP {response.status_code}", wait)
        if response.status_code != 202:
            raise ExportFailed(f"kick-off answered HTTP {response.status_code}")
        location = response.headers.get("content-location")
        if not location or not client.owns(location):
            raise ExportFailed("kick-off gave no status URL under the upstream's base")
        return str(location)

    async def wait_for_manifest(self, upstream: UpstreamConfig, status_url: str) -> Manifest | float:
        """The manifest, or the seconds to wait before asking again (a later round)."""
        client = self.clients[upstream.name]
        deadline = time.monotonic() + MAX_STATUS_WAIT_S
        while True:
            response = await client.send(status_url)
            if response.status_code == 200:
                try:
                    return read_manifest(jsonio.loads(response.content))
                except (jsonio.JSONDecodeError, BulkDataError) as exc:
                    raise ExportFailed(f"the manifest is not usable: {exc}") from None
            if response.status_code not in (202, 429, 503):
                raise ExportFailed(f"status answered HTTP {response.status_code}")
            wait = retry_after_seconds(response.headers.get("retry-after"))
            wait = DEFAULT_STATUS_WAIT_S if wait is None else wait
            log.info(
                "EHR export upstream=%s in progress: %s",
                upstream.name,
                (response.headers.get("x-progress") or "")[:100],
            )
            if time.monotonic() + wait > deadline:
                return wait
            await self.sleep(wait)

    async def load_file(
        self, upstream: UpstreamConfig, output: OutputFile, *, with_token: bool, counts: Counts
    ) -> None:
        client = self.clients[upstream.name]
        lines = NdjsonLines(MAX_LINE_BYTES)
        batch: list[JSON] = []
        number = 0

        async def take(line: bytes) -> None:
            nonlocal number
            number += 1
            try:
                resource = parse_line(line, output.type)
            except LineTooLong:
                raise
            except BulkDataError as exc:
                counts.rejected += 1
                log.warning(
                    "EHR export upstream=%s %s file line %d skipped: %s",
                    upstream.name,
                    output.type,
                    number,
                    exc,
                )
                return
            counts.fetched += 1
            if wanted(upstream, resource):
                batch.append(resource)
            if len(batch) >= upstream.page_size:
                await self.store_page(upstream, output.type, batch)
                batch.clear()

        async with client.stream(output.url, with_token=with_token) as response:
            if response.status_code in (429, 503) or response.status_code >= 500:
                raise UpstreamError(f"file answered HTTP {response.status_code}")  # retried next round
            if response.status_code != 200:
                raise ExportFailed(f"file answered HTTP {response.status_code}")
            try:
                async for chunk in response.aiter_bytes():
                    for line in lines.feed(chunk):
                        await take(line)
                for line in lines.close():
                    await take(line)
            except LineTooLong as exc:
                raise ExportFailed(str(exc)) from None
        if batch:
            await self.store_page(upstream, output.type, batch)

    async def load(self, upstream: UpstreamConfig, manifest: Manifest, counts: Counts) -> None:
        if manifest.errors:
            raise ExportFailed(f"the manifest lists {manifest.errors} error file(s)")
        for output in manifest.outputs:
            if output.type not in upstream.resources:
                log.info(
                    "EHR export upstream=%s: a %s file was not asked for; skipped", upstream.name, output.type
                )
                continue
            await self.load_file(upstream, output, with_token=manifest.requires_access_token, counts=counts)

    async def cancel(self, upstream: UpstreamConfig, status_url: str) -> None:
        """Tell the upstream its files may go (best effort: they expire anyway)."""
        with contextlib.suppress(UpstreamError):
            await self.clients[upstream.name].send(status_url, method="DELETE")
