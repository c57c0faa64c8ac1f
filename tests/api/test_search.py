"""Search: the parameters users need, paging, sorting, includes and reporting what was ignored."""

from __future__ import annotations

from typing import Any

import httpx

from tests.factories import GATEWAY, MRN_SYSTEM, lab_observation, medication_request, pa_task, patient


async def create(api: httpx.AsyncClient, resource: dict[str, Any]) -> dict[str, Any]:
    answer = await api.post(f"/fhir/{resource['resourceType']}", json=resource)
    assert answer.status_code == 201, answer.text
    return answer.json()


async def ids(api: httpx.AsyncClient, path: str, **params: str) -> list[str]:
    answer = await api.get(path, params=params)
    assert answer.status_code == 200, answer.text
    return [e["resource"]["id"] for e in answer.json().get("entry", []) if e["search"]["mode"] == "match"]


async def test_search_by_patient_in_every_reference_form(api: httpx.AsyncClient) -> None:
    ann = await create(api, patient("S1"))
    bob = await create(api, patient("S2"))
    mine = await create(api, lab_observation(ann["id"]))
    await create(api, lab_observation(bob["id"]))
    for params in (
        {"patient": ann["id"]},
        {"patient": f"Patient/{ann['id']}"},
        {"subject": f"Patient/{ann['id']}"},
        {"subject:Patient": ann["id"]},
        {"patient": f"http://gateway.test/fhir/Patient/{ann['id']}"},
    ):
        assert await ids(api, "/fhir/Observation", **params) == [mine["id"]], params


async def test_token_search_by_code_system_and_not(api: httpx.AsyncClient) -> None:
    pat = await create(api, patient("S3"))
    hgb = await create(api, lab_observation(pat["id"], code="718-7"))
    anc = await create(api, lab_observation(pat["id"], code="751-8"))
    assert await ids(api, "/fhir/Observation", code="http://loinc.org|718-7") == [hgb["id"]]
    assert await ids(api, "/fhir/Observation", code="718-7") == [hgb["id"]]
    assert await ids(api, "/fhir/Observation", code="http://other.org|718-7") == []
    assert sorted(await ids(api, "/fhir/Observation", code="718-7,751-8")) == sorted([hgb["id"], anc["id"]])
    assert await ids(api, "/fhir/Observation", **{"code:not": "718-7"}) == [anc["id"]]
    assert sorted(await ids(api, "/fhir/Observation", code="http://loinc.org|")) == sorted(
        [hgb["id"], anc["id"]]
    )
    assert await ids(api, "/fhir/Observation", code="|718-7") == []  # the stored coding has a system


async def test_identifier_and_string_search(api: httpx.AsyncClient) -> None:
    found = await create(api, patient("MRN-77", name=[{"family": "Éclair", "given": ["Zoë"]}]))
    await create(api, patient("MRN-78", name=[{"family": "Other"}]))
    assert await ids(api, "/fhir/Patient", identifier=f"{MRN_SYSTEM}|MRN-77") == [found["id"]]
    assert await ids(api, "/fhir/Patient", family="ecl") == [found["id"]]  # prefix, accent- and case-blind
    assert await ids(api, "/fhir/Patient", name="zoe") == [found["id"]]
    assert await ids(api, "/fhir/Patient", **{"family:exact": "ecl"}) == []
    assert await ids(api, "/fhir/Patient", **{"family:exact": "eclair"}) == [found["id"]]
    assert await ids(api, "/fhir/Patient", **{"family:contains": "lai"}) == [found["id"]]


async def test_date_prefixes_compare_ranges(api: httpx.AsyncClient) -> None:
    pat = await create(api, patient("S4"))
    jan = await create(api, lab_observation(pat["id"], effective="2024-01-15T10:00:00Z"))
    mar = await create(api, lab_observation(pat["id"], effective="2024-03-15T10:00:00+02:00"))
    assert await ids(api, "/fhir/Observation", date="2024-01") == [jan["id"]]
    assert await ids(api, "/fhir/Observation", date="ge2024-02-01") == [mar["id"]]
    assert await ids(api, "/fhir/Observation", date="lt2024-02-01") == [jan["id"]]
    assert await ids(api, "/fhir/Observation", date="2024-03-15T08:00:00Z") == [mar["id"]]
    both = await api.get("/fhir/Observation", params=[("date", "ge2024-01-01"), ("date", "le2024-12-31")])
    assert both.json()["total"] == 2
    assert (await api.get("/fhir/Observation", params={"date": "2024-13"})).status_code == 400


