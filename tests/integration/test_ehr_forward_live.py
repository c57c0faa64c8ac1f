"""Forwarding between two real `gateway serve` processes: the forwarder writes the lab Observations it makes
from HL7 v2 to the upstream (SMART Backend Services), durably, in order, and without duplicates."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.hl7_messages import anc_oru
from tests.integration.conftest import LiveServer, start_server
from tests.integration.test_ehr_pull_live import backend_services, register_jwks_client, stop, until

pytestmark = pytest.mark.asyncio(loop_scope="session")

ER7 = {"Content-Type": "x-application/hl7-v2+er7"}
RESOURCE_ID = "https://specialty-gateway.org/fhir/sid/resource-id"
SCOPE = "system/Patient.cruds system/Observation.cruds"


async def has(values: Callable[[], Awaitable[list[float]]], wanted: list[float]) -> bool:
    return await values() == wanted


async def failures(here: httpx.AsyncClient) -> bool:
    text = (await here.get("/metrics")).text
    found = re.findall(r'^gateway_ehr_forward_failures_total\{upstream="ehr"\} (\S+)$', text, re.M)
    return bool(found) and float(found[0]) >= 1


def forward_file(upstream: LiveServer, client_id: str, pem: Path, tmp: Path) -> Path:
    path = tmp / "upstreams.yaml"
    auth = backend_services(upstream, client_id, pem, SCOPE)
    entry = {"name": "ehr", "base_url": f"{upstream.base_url}/fhir", "auth": auth, "timeout_seconds": 3}
    path.write_text(json.dumps({"upstreams": [{**entry, "forward": {"resources": ["Observation"]}}]}))
    return path


async def test_results_reach_the_upstream_once_in_order_across_its_restart(
    database_url_factory: Callable[[str], Awaitable[str]], tmp_path: Path
) -> None:
    upstream_db = await database_url_factory("sqlite")
    up = await start_server("sqlite", upstream_db, tmp_path / "upstream.log")
    port = int(up.base_url.rsplit(":", 1)[1])
    forwarder: LiveServer | None = None
    try:
        client_id, pem = register_jwks_client(up, tmp_path, SCOPE)  # it writes: c and u scopes
        env = {
            "GATEWAY_UPSTREAMS_FILE": str(forward_file(up, client_id, pem, tmp_path)),
            "GATEWAY_SUBSCRIPTION_RETRY_HORIZON_SECONDS": "3600",
        }
        forwarder = await start_server(
            "sqlite", await database_url_factory("sqlite"), tmp_path / "forwarder.log", env=env
        )
        here = httpx.AsyncClient(
            base_url=forwarder.base_url,
            headers={
                "Authorization": f"Bearer {await forwarder.token('system/*.cruds hl7v2/messages.read')}"
            },
        )
        reader_token = await up.token("system/*.rs")

        async def upstream(path: str, **params: str) -> dict[str, Any]:
            async with httpx.AsyncClient(
                base_url=f"{up.base_url}/fhir", headers={"Authorization": f"Bearer {reader_token}"}
            ) as http:
                try:
                    return dict((await http.get(path, params={"_count": "100", **params})).json())
                except httpx.TransportError:
                    return {}

        async def values() -> list[float]:
            """The upstream's Observation values, oldest write first."""
            found = [e["resource"] for e in (await upstream("/Observation")).get("entry") or []]
            found.sort(key=lambda r: r["meta"]["lastUpdated"])
            return [float(r["valueQuantity"]["value"]) for r in found]

        async def send(control: str, placer: str, value: str) -> None:
            body = anc_oru(control, "MRN-FWD", value, placer=placer).encode()
            answer = await here.post("/hl7v2", content=body, headers=ER7)
            assert answer.status_code == 200, answer.text

        await send("FWD-1", "P1", "1.2")
        await until(lambda: has(values, [1.2]))

        stop(up)  # down: the next two results wait in the outbox, retried with backoff
        await send("FWD-2", "P2", "2.2")
        await send("FWD-3", "P3", "3.2")
        await until(lambda: failures(here))
        up = await start_server("sqlite", upstream_db, tmp_path / "upstream2.log", port=port)
        await until(lambda: has(values, [1.2, 2.2, 3.2]), bound=20)  # both, in order

        await send("FWD-4", "P1", "1.5")  # the first result corrected: updated there, not duplicated
        await until(lambda: has(values, [2.2, 3.2, 1.5]))
        observations = [e["resource"] for e in (await upstream("/Observation")).get("entry") or []]
        for obs in observations:  # each findable by its identifier, exactly once
            ours = next(i for i in obs["identifier"] if i["system"] == RESOURCE_ID)
            found = await upstream("/Observation", identifier=f"{RESOURCE_ID}|{ours['value']}")
            assert len(found.get("entry") or []) == 1
            assert str(obs["subject"]["reference"]).startswith("Patient/")
        patients = (await upstream("/Patient")).get("entry") or []
        assert len(patients) == 1  # the Patient too, by its MRN
        assert observations[0]["subject"]["reference"] == f"Patient/{patients[0]['resource']['id']}"

        # deleted here: deleted there (a conditional delete on its identifier), in the lane's order
        mine = [e["resource"] for e in (await here.get("/fhir/Observation")).json().get("entry") or []]
        (second,) = [r for r in mine if float(r["valueQuantity"]["value"]) == 2.2]
        assert (await here.delete(f"/fhir/Observation/{second['id']}")).status_code == 204
        await until(lambda: has(values, [3.2, 1.5]))
        text = (await here.get("/metrics")).text
        assert re.search(r'^gateway_ehr_forward_sent_total\{upstream="ehr"\} 5\.0$', text, re.M), text
        await here.aclose()
    finally:
        stop(up)
        if forwarder is not None:
            stop(forwarder)
