"""A site in an IANA time zone, through POST /hl7v2 on both backends: offset-less times get the offset the
zone has on their own date (daylight saving time followed), whatever offset MSH-7 carries."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest_asyncio

from gateway.service.gateway import Gateway
from gateway.transports.http.app import create_app
from tests.conftest import settings_for
from tests.hl7_messages import ack_code, msh, pid

ER7 = {"Content-Type": "x-application/hl7-v2+er7"}
SITE = """\
# A lab in Chicago whose analyzers stamp local wall-clock time without an offset.
site: central-lab
match:
  sending_facility: CENTRAL LAB
timezone: America/Chicago
"""


@pytest_asyncio.fixture
async def central(gateway: Gateway, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """An API client of a gateway on the backend's database whose mappings add the Chicago site."""
    mappings = tmp_path / "mappings"
    shutil.copytree(gateway.settings.mappings_dir, mappings)
    (mappings / "hl7v2" / "sites" / "central-lab.yaml").write_text(SITE)
    started = await Gateway.start(settings_for(gateway.settings.database_url, mappings_dir=mappings))
    registered = await started.auth.add_client(f"central-{uuid.uuid4().hex[:8]}", "system/*.cruds")
    transport = httpx.ASGITransport(app=create_app(started.settings, started))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        token = await client.post(
            "/auth/token",
            data={"grant_type": "client_credentials"},
            auth=(registered.client_id, registered.client_secret or ""),
        )
        client.headers["Authorization"] = f"Bearer {token.json()['access_token']}"
        yield client
    await started.close()


def glucose(control_id: str, observed: str) -> str:
    """An ORU^R01 from CENTRAL LAB sent in January (MSH-7 at -0600) with one offset-less OBX-14."""
    segments = [
        msh("ORU^R01", control_id, facility="CENTRAL LAB", when="20240115083000-0600"),
        pid(f"MRN-{control_id}"),
        f"ORC|RE|{control_id}^EHR|F{control_id}^LAB",
        f"OBR|1|{control_id}^EHR|F{control_id}^LAB|2345-7^Glucose^LN",
        f"OBX|1|NM|2345-7^Glucose^LN||95|mg/dL^^UCUM|70-99||||F|||{observed}",
    ]
    return "\r".join(segments) + "\r"


async def test_offsetless_times_follow_the_sites_zone_on_their_own_date(central: httpx.AsyncClient) -> None:
    for control_id, observed in (("TZ-JAN", "20240115120000"), ("TZ-JUL", "20240715120000")):
        answer = await central.post("/hl7v2", content=glucose(control_id, observed).encode(), headers=ER7)
        assert answer.status_code == 200 and ack_code(answer.text) == "AA", answer.text
    found = (await central.get("/fhir/Observation", params={"code": "2345-7", "_count": "10"})).json()
    effective = sorted(e["resource"]["effectiveDateTime"] for e in found["entry"])
    assert effective == ["2024-01-15T12:00:00-06:00", "2024-07-15T12:00:00-05:00"]
