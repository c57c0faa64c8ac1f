"""Bulk Data `$export` served by the gateway, on both backends: kick-off, status, files in bounded parts,
cancel, who may see what, `_since`, Patient and Group level (gateway/service/bulkexport/exports.py)."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest_asyncio

from gateway.auth.tokens import issue_user_access_token
from gateway.fhir import dates
from gateway.service.access import users as user_service
from gateway.service.access.clients import ISSUER
from gateway.service.gateway import Gateway
from gateway.transports.http.app import create_app
from tests import factories as f
from tests.conftest import TEST_PASSWORD_HASH_COST, ClientFactory

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


async def _make(api: httpx.AsyncClient, resource: dict[str, Any]) -> str:
    answer = await api.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def _kick_off(client: httpx.AsyncClient, path: str, **params: str) -> str:
    answer = await client.get(path, params=params, headers=ASYNC)
    assert answer.status_code == 202, answer.text
    return answer.headers["content-location"]


async def _finished(gateway: Gateway, client: httpx.AsyncClient, status_url: str) -> dict[str, Any]:
    await gateway.exports.run_once()
    answer = await client.get(status_url)
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


async def _lines(client: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    answer = await client.get(url, headers={"Accept": "application/fhir+ndjson"})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("application/fhir+ndjson")
    return [orjson.loads(line) for line in answer.content.splitlines()]


async def _exported(client: httpx.AsyncClient, manifest: dict[str, Any]) -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for output in manifest["output"]:
        for resource in await _lines(client, output["url"]):
            assert resource["resourceType"] == output["type"]
            found.setdefault(output["type"], set()).add(resource["id"])
    return found


@pytest_asyncio.fixture
async def small_files(gateway: Gateway) -> AsyncIterator[Gateway]:
    previous = gateway.exports.file_resources
    gateway.exports.file_resources = 2
    yield gateway
    gateway.exports.file_resources = previous


async def test_kick_off_status_files_in_parts_and_cancel(
    small_files: Gateway, api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    gateway = small_files
    patients = [await _make(api, f.patient()) for _ in range(2)]
    observations = [await _make(api, f.lab_observation(patients[i % 2])) for i in range(3)]
    # the specification's refusals: no Prefer, a format other than ndjson, an unknown parameter
    assert (await api.get("/fhir/$export", headers={"Accept": "application/fhir+json"})).status_code == 400
    for params in ({"_outputFormat": "text/csv"}, {"_typeFilter": "Observation?code=1"}, {"_type": "Nope"}):
        answer = await api.get("/fhir/$export", params=params, headers=ASYNC)
        assert answer.status_code == 400 and answer.json()["resourceType"] == "OperationOutcome", params
    before = dates.now_us()
    status_url = await _kick_off(
        api, "/fhir/$export", _type="Patient,Observation", _outputFormat="application/fhir+ndjson"
    )
    assert status_url.startswith("http://gateway.test/fhir/$export-jobs/")
    running = await api.get(status_url)
    assert running.status_code == 202 and "X-Progress" in running.headers and running.headers["Retry-After"]
    manifest = await _finished(gateway, api, status_url)
    assert manifest["requiresAccessToken"] is True and manifest["error"] == []
    assert manifest["request"].endswith(
        "/fhir/$export?_type=Patient%2CObservation&_outputFormat=application%2Ffhir%2Bndjson"
    )
    assert before <= dates.date_range(manifest["transactionTime"])[0] <= dates.now_us()
    # at most two resources a file: Patient 2, Observation 2 + 1, in `_type` order
    assert [(o["type"], o["count"]) for o in manifest["output"]] == [
        ("Patient", 2),
        ("Observation", 2),
        ("Observation", 1),
    ]
    assert await _exported(api, manifest) == {"Patient": set(patients), "Observation": set(observations)}
    # another client sees neither the status nor the files
    other = await client_factory("system/*.rs")
    assert (await other.get(status_url)).status_code == 404
    assert (await other.get(manifest["output"][0]["url"])).status_code == 404
    assert (await other.delete(status_url)).status_code == 404
    # cancelling deletes the job and its files
    assert (await api.delete(status_url)).status_code == 202
    assert (await api.get(status_url)).status_code == 404
    assert (await api.get(manifest["output"][0]["url"])).status_code == 404


async def test_cancel_while_queued_and_expiry(gateway: Gateway, api: httpx.AsyncClient) -> None:
    await _make(api, f.patient())
    queued = await _kick_off(api, "/fhir/$export", _type="Patient")
    assert (await api.delete(queued)).status_code == 202
    assert (await api.get(queued)).status_code == 404
    done = await _kick_off(api, "/fhir/$export", _type="Patient")
    manifest = await _finished(gateway, api, done)
    previous = gateway.exports.retention_us
    gateway.exports.retention_us = -1  # already past
    try:
        later = await _kick_off(api, "/fhir/$export", _type="Patient")
        await gateway.exports.run_once()  # builds `later` (expiring at once); the next round removes both
        await gateway.exports.run_once()
    finally:
        gateway.exports.retention_us = previous
    assert (await api.get(later)).status_code == 404
    assert (await api.get(manifest["output"][0]["url"])).status_code == 200  # built with 24 h to live


async def test_the_export_holds_only_what_the_token_reads(
    gateway: Gateway, api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    patient = await _make(api, f.patient())
    observation = await _make(api, f.lab_observation(patient))
    observations_only = await client_factory("system/Observation.rs")
    # a type it may not read: 403 whether or not there are any (there are Patients; there are no Claims)
    for asked in ("Patient", "Claim", "Observation,Patient"):
        answer = await observations_only.get("/fhir/$export", params={"_type": asked}, headers=ASYNC)
        assert answer.status_code == 403, (asked, answer.text)
    # without _type: the types it reads, nothing else
    status_url = await _kick_off(observations_only, "/fhir/$export")
    manifest = await _finished(gateway, observations_only, status_url)
    assert await _exported(observations_only, manifest) == {"Observation": {observation}}
    # Subscriptions (rules beyond scopes) are never exported
    assert (
        await api.get("/fhir/$export", params={"_type": "Subscription"}, headers=ASYNC)
    ).status_code == 403
    nothing = await client_factory("system/Subscription.rs")
    assert (await nothing.get("/fhir/$export", headers=ASYNC)).status_code == 403


async def test_a_persons_token_is_refused(gateway: Gateway, api: httpx.AsyncClient) -> None:
    name = f"user-{uuid.uuid4().hex[:8]}"
    user = await user_service.add_user(
        gateway.db, name, "admin", None, "clozapine-anc-1500", cost=TEST_PASSWORD_HASH_COST
    )
    kid, key = await gateway.auth.signing_key()
    token = issue_user_access_token(
        key=key, kid=kid, issuer=ISSUER, client_id="some-app", user_id=user.id, scope="user/*.rs",
        fhir_user=None, ttl_seconds=300, now=int(time.time()),
    )  # fmt: skip
    status_url = await _kick_off(api, "/fhir/$export", _type="Patient")
    app = create_app(gateway.settings, gateway)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway.test"
    ) as user_client:
        user_client.headers["Authorization"] = f"Bearer {token}"
        for path in ("/fhir/$export", "/fhir/Patient/$export", status_url):
            assert (await user_client.get(path, headers=ASYNC)).status_code == 403, path


async def test_since_patient_and_group_level(
    gateway: Gateway, api: httpx.AsyncClient, client_factory: ClientFactory
) -> None:
    a, b, c, d = [await _make(api, f.patient()) for _ in range(4)]
    obs = {p: await _make(api, f.lab_observation(p)) for p in (a, b, c, d)}
    organization = await _make(api, {"resourceType": "Organization", "name": "Riverside"})
    group = await _make(
        api,
        {
            "resourceType": "Group",
            "type": "person",
            "actual": True,
            "member": [
                {"entity": {"reference": f"Patient/{a}"}},
                {"entity": {"reference": f"Patient/{b}"}, "inactive": True},
                {"entity": {"reference": f"Patient/{c}"}, "period": {"end": "2020-01-01T00:00:00Z"}},
                {"entity": {"reference": f"Patient/{d}"}, "period": {"start": "2020-01-01"}},
            ],
        },
    )
    # Patient level: the compartment types only (no Organization, no Group), every Patient's
    status_url = await _kick_off(api, "/fhir/Patient/$export")
    found = await _exported(api, await _finished(gateway, api, status_url))
    assert found["Patient"] == {a, b, c, d} and found["Observation"] == set(obs.values())
    assert "Organization" not in found and "Group" not in found
    refused = await api.get("/fhir/Patient/$export", params={"_type": "Organization"}, headers=ASYNC)
    assert refused.status_code == 400
    # the system level has them
    status_url = await _kick_off(api, "/fhir/$export", _type="Organization,Group")
    found = await _exported(api, await _finished(gateway, api, status_url))
    assert found == {"Organization": {organization}, "Group": {group}}
    # Group level: current members only (b is inactive, c's membership ended)
    status_url = await _kick_off(api, f"/fhir/Group/{group}/$export", _type="Patient,Observation")
    found = await _exported(api, await _finished(gateway, api, status_url))
    assert found == {"Patient": {a, d}, "Observation": {obs[a], obs[d]}}
    assert (await api.get("/fhir/Group/nope/$export", headers=ASYNC)).status_code == 404
    reader = await client_factory("system/Patient.rs system/Observation.rs")
    assert (await reader.get(f"/fhir/Group/{group}/$export", headers=ASYNC)).status_code == 403
    # _since: what changed after the instant
    await asyncio.sleep(0.01)
    since = dates.format_instant(dates.now_us())
    await asyncio.sleep(0.01)
    changed = await api.get(f"/fhir/Observation/{obs[a]}")
    body = changed.json()
    body["status"] = "amended"
    assert (await api.put(f"/fhir/Observation/{obs[a]}", json=body)).status_code == 200
    status_url = await _kick_off(api, "/fhir/$export", _type="Observation,Patient", _since=since)
    manifest = await _finished(gateway, api, status_url)
    assert await _exported(api, manifest) == {"Observation": {obs[a]}}