async def test_period_and_authored_dates(api: httpx.AsyncClient) -> None:
    pat = await create(api, patient("S5"))
    obs = lab_observation(pat["id"])
    del obs["effectiveDateTime"]
    obs["effectivePeriod"] = {"start": "2024-05-01", "end": "2024-05-10"}
    created = await create(api, obs)
    assert await ids(api, "/fhir/Observation", date="2024-05-05") == []  # eq needs the range inside the day
    assert await ids(api, "/fhir/Observation", date="ge2024-05-05") == [created["id"]]
    assert await ids(api, "/fhir/Observation", date="sa2024-04-30") == [created["id"]]
    order = await create(api, medication_request(pat["id"]))
    assert await ids(api, "/fhir/MedicationRequest", authoredon="2024-02") == [order["id"]]


async def test_id_last_updated_and_sort(api: httpx.AsyncClient) -> None:
    pat = await create(api, patient("S6"))
    first = await create(api, lab_observation(pat["id"], effective="2024-01-01T00:00:00Z"))
    second = await create(api, lab_observation(pat["id"], effective="2023-01-01T00:00:00Z"))
    assert await ids(api, "/fhir/Observation", _id=second["id"]) == [second["id"]]
    assert await ids(api, "/fhir/Observation", _sort="date") == [second["id"], first["id"]]
    assert await ids(api, "/fhir/Observation", _sort="-date") == [first["id"], second["id"]]
    assert await ids(api, "/fhir/Observation", _sort="-_lastUpdated") == [second["id"], first["id"]]
    since = second["meta"]["lastUpdated"]
    assert await ids(api, "/fhir/Observation", _lastUpdated=f"ge{since}") == [second["id"]]
    assert (await api.get("/fhir/Observation", params={"_sort": "status"})).status_code == 400


async def test_paging_follows_next_links_without_gaps_or_repeats(api: httpx.AsyncClient) -> None:
    pat = await create(api, patient("S7"))
    made = {(await create(api, lab_observation(pat["id"], value=float(i))))["id"] for i in range(7)}
    seen: list[str] = []
    page = (await api.get("/fhir/Observation", params={"patient": pat["id"], "_count": "3"})).json()
    assert page["total"] == 7
    while True:
        seen += [e["resource"]["id"] for e in page["entry"]]
        nxt = [link["url"] for link in page["link"] if link["relation"] == "next"]
        if not nxt:
            break
        page = (await api.get(nxt[0])).json()
    assert len(seen) == 7
    assert set(seen) == made


async def test_count_zero_and_summary_count_return_only_the_total(api: httpx.AsyncClient) -> None:
    pat = await create(api, patient("S8"))
    for _ in range(3):
        await create(api, lab_observation(pat["id"]))
    for params in ({"_count": "0"}, {"_summary": "count"}):
        bundle = (await api.get("/fhir/Observation", params=params)).json()
        assert bundle["total"] == 3
        assert bundle.get("entry", []) == []


async def test_include_and_revinclude(api: httpx.AsyncClient) -> None:
    pat = await create(api, patient("S9"))
    obs = await create(api, lab_observation(pat["id"]))
    bundle = (await api.get("/fhir/Observation", params={"_include": "Observation:patient"})).json()
    modes = {(e["resource"]["resourceType"], e["search"]["mode"]) for e in bundle["entry"]}
    assert modes == {("Observation", "match"), ("Patient", "include")}
    assert bundle["total"] == 1
    rev = (
        await api.get("/fhir/Patient", params={"_id": pat["id"], "_revinclude": "Observation:subject"})
    ).json()
    assert [(e["resource"]["id"], e["search"]["mode"]) for e in rev["entry"]] == [
        (pat["id"], "match"),
        (obs["id"], "include"),
    ]
    bad = await api.get("/fhir/Observation", params={"_include": "Observation:code"})
    assert bad.status_code == 400


async def test_chained_search_by_patient_identifier(api: httpx.AsyncClient) -> None:
    pat = await create(api, patient("CHAIN-1"))
    other = await create(api, patient("CHAIN-2"))
    mine = await create(api, lab_observation(pat["id"]))
    await create(api, lab_observation(other["id"]))
    assert await ids(api, "/fhir/Observation", **{"patient.identifier": f"{MRN_SYSTEM}|CHAIN-1"}) == [
        mine["id"]
    ]
    assert await ids(api, "/fhir/Observation", **{"subject:Patient.identifier": "CHAIN-1"}) == [mine["id"]]


