"""EHR FHIR pull between two real `gateway serve` processes on 127.0.0.1: one is the upstream EHR (a client
registered with a JWKS, SMART Backend Services), the others pull from it with a signed assertion."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.ehr.pulled import local_id
from tests import factories as f
from tests.integration.conftest import GATEWAY_BIN, LiveServer, free_port, start_server

pytestmark = pytest.mark.asyncio(loop_scope="session")

INTERVAL_S = 0.3
UPSTREAM = "ehr"


def stop(server: LiveServer) -> None:
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()


def register_jwks_client(
    upstream: LiveServer, tmp: Path, scope: str = "system/Patient.rs system/Observation.rs"
) -> tuple[str, Path]:
    """A client on the upstream with an RS384 JWKS, as an EHR's administrator registers the gateway."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = tmp / "gateway-key.pem"
    pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
    jwks = tmp / "gateway-jwks.json"
    jwks.write_text(json.dumps({"keys": [{**jwk, "kid": "k1", "alg": "RS384", "use": "sig"}]}))
    done = subprocess.run(
        [GATEWAY_BIN, "clients", "add", f"puller-{uuid.uuid4().hex[:6]}", "--scope",
         scope, "--jwks", str(jwks), "--json"],
        env=upstream.env(), capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return str(json.loads(done.stdout)["client_id"]), pem


def backend_services(upstream: LiveServer, client_id: str, pem: Path, scope: str) -> dict[str, str]:
    """The upstreams file's `auth` for SMART Backend Services against the upstream gateway."""
    return {
        "type": "backend-services",
        "client_id": client_id,
        "token_url": f"{upstream.base_url}/auth/token",
        "private_key_file": str(pem),
        "alg": "RS384",
        "kid": "k1",
        "scope": scope,
    }


def upstreams_file(upstream: LiveServer, client_id: str, pem: Path, tmp: Path) -> Path:
    path = tmp / "upstreams.yaml"
    path.write_text(
        json.dumps(
            {
                "upstreams": [
                    {
                        "name": UPSTREAM,
                        "base_url": f"{upstream.base_url}/fhir",
                        "auth": backend_services(
                            upstream, client_id, pem, "system/Patient.rs system/Observation.rs"
                        ),
                        "resources": ["Patient", "Observation"],
                        "interval_seconds": INTERVAL_S,
                        "max_requests_per_second": 100,
                        "page_size": 2,  # several pages: `next` links are followed
                    }
                ]
            }
        )
    )
    return path


class Fhir:
    opened: list[httpx.AsyncClient] = []  # closed by the `closing` fixture after each test

    def __init__(self, server: LiveServer, bearer: str) -> None:
        self.http = httpx.AsyncClient(
            base_url=f"{server.base_url}/fhir", headers={"Authorization": f"Bearer {bearer}"}
        )
        Fhir.opened.append(self.http)

    async def create(self, resource: dict[str, Any]) -> dict[str, Any]:
        answer = await self.http.post(f"/{resource['resourceType']}", json=resource)
        assert answer.status_code == 201, answer.text
        return dict(answer.json())

    async def read(self, rtype: str, rid: str) -> dict[str, Any] | None:
        answer = await self.http.get(f"/{rtype}/{rid}")
        return dict(answer.json()) if answer.status_code == 200 else None

    async def versions(self, rtype: str, rid: str) -> int:
        answer = await self.http.get(f"/{rtype}/{rid}/_history")
        return len(answer.json().get("entry") or []) if answer.status_code == 200 else 0


async def until(check: Callable[[], Awaitable[bool]], bound: float = 15.0) -> None:
    started = time.monotonic()
    while not await check():
        assert time.monotonic() - started < bound, "not within the bound"
        await asyncio.sleep(0.1)


async def metric(server: LiveServer, name: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(f"{server.base_url}/metrics")).text
    return sum(float(v) for v in re.findall(rf"^{name}\{{[^}}]*\}} (\S+)$", text, re.M))


@pytest_asyncio.fixture(loop_scope="session", autouse=True)
async def closing() -> AsyncIterator[None]:
    yield
    while Fhir.opened:
        await Fhir.opened.pop().aclose()


@pytest_asyncio.fixture(loop_scope="session")
async def upstream(
    database_url_factory: Callable[[str], Awaitable[str]], tmp_path: Path
) -> AsyncIterator[LiveServer]:
    server = await start_server("sqlite", await database_url_factory("sqlite"), tmp_path / "upstream.log")
    yield server
    stop(server)


async def seed(upstream: LiveServer, observations: int) -> tuple[Fhir, str, list[str]]:
    writer = Fhir(upstream, await upstream.token("system/*.cruds"))
    patient = await writer.create(f.patient())
    obs = [
        (await writer.create(f.lab_observation(patient["id"], value=10.0 + i)))["id"]
        for i in range(observations)
    ]
    return writer, patient["id"], obs


async def test_two_pullers_fetch_each_change_once_and_a_restart_resumes_from_the_checkpoint(
    upstream: LiveServer, database_url_factory: Callable[[str], Awaitable[str]], tmp_path: Path
) -> None:
    """Two puller processes on one PostgreSQL store: everything arrives once (one version, fetched once in
    all), an update upstream comes alone, and a puller started again continues from the checkpoint."""
    writer, patient_id, obs_ids = await seed(upstream, 3)
    client_id, pem = register_jwks_client(upstream, tmp_path)
    env = {"GATEWAY_UPSTREAMS_FILE": str(upstreams_file(upstream, client_id, pem, tmp_path))}
    url = await database_url_factory("postgresql")
    pullers = [await start_server("postgresql", url, tmp_path / f"puller{i}.log", env=env) for i in range(2)]
    try:
        local = Fhir(pullers[0], await pullers[0].token("system/*.rs"))
        local_obs = [local_id(UPSTREAM, "Observation", o) for o in obs_ids]
        local_patient = local_id(UPSTREAM, "Patient", patient_id)
        wanted = [*(("Observation", o) for o in local_obs), ("Patient", local_patient)]

        async def all_here() -> bool:
            return all([await local.read(t, i) for t, i in wanted])

        await until(all_here)
        first = await local.read("Observation", local_obs[0])
        assert first is not None
        assert first["subject"] == {"reference": f"Patient/{local_patient}"}  # rewritten to the local id
        assert first["meta"]["source"] == f"{upstream.base_url}/fhir/Observation/{obs_ids[0]}"
        provenance = (
            await local.http.get("/Provenance", params={"target": f"Observation/{local_obs[0]}"})
        ).json()
        assert provenance.get("total", len(provenance.get("entry") or [])) >= 1
        await asyncio.sleep(4 * INTERVAL_S)  # both processes poll a few more times: nothing new
        assert [await local.versions(t, i) for t, i in wanted] == [1] * len(wanted)
        fetched = [await metric(p, "gateway_ehr_pull_fetched_total") for p in pullers]
        assert sum(fetched) == len(wanted)  # the leases: every resource fetched by one process, once
        polls = [await metric(p, "gateway_ehr_pull_polls_total") for p in pullers]
        assert all(polls), polls  # and both took part

        changed = await writer.read("Observation", obs_ids[1])
        assert changed is not None
        changed["valueQuantity"]["value"] = 99.0
        assert (await writer.http.put(f"/Observation/{obs_ids[1]}", json=changed)).status_code == 200

        async def updated() -> bool:
            stored = await local.read("Observation", local_obs[1])
            return stored is not None and stored["valueQuantity"]["value"] == 99.0

        await until(updated)
        await asyncio.sleep(4 * INTERVAL_S)
        fetched_now = [await metric(p, "gateway_ehr_pull_fetched_total") for p in pullers]
        assert sum(fetched_now) == len(wanted) + 1  # only the update came again
        assert [await local.versions("Observation", o) for o in local_obs] == [1, 2, 1]
        assert await local.versions("Patient", local_patient) == 1

        for p in pullers:
            stop(p)
        pullers = [await start_server("postgresql", url, tmp_path / "puller-again.log", env=env)]

        async def polled_again() -> bool:
            return await metric(pullers[0], "gateway_ehr_pull_polls_total") >= 4

        await until(polled_again)
        assert await metric(pullers[0], "gateway_ehr_pull_fetched_total") == 0  # from the checkpoint
        assert await metric(pullers[0], "gateway_ehr_pull_failures_total") == 0
        local = Fhir(pullers[0], await pullers[0].token("system/*.rs"))
        assert [await local.versions("Observation", o) for o in local_obs] == [1, 2, 1]
    finally:
        for p in pullers:
            stop(p)


async def test_an_upstream_offering_the_topic_is_subscribed_to_and_a_change_arrives_within_a_second(
    upstream: LiveServer, database_url_factory: Callable[[str], Awaitable[str]], tmp_path: Path
) -> None:
    """The upstream gateway offers `resource-changed`: the puller subscribes (rest-hook, id-only), and an
    Observation created upstream is here within a second although the poll interval is a minute."""
    writer, patient_id, _ = await seed(upstream, 0)
    client_id, pem = register_jwks_client(upstream, tmp_path, "system/*.rs system/Subscription.cruds")
    port = free_port()
    path = upstreams_file(upstream, client_id, pem, tmp_path)
    config = json.loads(path.read_text())
    config["upstreams"][0].update(
        interval_seconds=60,
        subscribe={
            "topic": "https://specialty-gateway.org/fhir/SubscriptionTopic/resource-changed",
            "endpoint": f"http://127.0.0.1:{port}/ehr/notifications/{UPSTREAM}",
            "payload": "id-only",
            "heartbeat_seconds": 5,
        },
    )
    config["upstreams"][0]["auth"]["scope"] = "system/*.rs system/Subscription.cruds"
    path.write_text(json.dumps(config))
    env = {"GATEWAY_UPSTREAMS_FILE": str(path)}
    puller = await start_server(
        "sqlite", await database_url_factory("sqlite"), tmp_path / "subscriber.log", port=port, env=env
    )
    try:

        async def subscribed() -> bool:
            async with httpx.AsyncClient() as http:
                text = (await http.get(f"{puller.base_url}/metrics")).text
            return f'gateway_ehr_subscription_state{{state="active",upstream="{UPSTREAM}"}} 1.0' in text

        async def patient_here() -> bool:  # the first poll, at start
            return await metric(puller, "gateway_ehr_pull_written_total") >= 1

        await until(subscribed)  # the handshake came
        await until(patient_here)
        await writer.create(f.lab_observation(patient_id, value=42.0))
        started = time.monotonic()

        async def arrived() -> bool:  # the poll interval is 60 s: only a notification can bring it
            return await metric(puller, "gateway_ehr_notifications_stored_total") >= 1

        await until(arrived, bound=5.0)
        took = time.monotonic() - started
        assert took < 1.0, took
        assert await metric(puller, "gateway_ehr_pull_written_total") == 1  # the Patient only: no poll since
        assert await metric(puller, "gateway_ehr_notifications_rejected_total") == 0
    finally:
        stop(puller)
