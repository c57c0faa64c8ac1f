"""Fixtures shared by the API tests: a real notification receiver, a running deliverer, a payer
stand-in and a specialty order ready for prior authorization."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import httpx
import pytest
import pytest_asyncio

from gateway.pa.payers import PayerDirectory, parse_payers
from gateway.service.access import users as user_service
from gateway.service.gateway import Gateway
from gateway.transports.http.app import create_app
from tests import factories as f
from tests.conftest import TEST_PASSWORD_HASH_COST
from tests.payer_standin import PayerStandIn
from tests.receiver import Receiver


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


@pytest_asyncio.fixture
async def delivering(gateway: Gateway) -> AsyncIterator[Gateway]:
    gateway.deliverer.poll_s = 0.05
    await gateway.deliverer.start()
    yield gateway
    await gateway.deliverer.stop()


@pytest.fixture
def payer() -> Iterator[PayerStandIn]:
    with PayerStandIn() as standin:
        standin.timeout_delay_s = 2.0
        yield standin


def standin_payers(payer: PayerStandIn, insurer: str, **settings: Any) -> PayerDirectory:
    """A payers file of one payer, `standin`, for the payer stand-in, answering for Organization/insurer;
    `settings` are the entry's other fields (timeouts, retries)."""
    entry = {
        "name": "standin",
        "base_url": payer.base_url,
        "insurers": [f"Organization/{insurer}"],
        "auth": {
            "type": "client-credentials",
            "token_url": payer.token_url,
            "client_id": payer.client_id,
            "client_secret": payer.client_secret,
        },
        **settings,
    }
    return parse_payers({"payers": [entry]})


class Order:
    """A specialty order ready for prior authorization, and the ids of what it refers to."""

    def __init__(self, ids: dict[str, str]) -> None:
        self.ids = ids

    def __getattr__(self, name: str) -> str:
        return self.ids[name]


async def _create(api: httpx.AsyncClient, resource: dict[str, Any]) -> str:
    answer = await api.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert answer.status_code == 201, answer.text
    return str(answer.json()["id"])


@pytest_asyncio.fixture
async def order(gateway: Gateway, api: httpx.AsyncClient, payer: PayerStandIn) -> AsyncIterator[Order]:
    patient = await _create(api, f.patient())
    insurer = await _create(
        api,
        {
            "resourceType": "Organization",
            "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}],
            "name": "Stand-in Health Plan",
        },
    )
    prescriber = await _create(api, {"resourceType": "Practitioner", "name": [{"family": "Prescriber"}]})
    coverage = await _create(
        api,
        {
            "resourceType": "Coverage",
            "status": "active",
            "beneficiary": {"reference": f"Patient/{patient}"},
            "payor": [{"reference": f"Organization/{insurer}"}],
        },
    )
    anc = await _create(api, f.lab_observation(patient, code="751-8", value=2.1, unit="10*3/uL"))
    request = await _create(
        api,
        f.medication_request(
            patient,
            requester={"reference": f"Practitioner/{prescriber}"},
            dispenseRequest={"quantity": {"value": 30, "unit": "tablet"}},
        ),
    )
    previous = gateway.priorauth.payers
    gateway.priorauth.payers = standin_payers(
        payer,
        insurer,
        timeout_seconds=1.0,
        retry={"max_attempts": 3, "first_delay_seconds": 60, "max_delay_seconds": 600},
        inquire_every_seconds=3600,
    )
    yield Order(
        {
            "patient": patient,
            "insurer": insurer,
            "prescriber": prescriber,
            "coverage": coverage,
            "anc": anc,
            "request": request,
        }
    )
    gateway.priorauth.payers = previous


CONSOLE_PASSWORD = "console-password-1"
Person = Callable[..., Awaitable[httpx.AsyncClient]]


@pytest_asyncio.fixture
async def person(gateway: Gateway) -> AsyncIterator[Person]:
    """Makes a logged-in browser (cookies kept) for a new user of the given role."""
    app = create_app(gateway.settings, gateway)
    opened: list[httpx.AsyncClient] = []

    async def make(role: str, practitioner: str | None = None) -> httpx.AsyncClient:
        name = f"{role[:2]}-{uuid.uuid4().hex[:8]}"
        await user_service.add_user(
            gateway.db, name, role, practitioner, CONSOLE_PASSWORD, cost=TEST_PASSWORD_HASH_COST
        )
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway.test")
        opened.append(client)
        form = await client.get("/console/login")
        csrf = re.search(r'name="csrf_token" value="([^"]+)"', form.text)
        assert csrf is not None
        answer = await client.post(
            "/console/login",
            data={"username": name, "password": CONSOLE_PASSWORD, "csrf_token": csrf.group(1)},
        )
        assert answer.status_code == 303, answer.text
        return client

    yield make
    for client in opened:
        await client.aclose()
