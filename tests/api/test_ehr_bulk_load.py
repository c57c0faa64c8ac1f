"""The EHR pull's first load by Bulk Data `$export` and `group:` members, on both backends: against a
third-party server (respx) and against a second gateway served in-process (gateway/service/ehrpull)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
import respx
from sqlalchemy import select

from gateway.ehr.pulled import local_id
from gateway.ehr.upstreams import UpstreamConfig
from gateway.service.ehrpull.poller import EhrPuller
from gateway.service.gateway import Gateway
from gateway.store import resources as store
from gateway.store import upstreams as checkpoints
from gateway.store.tables import upstream_checkpoint
from gateway.transports.http.app import create_app
from tests import factories as f
from tests.conftest import BACKENDS

BASE = "https://ehr.example/fhir"
STATUS = f"{BASE}/bulk-status/job-1"
TRANSACTION_TIME = "2027-01-02T03:04:05.678Z"


def config(name: str, base: str = BASE, **extra: Any) -> UpstreamConfig:
    return UpstreamConfig.model_validate(
        {
            "name": name,
            "base_url": base,
            "resources": ["Patient", "Observation"],
            "first_load": "bulk-export",
            "interval_seconds": 60,
            "max_requests_per_second": 1000,
            **extra,
        }
    )


def ndjson(*resources: dict[str, Any]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in resources)


def remote_patient(pid: str) -> dict[str, Any]:
    return {**f.patient(), "id": pid, "meta": {"lastUpdated": "2026-12-01T00:00:00Z"}}


def remote_observation(oid: str, pid: str) -> dict[str, Any]:
    return {**f.lab_observation(pid), "id": oid, "meta": {"lastUpdated": "2026-12-01T00:00:00Z"}}


def manifest(**extra: Any) -> dict[str, Any]:
    return {
        "transactionTime": TRANSACTION_TIME,
        "request": f"{BASE}/$export",
        "requiresAccessToken": True,
        "output": [
            {"type": "Patient", "url": f"{BASE}/files/p.ndjson", "count": 2},
            {"type": "Observation", "url": f"{BASE}/files/o.ndjson", "count": 1},
        ],
        "error": [],
        **extra,
    }


class Waits:
    def __init__(self) -> None:
        self.seen: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.seen.append(seconds)


@pytest_asyncio.fixture
async def puller_for(gateway: Gateway) -> AsyncIterator[Any]:
    made: list[EhrPuller] = []

    async def make(upstream: UpstreamConfig, http: httpx.AsyncClient | None = None) -> EhrPuller:
        puller = EhrPuller(gateway.fhir, [upstream], http=http)
        puller.loader.sleep = Waits()
        await puller.prepare()
        made.append(puller)
        return puller

    yield make
    for puller in made:
        await puller.stop()


async def checkpoint_rows(gateway: Gateway, name: str) -> dict[str, Any]:
    async with gateway.db.read() as conn:
        rows = await conn.execute(select(upstream_checkpoint).where(upstream_checkpoint.c.upstream == name))
        return {row.res_type: row for row in rows}


async def test_first_load_by_export_then_the_incremental_pull_continues(
    gateway: Gateway, puller_for: Any
) -> None:
    name = f"b{uuid.uuid4().hex[:8]}"
    upstream = config(name)
    kicked: list[httpx.Request] = []
    searches: list[httpx.Request] = []
    statuses = [
        httpx.Response(202, headers={"Retry-After": "1", "X-Progress": "Patient"}),
        httpx.Response(200, json=manifest()),
    ]
    with respx.mock(assert_all_called=True) as ehr:
        ehr.get(f"{BASE}/$export").mock(
            side_effect=lambda request: (
                kicked.append(request) or httpx.Response(202, headers={"Content-Location": STATUS})
            )
        )
        ehr.get(STATUS).mock(side_effect=lambda request: statuses.pop(0))
        deleted = ehr.delete(STATUS).mock(return_value=httpx.Response(202))
        ehr.get(f"{BASE}/files/p.ndjson").mock(
            return_value=httpx.Response(200, content=ndjson(remote_patient("p1"), remote_patient("p2")))
        )
        # the last line has no newline; one line is not JSON (counted, skipped)
        ehr.get(f"{BASE}/files/o.ndjson").mock(
            return_value=httpx.Response(
                200, content=b"not json\n" + orjson.dumps(remote_observation("o1", "p1"))
            )
        )
        for rtype in ("Patient", "Observation"):  # once the first load is done, in the same round
            ehr.get(f"{BASE}/{rtype}").mock(
                side_effect=lambda request: (
                    searches.append(request)
                    or httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset"})
                )
            )
        puller = await puller_for(upstream)
        await puller.run_once()
    assert len(kicked) == 1 and deleted.called
    assert kicked[0].headers["prefer"] == "respond-async"
    assert dict(kicked[0].url.params) == {
        "_type": "Patient,Observation",
        "_outputFormat": "application/fhir+ndjson",
    }
    assert puller.loader.sleep.seen == [1.0]  # Retry-After honoured
    counts = puller.counts[(name, "$export")]
    assert (counts.exports, counts.fetched, counts.rejected, counts.written) == (1, 3, 1, 3)
    async with gateway.db.read() as conn:
        obs = await store.current(conn, "Observation", local_id(name, "Observation", "o1"))
    assert obs is not None and obs.content is not None
    stored = orjson.loads(obs.content)
    assert stored["subject"]["reference"] == f"Patient/{local_id(name, 'Patient', 'p1')}"
    rows = await checkpoint_rows(gateway, name)
    assert rows["Patient"].last_updated == rows["Observation"].last_updated == TRANSACTION_TIME
    assert rows["$export"].export_state == "done" and rows["$export"].export_url is None
    # the searches continue from the transactionTime on, and no export runs again
    assert [r.url.params["_lastUpdated"] for r in searches] == [f"gt{TRANSACTION_TIME}"] * 2
    with respx.mock(assert_all_called=False) as ehr:
        export = ehr.get(f"{BASE}/$export").mock(return_value=httpx.Response(500))
        await puller.run_once()
    assert not export.called


async def test_a_long_wait_ends_the_round_and_a_restart_resumes_the_same_export(
    gateway: Gateway, puller_for: Any
) -> None:
    name = f"b{uuid.uuid4().hex[:8]}"
    with respx.mock(assert_all_called=False) as ehr:
        kick = ehr.get(f"{BASE}/$export").mock(
            return_value=httpx.Response(202, headers={"Content-Location": STATUS})
        )
        ehr.get(STATUS).mock(return_value=httpx.Response(202, headers={"Retry-After": "120"}))
        search = ehr.get(f"{BASE}/Patient").mock(return_value=httpx.Response(500))
        first = await puller_for(config(name))
        await first.run_once()
        assert first.loader.sleep.seen == []  # not slept through: the round ended
        rows = await checkpoint_rows(gateway, name)
        assert rows["$export"].export_url == STATUS and rows["$export"].lease_owner is None
        assert rows["$export"].next_poll_us > rows["$export"].polled_us + 100_000_000
        assert not search.called  # the searches wait for the first load
        # a restart (another process, the row made due again) asks the same status URL, no new kick-off
        async with gateway.db.write() as conn:
            await conn.execute(
                upstream_checkpoint.update()
                .where(upstream_checkpoint.c.upstream == name)
                .values(next_poll_us=0)
            )
        second = await puller_for(config(name))
        await second.run_once()
        assert kick.call_count == 1
        assert ehr.routes[1].call_count == 2


@pytest.mark.parametrize(
    "failure",
    [
        "status-500",
        "manifest-errors",
        "kick-off-400",
    ],
)
async def test_a_failed_export_falls_back_to_the_incremental_pull(
    gateway: Gateway, puller_for: Any, failure: str
) -> None:
    name = f"b{uuid.uuid4().hex[:8]}"
    outcome = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "exception"}]}
    errors = manifest(error=[{"type": "OperationOutcome", "url": f"{BASE}/files/e.ndjson"}])
    searches: list[httpx.Request] = []
    with respx.mock(assert_all_called=False) as ehr:
        ehr.get(f"{BASE}/$export").mock(
            return_value=httpx.Response(400, json=outcome)
            if failure == "kick-off-400"
            else httpx.Response(202, headers={"Content-Location": STATUS})
        )
        ehr.get(STATUS).mock(
            return_value=httpx.Response(500, json=outcome)
            if failure == "status-500"
            else httpx.Response(200, json=errors)
        )
        ehr.delete(STATUS).mock(return_value=httpx.Response(202))
        for rtype in ("Patient", "Observation"):
            ehr.get(f"{BASE}/{rtype}").mock(
                side_effect=lambda request: (
                    searches.append(request)
                    or httpx.Response(200, json={"resourceType": "Bundle", "type": "searchset"})
                )
            )
        puller = await puller_for(config(name))
        await puller.run_once()
        assert puller.counts[(name, "$export")].export_failures == 1
        assert (await checkpoint_rows(gateway, name))["$export"].export_state == "failed"
        await puller.run_once()
    # from the beginning: no _lastUpdated
    assert searches and all("_lastUpdated" not in r.url.params for r in searches)


def test_exports_config_is_checked() -> None:
    with pytest.raises(ValueError, match="exclude each other"):
        config("x", patients=["p1"], group="g1")
    with pytest.raises(ValueError, match="first_load"):
        config("x", first_load="bulk")
    with pytest.raises(ValueError, match="group"):
        config("x", group="not a valid id!")


@pytest_asyncio.fixture
async def upstream_gateway(gateways: dict[str, Gateway], backend: str) -> Gateway:
    """The other backend's gateway, as the EHR (its store is not emptied: the test makes its own Group)."""
    return gateways[next(b for b in BACKENDS if b != backend) if len(BACKENDS) > 1 else backend]


