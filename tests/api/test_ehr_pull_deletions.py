"""Deletions upstream followed through its history (`deletions: history`), on both backends: the gateway
itself is the upstream (in process), so this also checks that it serves type-level `_history?_since=` with
deletions as DELETE entries. The local copy is deleted through the FHIR service with a Provenance, once."""

from __future__ import annotations

import asyncio
import uuid

import httpx

from gateway.ehr import deletions
from gateway.ehr.pulled import local_id
from gateway.ehr.upstreams import UpstreamConfig
from gateway.service.ehrpull.deletions import following_deletions
from gateway.service.ehrpull.poller import EhrPuller
from gateway.service.gateway import Gateway
from gateway.store import resources as store
from gateway.store import search as store_search
from gateway.store import upstreams as checkpoints


async def test_a_resource_deleted_upstream_is_deleted_here(gateway: Gateway, api: httpx.AsyncClient) -> None:
    name = f"up-{uuid.uuid4().hex[:8]}"  # checkpoint rows outlive tests: a name of its own
    patient = {"resourceType": "Patient", "id": "pd1", "name": [{"family": "Doe"}]}
    assert (await api.put("/fhir/Patient/pd1", json=patient)).status_code == 201
    for oid in ("od1", "od2"):
        observation = {
            "resourceType": "Observation",
            "id": oid,
            "status": "final",
            "code": {"text": "ANC"},
            "subject": {"reference": "Patient/pd1"},
        }
        assert (await api.put(f"/fhir/Observation/{oid}", json=observation)).status_code == 201
    upstream = UpstreamConfig.model_validate(
        {
            "name": name,
            "base_url": "http://gateway.test/fhir",  # `api`'s own base: the app in process, with its token
            "resources": ["Observation"],
            "patients": ["pd1"],  # the copies (subject: the upstream's Patient by URL) are not pulled again
            "deletions": "history",
            "interval_seconds": 0.01,
        }
    )
    puller = following_deletions(EhrPuller(gateway.fhir, [upstream], http=api))
    async with gateway.db.write() as conn:
        await checkpoints.ensure(conn, name, deletions.poll_keys(upstream))
    key = deletions.checkpoint_key("Observation")

    assert await puller.poll(upstream, "Observation")
    assert await puller.poll(upstream, key)  # nothing deleted yet
    copies = {oid: local_id(name, "Observation", oid) for oid in ("od1", "od2")}

    async def current(oid: str) -> store.Stored | None:
        async with gateway.db.read() as conn:
            return await store.current(conn, "Observation", copies[oid])

    assert all([await current("od1"), await current("od2")])
    assert (await api.delete("/fhir/Observation/od1")).status_code == 204
    history = (await api.get("/fhir/Observation/_history", params={"_since": "2000-01-01T00:00:00Z"})).json()
    assert {"method": "DELETE", "url": "Observation/od1"} in [e["request"] for e in history["entry"]]

    await asyncio.sleep(0.02)
    assert await puller.poll(upstream, key)
    gone, kept = await current("od1"), await current("od2")
    assert gone is not None and gone.deleted and gone.version == 2
    assert kept is not None and not kept.deleted
    counts = puller.counts[(name, key)]
    assert (counts.written, counts.failures) == (1, 0)
    async with gateway.db.read() as conn:
        provenances = [p.content for p in await store_search.all_current(conn, "Provenance")]
        rows = {c.res_type: c for c in await checkpoints.all_checkpoints(conn) if c.upstream == name}
    target = f"Observation/{copies['od1']}/_history/2"
    assert any(target in str(p) and "DELETE" in str(p) for p in provenances)
    assert rows[key].last_updated is not None

    await asyncio.sleep(0.02)
    assert await puller.poll(upstream, key)  # read again: already deleted here, nothing written
    assert puller.counts[(name, key)].written == 1
    gone = await current("od1")
    assert gone is not None and gone.version == 2
