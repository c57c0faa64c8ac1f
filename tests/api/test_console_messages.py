"""The console's message log on both backends, in-process with a browser's cookies: an analyst sees a
logged ORU masked, an admin sees it as sent, a pharmacist is refused (403 page); Reprocess checks CSRF and
runs the message again."""

from __future__ import annotations

import httpx

from tests.api.conftest import Person
from tests.api.test_console_worklist import csrf_of
from tests.api.test_hl7_pipeline import log_entries, send
from tests.hl7_messages import anc_oru, pid


def oru_of_jane() -> str:
    """An ORU whose patient name and result value are easy to look for in a page."""
    message = anc_oru("CTL-771", "MRN-4711", value="0.87")
    return message.replace(pid("MRN-4711"), pid("MRN-4711", family="Zyxwarden", given="Quillon"))


async def logged(api: httpx.AsyncClient) -> str:
    await send(api, oru_of_jane())
    (entry,) = await log_entries(api)
    return str(entry["id"])


async def test_an_analyst_sees_the_log_and_the_message_masked(api: httpx.AsyncClient, person: Person) -> None:
    message_id = await logged(api)
    analyst = await person("analyst")
    listing = await analyst.get("/console/messages")
    assert listing.status_code == 200, listing.text
    assert f'data-message="{message_id}"' in listing.text and "CTL-771" in listing.text
    assert "ORU^R01" in listing.text and "Zyxwarden" not in listing.text
    page = await analyst.get(f"/console/messages/{message_id}")
    assert page.status_code == 200, page.text
    assert "data-masked" in page.text
    for segment in ("MSH|", "PID|", "OBR|", "OBX|"):
        assert segment in page.text
    assert "ORU^R01" in page.text and "751-8^Neutrophils^LN" in page.text
    for secret in ("Zyxwarden", "Quillon", "0.87", "MRN-4711", "19800203"):
        assert secret not in page.text
    assert "Observation/" in page.text  # the resources it made, as references
    assert page.headers["cache-control"] == "no-store"


async def test_an_admin_sees_the_message_as_sent(api: httpx.AsyncClient, person: Person) -> None:
    message_id = await logged(api)
    admin = await person("admin")
    page = await admin.get(f"/console/messages/{message_id}")
    assert page.status_code == 200, page.text
    assert "data-masked" not in page.text
    assert "Zyxwarden^Quillon" in page.text and "|0.87|" in page.text and "MSA|AA|CTL-771" in page.text


async def test_filters_narrow_the_log(api: httpx.AsyncClient, person: Person) -> None:
    message_id = await logged(api)
    analyst = await person("analyst")
    rejected = await analyst.get("/console/messages", params={"status": "rejected"})
    assert rejected.status_code == 200 and message_id not in rejected.text
    by_sender = await analyst.get("/console/messages", params={"sender": "nobody"})
    assert message_id not in by_sender.text
    accepted = await analyst.get("/console/messages", params={"status": "accepted", "offset": "0"})
    assert message_id in accepted.text


async def test_a_pharmacist_is_refused_with_a_403_page(api: httpx.AsyncClient, person: Person) -> None:
    message_id = await logged(api)
    practitioner = (await api.post("/fhir/Practitioner", json={"resourceType": "Practitioner"})).json()["id"]
    pharmacist = await person("pharmacist", f"Practitioner/{practitioner}")
    for path in ("/console/messages", f"/console/messages/{message_id}"):
        page = await pharmacist.get(path)
        assert page.status_code == 403 and "Zyxwarden" not in page.text
    refused = await pharmacist.post(f"/console/messages/{message_id}/reprocess", data={"csrf_token": "x"})
    assert refused.status_code == 403


async def test_reprocess_checks_csrf_then_runs_the_message_again(
    api: httpx.AsyncClient, person: Person
) -> None:
    message_id = await logged(api)
    admin = await person("admin")
    page = await admin.get(f"/console/messages/{message_id}")
    assert "Reprocess" in page.text
    refused = await admin.post(f"/console/messages/{message_id}/reprocess", data={"csrf_token": "wrong"})
    assert refused.status_code == 403
    (entry,) = await log_entries(api)
    assert entry["attempts"] == 1
    done = await admin.post(
        f"/console/messages/{message_id}/reprocess", data={"csrf_token": csrf_of(page.text)}
    )
    assert done.status_code == 303, done.text
    assert done.headers["location"] == f"/console/messages/{message_id}?done=reprocess"
    (entry,) = await log_entries(api)
    assert entry["attempts"] == 2 and entry["ackCode"] == "AA"
    assert "processed again" in (await admin.get(done.headers["location"])).text


async def test_an_analyst_reprocesses_as_the_pipeline_and_still_sees_it_masked(
    api: httpx.AsyncClient, person: Person
) -> None:
    """The analyst holds the operation, not the right to write records: the message runs again with the
    pipeline's rights (it writes what its sender sent), and the page they land on is still masked."""
    message_id = await logged(api)
    analyst = await person("analyst")
    page = await analyst.get(f"/console/messages/{message_id}")
    answer = await analyst.post(
        f"/console/messages/{message_id}/reprocess", data={"csrf_token": csrf_of(page.text)}
    )
    assert answer.status_code == 303, answer.text
    (entry,) = await log_entries(api)
    assert entry["attempts"] == 2
    after = await analyst.get(answer.headers["location"])
    assert after.status_code == 200 and "Zyxwarden" not in after.text
    coordinator = await person("coordinator")  # no reprocess operation: refused, nothing run
    refused = await coordinator.post(f"/console/messages/{message_id}/reprocess", data={"csrf_token": "x"})
    assert refused.status_code == 403
    (entry,) = await log_entries(api)
    assert entry["attempts"] == 2
