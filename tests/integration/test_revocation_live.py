"""`gateway clients remove | disable | enable` and `gateway keys rotate` run as separate processes against a
real `gateway serve`: the server refuses the client's tokens within seconds and its subscriptions stop."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import Iterator

import httpx
import jwt
import pytest

from tests import factories as f
from tests.api.test_subscriptions import abnormal
from tests.integration.conftest import GATEWAY_BIN, LiveServer
from tests.integration.test_subscriptions_live import Api
from tests.receiver import Receiver

pytestmark = pytest.mark.asyncio(loop_scope="session")


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


def cli(live: LiveServer, *args: str) -> str:
    done = subprocess.run(
        [GATEWAY_BIN, *args], env=live.env(), capture_output=True, text=True, check=False, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


async def token(live: LiveServer, client: dict[str, str]) -> str:
    async with httpx.AsyncClient() as http:
        answer = await http.post(
            f"{live.base_url}/auth/token",
            data={"grant_type": "client_credentials"},
            auth=(client["client_id"], client["client_secret"]),
        )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["access_token"])


async def until_refused(live: LiveServer, bearer: str, bound: float = 5.0) -> None:
    started = time.monotonic()
    async with httpx.AsyncClient(base_url=live.base_url) as http:
        while True:
            status = (
                await http.get("/fhir/Patient", headers={"Authorization": f"Bearer {bearer}"})
            ).status_code
            if status == 401:
                return
            assert status == 200
            assert time.monotonic() - started <= bound, "the server still accepts the token"
            await asyncio.sleep(0.1)


async def test_cli_remove_stops_tokens_and_subscriptions_of_a_live_server(
    live: LiveServer, receiver: Receiver
) -> None:
    admin = Api(live, await live.token("system/*.cruds subscriptions/admin"))  # sees others' Subscriptions
    owner_client = live.add_client("system/*.cruds")
    owner = Api(live, await token(live, owner_client))
    try:
        path = f"/live-{uuid.uuid4().hex[:6]}"
        sub_id = await owner.subscribe(f.subscription("abnormal-lab-result", receiver.url(path)))
        await admin.wait_status(sub_id, "active")
        patient = (await admin.http.post("/fhir/Patient", json=f.patient())).json()["id"]

        # The removal is done by another process (the CLI) while the end of it is timed.
        cli(live, "clients", "remove", owner_client["client_id"])
        removed_at = time.monotonic()
        await until_refused(live, owner.http.headers["Authorization"][7:])
        assert time.monotonic() - removed_at <= 5.0
        assert (await admin.status(sub_id))["status"] == "off"

        assert (await admin.http.post("/fhir/Observation", json=abnormal(patient))).status_code == 201
        await asyncio.sleep(1.5)
        assert receiver.events(path) == []
        assert (await admin.status(sub_id))["events-since-subscription-start"] == "0"
    finally:
        await admin.close()
        await owner.close()


async def test_cli_disable_enable_and_key_rotation_against_a_live_server(live: LiveServer) -> None:
    client = live.add_client("system/*.rs")
    name = client["name"]
    before = await token(live, client)
    cli(live, "clients", "disable", name)
    await until_refused(live, before)
    cli(live, "clients", "enable", name)
    after = await token(live, client)
    async with httpx.AsyncClient(base_url=live.base_url) as http:
        assert (
            await http.get("/fhir/Patient", headers={"Authorization": f"Bearer {after}"})
        ).status_code == 200
        old_kid = jwt.get_unverified_header(after)["kid"]
        cli(live, "keys", "rotate")
        keys = json.loads(cli(live, "keys", "list", "--json"))
        current = next(k["kid"] for k in keys if k["state"] == "current")
        assert current != old_kid
        # The server signs with the new key within seconds; the old token keeps working meanwhile.
        deadline = time.monotonic() + 10
        while jwt.get_unverified_header(await token(live, client))["kid"] != current:
            assert time.monotonic() < deadline, "the server did not pick up the new key"
            await asyncio.sleep(0.2)
        assert (
            await http.get("/fhir/Patient", headers={"Authorization": f"Bearer {after}"})
        ).status_code == 200
