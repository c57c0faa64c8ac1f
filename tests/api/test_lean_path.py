"""The lean path (gateway/transports/http/lean_path.py) answers as FastAPI's read, vread, search and
create routes do.

Each case sends the same request, with the same token, to an app with the lean path and to one without
it, and compares status, body bytes and headers (all but Date-like ones: there are none; a search's
Bundle and a create's new resource have their own ids and times, which are left out of the comparison).
A case where both apps fell back to the router would compare nothing: the lean app's counter says it
answered."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest
import pytest_asyncio

from gateway.auth.tokens import issue_user_access_token
from gateway.service.access import apps as app_service
from gateway.service.access import users as user_service
from gateway.service.access.clients import ISSUER
from gateway.service.gateway import Gateway
from gateway.transports.http.app import create_app
from gateway.transports.http.lean_path import LeanPath
from tests import factories as f
from tests.conftest import ALL, TEST_PASSWORD_HASH_COST, TEST_SECRET_HASH_COST


@dataclass
class Pair:
    lean: httpx.AsyncClient
    normal: httpx.AsyncClient
    middleware: LeanPath


def _lean_path(app: object) -> LeanPath:
    layer = getattr(app, "middleware_stack", None)
    while layer is not None and not isinstance(layer, LeanPath):
        layer = getattr(layer, "app", None)
    assert isinstance(layer, LeanPath), "the lean path is not installed"
    return layer


@pytest_asyncio.fixture
async def pair(gateway: Gateway) -> AsyncIterator[Pair]:
    lean_app = create_app(gateway.settings, gateway)
    normal_app = create_app(gateway.settings, gateway, lean_path=False)
    base = "http://gateway.test"
    async with (
        httpx.AsyncClient(transport=httpx.ASGITransport(app=lean_app), base_url=base) as lean,
        httpx.AsyncClient(transport=httpx.ASGITransport(app=normal_app), base_url=base) as normal,
    ):
        await lean.get("/fhir/metadata")  # builds the middleware stack
        yield Pair(lean, normal, _lean_path(lean_app))


async def _client_token(gateway: Gateway, http: httpx.AsyncClient, scope: str) -> tuple[str, str]:
    registered = await gateway.auth.add_client(f"fr-{uuid.uuid4().hex[:8]}", scope)
    answer = await http.post(
        "/auth/token",
        data={"grant_type": "client_credentials"},
        auth=(registered.client_id, registered.client_secret or ""),
    )
    assert answer.status_code == 200, answer.text
    return registered.client_id, str(answer.json()["access_token"])


async def _person_token(gateway: Gateway, practitioner: str, *, now: int | None = None) -> str:
    app = await app_service.add_app(
        gateway.db, f"app-{uuid.uuid4().hex[:8]}", ["http://127.0.0.1:8765/cb"],
        "openid fhirUser user/*.rs", confidential=False, cost=TEST_SECRET_HASH_COST,
    )  # fmt: skip
    ref = f"Practitioner/{practitioner}"
    user = await user_service.add_user(
        gateway.db, f"u-{uuid.uuid4().hex[:8]}", "pharmacist", ref, "clozapine-anc-1500",
        cost=TEST_PASSWORD_HASH_COST,
    )  # fmt: skip
    kid, key = await gateway.auth.signing_key()
    return issue_user_access_token(
        key=key, kid=kid, issuer=ISSUER, client_id=app.record.client_id, user_id=user.id,
        scope="user/*.rs", fhir_user=ref, ttl_seconds=300, now=now or int(time.time()),
    )  # fmt: skip


async def _same_answer(pair: Pair, path: str, token: str | None, *, lean: bool = True) -> httpx.Response:
    """Both apps' answers to GET `path`; asserts they are the same and whether the lean path took it
    (what passes to the router may be a Bundle, with its own id and time: its status and type count)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    headers["X-Request-ID"] = "compare-1"
    before = pair.middleware.answered
    fast = await pair.lean.get(path, headers=headers)
    assert pair.middleware.answered == before + (1 if lean else 0)
    slow = await pair.normal.get(path, headers=headers)
    if not lean:
        assert (fast.status_code, fast.headers.get("content-type")) == (
            slow.status_code,
            slow.headers.get("content-type"),
        )
        return fast
    assert (fast.status_code, fast.content) == (slow.status_code, slow.content)
    assert fast.headers.multi_items() == slow.headers.multi_items()
    return fast


