"""The console's metrics page on both backends: the Measures' figures overall and per pharmacist, with
server-drawn charts; a role that may not read what a Measure counts gets no figures."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import httpx
import pytest

from tests import factories as f
from tests.api.conftest import Person
from tests.api.test_measures import alert, create, put

pytestmark = pytest.mark.asyncio


def figure(page: str, group: str) -> str:
    start = page.index(f'data-group="{group}"')
    return page[start : page.index("</section>", start)]


async def test_an_alert_acknowledged_after_three_hours_shows_overall_and_for_its_pharmacist(
    api: httpx.AsyncClient, person: Person
) -> None:
    practitioner = (await create(api, {"resourceType": "Practitioner", "name": [{"family": "Okafor"}]}))["id"]
    await create(
        api,
        {
            "resourceType": "PractitionerRole",
            "active": True,
            "practitioner": {"reference": f"Practitioner/{practitioner}"},
            "code": [{"coding": [{"system": "http://snomed.info/sct", "code": "46255001"}]}],
        },
    )
    patient = (await create(api, f.patient()))["id"]
    await create(api, f.care_team(patient, f"Practitioner/{practitioner}"))
    raised = await create(api, alert(patient, datetime.now(UTC) - timedelta(hours=3)))
    owner = {"reference": f"Practitioner/{practitioner}"}
    await put(api, {**raised, "owner": owner, "status": "accepted"})

    me = await person("pharmacist", f"Practitioner/{practitioner}")
    page = await me.get("/console/metrics")
    assert page.status_code == 200, page.text
    acknowledge = figure(page.text, "acknowledge")
    values = re.findall(r"<th scope=\"row\">([^<]+)</th><td data-value>([^<]+)</td>", acknowledge)
    assert [label for label, _ in values] == ["All patients", "Okafor"]
    for _, shown in values:
        assert shown.endswith(" h") and 2.9 <= float(shown.split()[0]) <= 3.2
    assert (
        'role="img"' in acknowledge
        and 'aria-label="Alert time to acknowledge (median): All patients: 3' in (acknowledge)
    )
    assert "<script" not in page.text
    # Nothing scored yet: said so, not drawn as zero.
    assert "n/a" in figure(page.text, "time-to-first-dose")


async def test_a_role_that_reads_no_clinical_data_gets_no_figures(
    api: httpx.AsyncClient, person: Person
) -> None:
    me = await person("analyst")
    page = await me.get("/console/metrics")
    assert page.status_code == 200
    assert "Not available to this user." in page.text and "data-value" not in page.text
    coordinator = await person("coordinator")
    assert (await coordinator.get("/console/metrics")).status_code == 403
