"""Schemathesis against the in-process app: every operation of the OpenAPI schema the app serves, with
cases generated from it (valid and invalid parameters), sent with a token holding every scope, on both
backends. The check is schemathesis's `not_a_server_error`: no answer is a 5xx.

The operations are listed at collection from the app's own schema (one test per operation, so a failure
names it); `test_the_fuzzed_schema_is_the_one_served` keeps that list honest.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import orjson
import pytest
import pytest_asyncio
from hypothesis import event, given
from hypothesis import strategies as st
from schemathesis import GenerationMode, openapi
from schemathesis.checks import not_a_server_error

from gateway.auth.throttle import FailureThrottle
from gateway.service.gateway import Gateway
from gateway.settings import Settings
from gateway.transports.http.app import create_app
from tests.conftest import ALL, BACKENDS
from tests.fuzz.conftest import HANG_SECONDS, fuzz

# Every scope the gateway grants, so that cases reach the handlers rather than stop at 403.
EVERY_SCOPE = f"{ALL} subscriptions/admin audit/events.read"
BASE = "http://gateway.test"


def _schema() -> dict[str, Any]:
    return create_app(Settings(database_url="sqlite+aiosqlite:///:memory:")).openapi()


SCHEMA = openapi.from_dict(_schema())
OPERATIONS = [result.ok() for result in SCHEMA.get_all_operations()]


class Caller:
    """An HTTP client for one backend's app holding a fresh token with every scope."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=create_app(gateway.settings, gateway)), base_url=BASE
        )
        self.credentials: tuple[str, str] | None = None
        self.issued: tuple[float, str] | None = None

    async def token(self) -> str:
        """A token, renewed every minute (they live 5: a long run outlasts one); failed token requests that
        cases made start no back-off for the renewal."""
        if self.issued is not None and time.monotonic() - self.issued[0] < 60:
            return self.issued[1]
        auth = self.gateway.auth
        auth.client_failures = FailureThrottle(auth.client_failures.policy)
        auth.address_failures = FailureThrottle(auth.address_failures.policy)
        if self.credentials is None:
            registered = await auth.add_client(f"fuzz-{uuid.uuid4().hex[:8]}", EVERY_SCOPE)
            self.credentials = (registered.client_id, registered.client_secret or "")
        answer = await self.client.post(
            "/auth/token", data={"grant_type": "client_credentials"}, auth=self.credentials
        )
        assert answer.status_code == 200, answer.text
        self.issued = (time.monotonic(), str(answer.json()["access_token"]))
        return self.issued[1]


@pytest_asyncio.fixture(scope="module")
async def callers(gateways: dict[str, Gateway]) -> AsyncIterator[dict[str, Caller]]:
    made = {backend: Caller(gateway) for backend, gateway in gateways.items()}
    yield made
    for caller in made.values():
        await caller.client.aclose()


def _request(kwargs: dict[str, Any]) -> dict[str, Any]:
    """schemathesis's requests-style arguments as httpx's."""
    out: dict[str, Any] = {
        "method": kwargs["method"],
        "url": kwargs["url"],
        "headers": kwargs.get("headers") or {},
        "params": kwargs.get("params") or None,
    }
    if kwargs.get("cookies"):
        out["headers"]["Cookie"] = "; ".join(f"{k}={v}" for k, v in kwargs["cookies"].items())
    if "json" in kwargs:
        out["content"] = orjson.dumps(kwargs["json"])
        out["headers"].setdefault("Content-Type", "application/json")
    elif isinstance(kwargs.get("data"), bytes | str):
        out["content"] = kwargs["data"]
    elif kwargs.get("data") is not None:
        out["data"] = kwargs["data"]
    if kwargs.get("files"):
        out["files"] = kwargs["files"]
    return out


async def test_the_fuzzed_schema_is_the_one_served(callers: dict[str, Caller]) -> None:
    served = await callers[BACKENDS[0]].client.get("/openapi.json")
    assert served.status_code == 200
    assert served.json() == _schema()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("operation", OPERATIONS, ids=[op.label for op in OPERATIONS])
@fuzz(small=3)
@given(data=st.data())
async def test_no_operation_answers_a_server_error(
    callers: dict[str, Caller], backend: str, operation: Any, data: st.DataObject
) -> None:
    caller = callers[backend]
    if data.draw(st.booleans(), label="invalid"):
        case = data.draw(operation.as_strategy(GenerationMode.NEGATIVE))
    else:
        case = data.draw(operation.as_strategy(GenerationMode.POSITIVE))
    token = await caller.token()
    kwargs = case.as_transport_kwargs(base_url=BASE, headers={"Authorization": f"Bearer {token}"})
    response = await asyncio.wait_for(caller.client.request(**_request(kwargs)), HANG_SECONDS)
    event(str(response.status_code))
    case.validate_response(response, checks=[not_a_server_error])