async def _create(http: httpx.AsyncClient, token: str, resource: dict[str, object]) -> str:
    answer = await http.post(
        f"/fhir/{resource['resourceType']}", json=resource, headers={"Authorization": f"Bearer {token}"}
    )
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


async def test_lean_reads_answer_as_the_read_route_does(gateway: Gateway, pair: Pair) -> None:
    _, token = await _client_token(gateway, pair.normal, ALL)
    patient = await _create(pair.normal, token, f.patient())
    obs = await _create(pair.normal, token, f.lab_observation(patient, code="751-8", value=1.2))
    gone = await _create(pair.normal, token, f.lab_observation(patient, code="751-8", value=2.0))
    deleted = await pair.normal.delete(
        f"/fhir/Observation/{gone}", headers={"Authorization": f"Bearer {token}"}
    )
    assert deleted.status_code in (200, 204)
    _, patients_only = await _client_token(gateway, pair.normal, "system/Patient.rs")

    read = await _same_answer(pair, f"/fhir/Observation/{obs}", token)
    assert read.status_code == 200 and read.headers["ETag"] == 'W/"1"'
    assert (await _same_answer(pair, f"/fhir/Patient/{patient}", token)).status_code == 200
    assert (await _same_answer(pair, f"/fhir/Observation/{obs}/_history/1", token)).status_code == 200
    assert (await _same_answer(pair, f"/fhir/Observation/{obs}/_history/9", token)).status_code == 404
    assert (await _same_answer(pair, f"/fhir/Observation/{obs}/_history/x", token)).status_code == 404
    assert (await _same_answer(pair, f"/fhir/Observation/{gone}", token)).status_code == 410
    assert (await _same_answer(pair, f"/fhir/Observation/{gone}/_history/2", token)).status_code == 410
    assert (await _same_answer(pair, "/fhir/Observation/no-such-id", token)).status_code == 404
    assert (await _same_answer(pair, "/fhir/NoSuchType/1", token)).status_code in (400, 404)
    assert (await _same_answer(pair, f"/fhir/Observation/{obs}", patients_only)).status_code == 403
    assert (await _same_answer(pair, "/fhir/Observation/no-such-id", patients_only)).status_code == 403
    assert (await _same_answer(pair, f"/fhir/Observation/{obs}", None)).status_code == 401
    assert (await _same_answer(pair, f"/fhir/Observation/{obs}", "not-a-token")).status_code == 401


@pytest.mark.parametrize(
    "path",
    [
        "/fhir/Observation/{obs}?_format=json",  # a query string: the router's
        "/fhir/Observation/{obs}/",  # a trailing slash
        "/fhir/Measure/no-such-measure",  # its own route, before the generic read
        "/fhir/AuditEvent/no-such-event",
        "/fhir/SubscriptionTopic/no-such-topic",
        "/fhir/Observation/_history",  # type history
        "/fhir/Subscription/$status",
        "/fhir/Observation/{obs}/_history",  # instance history
    ],
)
async def test_other_shapes_pass_to_the_router_untouched(gateway: Gateway, pair: Pair, path: str) -> None:
    _, token = await _client_token(gateway, pair.normal, ALL)
    patient = await _create(pair.normal, token, f.patient())
    obs = await _create(pair.normal, token, f.lab_observation(patient, code="751-8", value=1.2))
    await _same_answer(pair, path.format(obs=obs), token, lean=False)


async def test_lean_reads_refuse_a_disabled_clients_token_as_the_router_does(
    gateway: Gateway, pair: Pair
) -> None:
    name, token = await _client_token(gateway, pair.normal, ALL)
    patient = await _create(pair.normal, token, f.patient())
    assert (await _same_answer(pair, f"/fhir/Patient/{patient}", token)).status_code == 200
    assert await gateway.auth.disable_client(name)
    assert (await _same_answer(pair, f"/fhir/Patient/{patient}", token)).status_code == 401


@dataclass
class Caseload:
    """A pharmacist on the care team of one patient (`mine`) and not of another, each with a result."""

    pharmacist: str
    mine: str
    other: str
    obs_mine: str
    obs_other: str