async def test_unknown_parameters_are_reported_not_silently_dropped(api: httpx.AsyncClient) -> None:
    lenient = await api.get("/fhir/Patient", params={"shoe-size": "42"})
    assert lenient.status_code == 200
    outcome = [e for e in lenient.json()["entry"] if e["search"]["mode"] == "outcome"]
    assert "shoe-size" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    strict = await api.get("/fhir/Patient", params={"shoe-size": "42"}, headers={"Prefer": "handling=strict"})
    assert strict.status_code == 400


async def test_missing_modifier(api: httpx.AsyncClient) -> None:
    pat = await create(api, patient("S10"))
    plain = await create(api, lab_observation(pat["id"]))
    with_encounter = await create(api, lab_observation(pat["id"], encounter={"reference": "Encounter/e1"}))
    assert await ids(api, "/fhir/Observation", **{"encounter:missing": "true"}) == [plain["id"]]
    assert await ids(api, "/fhir/Observation", **{"encounter:missing": "false"}) == [with_encounter["id"]]


async def test_task_and_medication_request_parameters(api: httpx.AsyncClient) -> None:
    pat = await create(api, patient("S11"))
    order = await create(api, medication_request(pat["id"]))
    task = await create(api, pa_task(pat["id"], order["id"], owner={"reference": "Organization/payer-1"}))
    assert await ids(api, "/fhir/Task", **{"business-status": "submitted"}) == [task["id"]]
    assert await ids(api, "/fhir/Task", focus=f"MedicationRequest/{order['id']}") == [task["id"]]
    assert await ids(api, "/fhir/Task", owner="Organization/payer-1", status="requested") == [task["id"]]
    # The first specialty order with no pharmacist on file opened the patient's unassigned-patient Task.
    work = f"{GATEWAY}/CodeSystem/work-item-type|unassigned-patient"
    (unassigned,) = await ids(api, "/fhir/Task", patient=pat["id"], code=work)
    assert sorted(await ids(api, "/fhir/Task", patient=pat["id"], intent="order")) == sorted(
        [task["id"], unassigned]
    )
    assert await ids(api, "/fhir/Task", **{"business-status": "approved"}) == []
    assert await ids(api, "/fhir/MedicationRequest", intent="order", status="active", patient=pat["id"]) == [
        order["id"]
    ]


async def test_updates_and_deletes_change_what_search_finds(api: httpx.AsyncClient) -> None:
    pat = await create(api, patient("S12"))
    obs = await create(api, lab_observation(pat["id"], code="718-7"))
    changed = {**obs, "code": {"coding": [{"system": "http://loinc.org", "code": "751-8"}]}}
    assert (await api.put(f"/fhir/Observation/{obs['id']}", json=changed)).status_code == 200
    assert await ids(api, "/fhir/Observation", code="718-7") == []
    assert await ids(api, "/fhir/Observation", code="751-8") == [obs["id"]]
    await api.delete(f"/fhir/Observation/{obs['id']}")
    assert await ids(api, "/fhir/Observation", code="751-8") == []


async def test_search_by_post_form(api: httpx.AsyncClient) -> None:
    pat = await create(api, patient("S13"))
    obs = await create(api, lab_observation(pat["id"]))
    answer = await api.post("/fhir/Observation/_search", data={"patient": pat["id"]})
    assert answer.status_code == 200
    assert [e["resource"]["id"] for e in answer.json()["entry"]] == [obs["id"]]


async def test_searches_of_one_shape_share_a_statement_not_their_values(api: httpx.AsyncClient) -> None:
    """A statement is built once per query shape and run with each query's own values (store/search.py):
    the second search of a shape must not see the first one's values, and LIKE's wildcards in a value
    match only themselves."""
    from gateway.store import statements

    percent = await create(api, patient("MRN-91", name=[{"family": "Fifty%_off"}]))
    plain = await create(api, patient("MRN-92", name=[{"family": "Fifty0x0off"}]))
    assert await ids(api, "/fhir/Patient", **{"family:contains": "%_"}) == [percent["id"]]
    assert await ids(api, "/fhir/Patient", **{"family:contains": "0x0"}) == [plain["id"]]
    shapes = len(statements._KEPT)
    for mrn, expected in (("MRN-91", percent), ("MRN-92", plain), ("MRN-93", None)):
        found = await ids(api, "/fhir/Patient", identifier=f"{MRN_SYSTEM}|{mrn}")
        assert found == ([expected["id"]] if expected else [])
    assert len(statements._KEPT) <= shapes + 1  # one shape, three queries
    # `|code` (no system) and `system|code` are two shapes: the first must not reuse the second's SQL.
    assert await ids(api, "/fhir/Patient", identifier="|MRN-91") == []
    assert await ids(api, "/fhir/Patient", identifier=f"{MRN_SYSTEM}|MRN-91") == [percent["id"]]