async def test_first_load_from_a_second_gateway_by_group_export_then_group_members(
    gateway: Gateway, upstream_gateway: Gateway, puller_for: Any
) -> None:
    ehr = upstream_gateway
    registered = await ehr.auth.add_client(f"puller-{uuid.uuid4().hex[:6]}", "system/*.rs system/*.c")
    app = create_app(ehr.settings, ehr)
    base = "http://ehr.test/fhir"
    http = httpx.AsyncClient(transport=httpx.ASGITransport(app=app))
    token = await http.post(
        "http://ehr.test/auth/token",
        data={"grant_type": "client_credentials"},
        auth=(registered.client_id, registered.client_secret or ""),
    )
    http.headers["Authorization"] = f"Bearer {token.json()['access_token']}"

    async def make(resource: dict[str, Any]) -> str:
        answer = await http.post(f"{base}/{resource['resourceType']}", json=resource)
        assert answer.status_code == 201, answer.text
        return str(answer.json()["id"])

    member, former = await make(f.patient()), await make(f.patient())
    member_obs, former_obs = await make(f.lab_observation(member)), await make(f.lab_observation(former))
    group = await make(
        {
            "resourceType": "Group",
            "type": "person",
            "actual": True,
            "member": [
                {"entity": {"reference": f"Patient/{member}"}},
                {"entity": {"reference": f"Patient/{former}"}, "inactive": True},
            ],
        }
    )
    name = f"g{uuid.uuid4().hex[:8]}"
    puller = await puller_for(config(name, base=base, group=group), http)

    async def build(seconds: float) -> None:  # the EHR's builder runs while we wait
        await ehr.exports.run_once()

    puller.loader.sleep = build
    await puller.run_once()
    counts = puller.counts[(name, "$export")]
    assert counts.exports == 1 and counts.written == 2
    async with gateway.db.read() as conn:
        assert await store.current(conn, "Observation", local_id(name, "Observation", member_obs)) is not None
        assert await store.current(conn, "Observation", local_id(name, "Observation", former_obs)) is None
    rows = await checkpoint_rows(gateway, name)
    assert rows["Observation"].last_updated is not None
    # then the incremental pull, for the Group's current members only
    second = await make(f.lab_observation(member))
    await make(f.lab_observation(former))
    async with gateway.db.write() as conn:
        await conn.execute(
            upstream_checkpoint.update().where(upstream_checkpoint.c.upstream == name).values(next_poll_us=0)
        )
    await puller.run_once()
    async with gateway.db.read() as conn:
        assert await store.current(conn, "Observation", local_id(name, "Observation", second)) is not None
        found = [c for c in await checkpoints.all_checkpoints(conn) if c.upstream == name]
    assert {c.res_type for c in found} == {"Patient", "Observation"}
    assert (
        puller.counts[(name, "Observation")].fetched == 1
    )  # the former member's new result is not asked for