async def _caseload(gateway: Gateway, pair: Pair) -> Caseload:
    _, token = await _client_token(gateway, pair.normal, ALL)
    pharmacist = await _create(
        pair.normal, token, {"resourceType": "Practitioner", "name": [{"family": "A"}]}
    )
    mine, other = [await _create(pair.normal, token, f.patient()) for _ in range(2)]
    await _create(pair.normal, token, f.care_team(mine, f"Practitioner/{pharmacist}"))
    obs_mine = await _create(pair.normal, token, f.lab_observation(mine, code="751-8", value=1.2))
    obs_other = await _create(pair.normal, token, f.lab_observation(other, code="751-8", value=3.4))
    return Caseload(pharmacist, mine, other, obs_mine, obs_other)


async def test_lean_reads_keep_a_persons_reach_and_expiry(gateway: Gateway, pair: Pair) -> None:
    case = await _caseload(gateway, pair)
    pharmacist, other, obs_mine, obs_other = case.pharmacist, case.other, case.obs_mine, case.obs_other
    person = await _person_token(gateway, pharmacist)

    assert (await _same_answer(pair, f"/fhir/Observation/{obs_mine}", person)).status_code == 200
    assert (await _same_answer(pair, f"/fhir/Observation/{obs_other}", person)).status_code == 404
    assert (await _same_answer(pair, f"/fhir/Patient/{other}", person)).status_code == 404
    expired = await _person_token(gateway, pharmacist, now=int(time.time()) - 3600)
    assert (await _same_answer(pair, f"/fhir/Observation/{obs_mine}", expired)).status_code == 401


def _without_own(body: bytes) -> object:
    """A search Bundle or a created resource without what each answer makes its own: its id and meta,
    and the id and urn of a search's OperationOutcome."""
    import orjson

    try:
        parsed = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body
    if isinstance(parsed, dict):
        parsed.pop("id", None)
        parsed.pop("meta", None)
        for entry in parsed.get("entry") or []:
            if entry.get("resource", {}).get("resourceType") == "OperationOutcome":
                entry.pop("fullUrl", None)  # a search's notes: made for each answer
                entry["resource"].pop("id", None)
    return parsed


async def _same_outcome(
    pair: Pair,
    method: str,
    path: str,
    token: str | None,
    *,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    own: bool = False,
    lean: bool = True,
) -> httpx.Response:
    """Both apps' answers to one search or create, and whether the lean path took it. `own`: the answers
    carry their own id and time (a Bundle, a new resource): those are left out, the rest must match."""
    sent = {"X-Request-ID": "compare-1", **(headers or {})}
    if token:
        sent["Authorization"] = f"Bearer {token}"
    if body is not None:
        sent.setdefault("Content-Type", "application/fhir+json")
    before = pair.middleware.answered
    fast = await pair.lean.request(method, path, content=body, headers=sent)
    assert pair.middleware.answered == before + (1 if lean else 0)
    slow = await pair.normal.request(method, path, content=body, headers=sent)
    assert fast.status_code == slow.status_code, (fast.text, slow.text)
    if own:
        assert _without_own(fast.content) == _without_own(slow.content)
        volatile = {"location", "content-location", "etag", "last-modified", "content-length"}
        assert [(k, v) for k, v in fast.headers.multi_items() if k not in volatile] == [
            (k, v) for k, v in slow.headers.multi_items() if k not in volatile
        ]
        assert sorted(fast.headers) == sorted(slow.headers)
    else:
        assert fast.content == slow.content
        assert fast.headers.multi_items() == slow.headers.multi_items()
    return fast


async def test_lean_searches_answer_as_the_search_route_does(gateway: Gateway, pair: Pair) -> None:
    _, token = await _client_token(gateway, pair.normal, ALL)
    patient = await _create(pair.normal, token, f.patient())
    for n in range(3):
        await _create(pair.normal, token, f.lab_observation(patient, code="751-8", value=1.0 + n))
    _, patients_only = await _client_token(gateway, pair.normal, "system/Patient.rs")

    page = await _same_outcome(pair, "GET", f"/fhir/Observation?patient={patient}&_count=2", token, own=True)
    assert page.status_code == 200 and len(page.json()["entry"]) == 2
    assert any(link["relation"] == "next" for link in page.json()["link"])
    found = await _same_outcome(pair, "GET", "/fhir/Observation?code=http://loinc.org|751-8", token, own=True)
    assert found.json()["total"] >= 3
    assert (await _same_outcome(pair, "GET", "/fhir/Observation", token, own=True)).status_code == 200
    bad = await _same_outcome(pair, "GET", "/fhir/Observation?no-such-param=1", token, own=True)
    assert bad.status_code in (200, 400)
    assert (await _same_outcome(pair, "GET", "/fhir/Observation?date=notadate", token)).status_code == 400
    assert (await _same_outcome(pair, "GET", "/fhir/NoSuchType?x=1", token)).status_code in (400, 404)
    assert (await _same_outcome(pair, "GET", "/fhir/Observation?code=x", patients_only)).status_code == 403
    assert (await _same_outcome(pair, "GET", "/fhir/Observation?code=x", None)).status_code == 401


async def test_lean_searches_keep_a_persons_reach(gateway: Gateway, pair: Pair) -> None:
    case = await _caseload(gateway, pair)
    mine, other = case.mine, case.other
    person = await _person_token(gateway, case.pharmacist)

    everything = await _same_outcome(pair, "GET", "/fhir/Observation?code=751-8", person, own=True)
    subjects = {e["resource"]["subject"]["reference"] for e in everything.json().get("entry", [])}
    assert subjects == {f"Patient/{mine}"}
    theirs = await _same_outcome(pair, "GET", f"/fhir/Observation?patient={other}", person, own=True)
    assert theirs.json().get("entry", []) == []


async def test_lean_creates_answer_as_the_create_route_does(gateway: Gateway, pair: Pair) -> None:
    import orjson

    _, token = await _client_token(gateway, pair.normal, ALL)
    _, read_only = await _client_token(gateway, pair.normal, "system/Observation.rs")
    patient = await _create(pair.normal, token, f.patient())
    observation = f.lab_observation(patient, code="751-8", value=1.2)
    body = orjson.dumps(observation)

    created = await _same_outcome(pair, "POST", "/fhir/Observation", token, body=body, own=True)
    assert created.status_code == 201 and created.headers["ETag"] == 'W/"1"'
    assert created.json()["subject"] == {"reference": f"Patient/{patient}"}
    assert (
        await _same_outcome(pair, "POST", "/fhir/Observation", token, body=b"{not json")
    ).status_code == 400
    no_status = orjson.dumps({k: v for k, v in observation.items() if k != "status"})
    assert (await _same_outcome(pair, "POST", "/fhir/Observation", token, body=no_status)).status_code in (
        400,
        422,
    )
    wrong_type = await _same_outcome(pair, "POST", "/fhir/Patient", token, body=body)
    assert wrong_type.status_code == 400
    assert (await _same_outcome(pair, "POST", "/fhir/Observation", read_only, body=body)).status_code == 403
    assert (await _same_outcome(pair, "POST", "/fhir/Observation", None, body=body)).status_code == 401

    # Conditional create: once the identifier exists, both answer with the one stored (same bytes).
    tagged = orjson.dumps({**observation, "identifier": [{"system": "urn:lean", "value": "one"}]})
    await _create(pair.normal, token, orjson.loads(tagged))
    criteria = {"If-None-Exist": "identifier=urn:lean|one"}
    found = await _same_outcome(pair, "POST", "/fhir/Observation", token, body=tagged, headers=criteria)
    assert found.status_code == 200
    by_url = await _same_outcome(
        pair, "POST", "/fhir/Observation?identifier=urn:lean|one", token, body=tagged
    )
    assert by_url.status_code == 200


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/fhir/metadata"),  # its own route, before the generic search
        ("POST", "/fhir"),  # a Bundle
        ("POST", "/fhir/Observation/_search"),
        ("PUT", "/fhir/Observation"),  # conditional update
        ("DELETE", "/fhir/Observation"),  # conditional delete
    ],
)
async def test_other_methods_and_shapes_pass_to_the_router(
    gateway: Gateway, pair: Pair, method: str, path: str
) -> None:
    _, token = await _client_token(gateway, pair.normal, ALL)
    before = pair.middleware.answered
    body = b'{"resourceType": "Bundle", "type": "batch"}' if method in ("POST", "PUT") else None
    headers = {"Authorization": f"Bearer {token}"}
    if body is not None:
        headers["Content-Type"] = "application/fhir+json"
    await pair.lean.request(method, path, content=body, headers=headers)
    assert pair.middleware.answered == before
