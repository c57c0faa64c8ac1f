"""`gateway demo` as an operator runs it: a real process that serves its own gateway (SQLite) and feeds it
over HTTP, MLLP and its stand-in payer; and `--base-url` against a separately started `gateway serve`
(SQLite and PostgreSQL) with a client made by `gateway clients add`. What the story must leave behind is
read back over the FHIR API with a read-only token."""

from __future__ import annotations

import json
import os
import re
import select
import signal
import subprocess
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from gateway.demo import DemoPayer
from tests.integration.conftest import GATEWAY_BIN, LiveServer, free_ports, start_server

pytestmark = pytest.mark.asyncio(loop_scope="session")

GATEWAY = "https://specialty-gateway.org/fhir"
BCP47 = "urn:ietf:bcp:47"
USPS = "https://www.usps.com/"
# The suite's scrypt cost for client secrets (tests/conftest.py): the demo registers three clients.
ENV = {**os.environ, "GATEWAY_SECRET_HASH_COST": "10"}


def demo_json(process: subprocess.Popen[str], timeout: float = 90.0) -> dict[str, Any]:
    """The summary the demo prints on stdout with --json (one line); its stderr if it ends without one."""
    assert process.stdout is not None
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    line = process.stdout.readline() if ready else ""
    if not line:
        process.kill()
        _, err = process.communicate(timeout=10)
        raise AssertionError(f"gateway demo printed no summary: {err[-3000:]}")
    summary: dict[str, Any] = json.loads(line)
    return summary


def reader(base_url: str, client_id: str, client_secret: str) -> httpx.Client:
    token = httpx.post(
        f"{base_url}/auth/token", data={"grant_type": "client_credentials"}, auth=(client_id, client_secret)
    )
    assert token.status_code == 200, token.text
    return httpx.Client(
        base_url=f"{base_url}/fhir",
        headers={"authorization": f"Bearer {token.json()['access_token']}"},
        timeout=30,
    )


def search(http: httpx.Client, resource_type: str, **params: str) -> list[dict[str, Any]]:
    answer = http.get(f"/{resource_type}", params=params)
    assert answer.status_code == 200, answer.text
    return [e["resource"] for e in answer.json().get("entry", []) if e["search"]["mode"] == "match"]


def moment(text: str) -> datetime:
    """An entry's time; a date (a lab's due date) as its start in UTC."""
    return datetime.fromisoformat((text + "T00:00:00Z" if len(text) == 10 else text).replace("Z", "+00:00"))


def check_story(http: httpx.Client, summary: dict[str, Any], *, prior_auth_source: str) -> None:
    """What the story leaves in the gateway, for Maria (Spanish-speaking, Texas, clozapine)."""
    maria = next(p for p in summary["patients"] if p["key"] == "maria")
    james = next(p for p in summary["patients"] if p["key"] == "james")
    hernandez = next(p for p in summary["pharmacists"] if p["key"] == "hernandez")
    patient = maria["patient"]

    # (1) The gateway assigned her the Spanish-speaking pharmacist licensed in Texas.
    (team,) = search(
        http,
        "CareTeam",
        patient=patient,
        category=f"{GATEWAY}/CodeSystem/care-team-category|pharmacist-assignment",
    )
    assert team["status"] == "active"
    (member,) = [p["member"]["reference"] for p in team["participant"] if not p.get("period", {}).get("end")]
    assert member == hernandez["role"]
    practitioner = http.get(f"/{hernandez['practitioner']}").json()
    assert "es" in [c["coding"][0]["code"] for c in practitioner["communication"]]
    states = [
        sub["valueCodeableConcept"]["coding"][0]
        for q in practitioner["qualification"]
        for ext in q.get("extension", [])
        for sub in ext["extension"]
        if sub["url"] == "whereValid"
    ]
    assert (USPS, "TX") in [(c["system"], c["code"]) for c in states]
    assert maria["assigned"]["practitionerRole"] == hernandez["role"]
    assert maria["ranking"][0]["practitionerRole"] == hernandez["role"]
    assert {"code": "language-match", "text": "speaks es (patient prefers es)"} in maria["ranking"][0][
        "reasons"
    ]
    assert james["assigned"]["name"] == "Andrew Kim"

    # (2) The falling ANC opened the clozapine-anc alert, owned by her pharmacist's role.
    alerts = search(http, "Task", patient=patient, code=f"{GATEWAY}/CodeSystem/work-item-type|alert")
    rule = (f"{GATEWAY}/CodeSystem/alert-rule", "clozapine-anc")
    (alert,) = [a for a in alerts if rule in [(c["system"], c["code"]) for c in a["reasonCode"]["coding"]]]
    assert alert["owner"]["reference"] == hernandez["role"] and alert["status"] == "ready"
    # Her pharmacist's worklist (the link the demo prints) holds it.
    worklist = http.get("/Task/$worklist", params={"owner": hernandez["practitioner"], "patient": patient})
    assert worklist.status_code == 200, worklist.text
    assert [(r["kind"], r["task"]) for r in worklist.json()["rows"]] == [("alert", f"Task/{alert['id']}")]
    assert [r["task"] for r in maria["worklist"]] == [f"Task/{alert['id']}"]
    focus = http.get(f"/{alert['focus']['reference']}").json()
    assert focus["code"]["coding"][0]["code"] == "751-8" and focus["valueQuantity"]["value"] == 1.2

    # (3) The timeline tells the story in order, each step with its source.
    timeline = http.get(f"/{patient}/$timeline", params={"_count": "100"}).json()
    times = [moment(e["time"]) for e in timeline["entries"]]
    assert times == sorted(times)
    # The monitoring calendar's labs: the one due yesterday, completed by the ANC, and the weekly ones ahead.
    due = [e["summary"] for e in timeline["entries"] if e["kind"] == "monitoring-due"]
    assert any(s.endswith("(completed)") for s in due) and len(due) >= 2
    entries = [e for e in timeline["entries"] if e["kind"] not in ("report", "monitoring-due")]
    lab = {"system": "LIS / CENTRAL REFERENCE LAB", "kind": "hl7v2"}
    story = [(e["kind"], e["source"]) for e in entries if e["kind"] != "payer-answer"]
    assert story == [
        ("medication-order", {"system": "EHR / ALAMO HEALTH", "kind": "hl7v2"}),
        ("dispense", {"system": "RXSYS / SPECIALTY RX", "kind": "hl7v2"}),
        ("observation", lab),
        ("observation", lab),
        ("dispense", {"system": "RXSYS / SPECIALTY RX", "kind": "hl7v2"}),
        ("observation", lab),
        ("alert", lab),
        ("pa-task", {"system": None, "kind": "fhir-client"}),
        ("pa-task", {"system": prior_auth_source, "kind": "payer"}),
        ("pa-task", {"system": prior_auth_source, "kind": "payer"}),
        ("interaction", {"system": None, "kind": "fhir-client"}),
    ]
    summaries = [e["summary"] for e in entries if e["kind"] in ("observation", "pa-task")]
    assert [s.split(" in Blood by Automated count ")[1] for s in summaries[:3]] == [
        "2.1 10*3/uL (normal)",
        "1.6 10*3/uL (normal)",
        "1.2 10*3/uL (low)",
    ]
    assert [s.rsplit(", ", 1)[1] for s in summaries[3:]] == ["submitted", "pended", "approved"]
    answers = [e for e in entries if e["kind"] == "payer-answer"]
    submitted = next(moment(e["time"]) for e in entries if e["kind"] == "pa-task")
    assert len(answers) == 2 and all(moment(e["time"]) >= submitted for e in answers)
    assert all(e["source"] == {"system": prior_auth_source, "kind": "payer"} for e in answers)

    # (4) $everything: those resources, and nobody else's.
    everything = http.get(f"/{patient}/$everything", params={"_count": "500"})
    assert everything.status_code == 200, everything.text
    bundle = everything.json()
    held = {f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in bundle["entry"]}
    wanted = {maria["order"], patient, alert_ref(alert), *maria["carePlans"], maria["assigned"]["careTeam"]}
    wanted |= {maria["priorAuthorization"]["task"], maria["intervention"]}
    wanted |= {e["resource"].rsplit("/_history/", 1)[0] for e in timeline["entries"]}
    assert wanted <= held
    assert {"MedicationDispense", "Observation", "ClaimResponse", "Coverage"} <= {
        r.split("/")[0] for r in held
    }
    named = set(re.findall(r"Patient/([A-Za-z0-9.\-]+)", everything.text))
    assert named == {patient.split("/")[1]}


def alert_ref(alert: dict[str, Any]) -> str:
    return f"Task/{alert['id']}"


@pytest.mark.slow
async def test_the_demo_serves_feeds_prints_and_stops_on_ctrl_c(tmp_path: Path) -> None:
    port, mllp_port = free_ports(2)
    process = subprocess.Popen(
        [GATEWAY_BIN, "demo", "--port", str(port), "--mllp-port", str(mllp_port), "--json"],
        cwd=tmp_path,  # its SQLite file and payers file go to ./var here
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        summary = demo_json(process)
        assert summary["gateway"]["baseUrl"] == f"http://127.0.0.1:{port}"
        database = summary["database"].removeprefix("sqlite+aiosqlite:///")
        assert (tmp_path / database).is_file() and Path(database).name.startswith("demo-")
        client = summary["client"]
        assert client["scope"] == "system/*.rs hl7v2/messages.read" and client["client_secret"]
        with reader(summary["gateway"]["baseUrl"], client["client_id"], client["client_secret"]) as http:
            maria = next(p for p in summary["patients"] if p["key"] == "maria")
            task = http.get(f"/{maria['priorAuthorization']['task']}").json()
            payer = task["owner"]["reference"]
            check_story(http, summary, prior_auth_source=payer)
            links = maria["links"]
            assert links["timeline"].endswith(f"/fhir/{maria['patient']}/$timeline")
            worklist = next(v for k, v in links.items() if k.startswith("worklist"))
            assert worklist.endswith(f"/fhir/Task/$worklist?owner={maria['assigned']['practitioner']}")
            # The pharmacist the matching chose sees the clozapine ANC alert at the top of the whole worklist,
            # with the drug, the rule and why it ranks there.
            rows = http.get("/Task/$worklist", params={"owner": maria["assigned"]["practitioner"]}).json()[
                "rows"
            ]
            top = rows[0]
            assert (top["rank"], top["kind"], top["patient"]) == (1, "alert", maria["patient"])
            assert "clozapine" in top["summary"]["drug"].lower() and top["summary"]["rule"] == "clozapine-anc"
            assert top["rankReason"].startswith("moderate severity")
            assert maria["priorAuthorization"]["moves"] == ["submitted", "pended", "approved"]
            assert maria["priorAuthorization"]["number"] == "BHP-PA-00001"
        assert process.poll() is None  # still serving
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=30)
        assert process.returncode == 0, err[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=10)  # and its pipes closed


def run_demo(server: LiveServer, client: dict[str, str], *extra: str) -> dict[str, Any]:
    done = subprocess.run(
        [
            GATEWAY_BIN,
            "demo",
            "--base-url",
            server.base_url,
            "--client-id",
            client["client_id"],
            "--client-secret",
            client["client_secret"],
            "--mllp-port",
            str(server.mllp_port),
            "--json",
            *extra,
        ],
        env=ENV,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary: dict[str, Any] = json.loads(done.stdout)
    return summary


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_the_demo_feeds_a_running_gateway_twice(
    backend: str, database_url_factory: Callable[[str], Awaitable[str]], tmp_path: Path
) -> None:
    server = await start_server(
        backend, await database_url_factory(backend), tmp_path / "gateway.log", env=ENV
    )
    try:
        feeder = server.add_client("system/*.cruds")
        first = run_demo(server, feeder)
        # A second run into the same database: new patients, the same pharmacists, nothing collides.
        second = run_demo(server, feeder)
        assert first["run"] != second["run"]
        assert [p["role"] for p in first["pharmacists"]] == [p["role"] for p in second["pharmacists"]]
        firsts = {p["key"]: p["patient"] for p in first["patients"]}
        assert all(p["patient"] != firsts[p["key"]] for p in second["patients"])
        looker = server.add_client("system/*.rs")
        with reader(server.base_url, looker["client_id"], looker["client_secret"]) as http:
            # The PA answers came through the payer feed (CSV files), as the insurer (the Task's owner).
            maria = next(p for p in second["patients"] if p["key"] == "maria")
            task = http.get(f"/{maria['priorAuthorization']['task']}").json()
            assert maria["priorAuthorization"]["moves"] == ["submitted", "pended", "approved"]
            check_story(http, second, prior_auth_source=task["owner"]["reference"])
            # The first run's Maria keeps her own pharmacist, alert and record.
            earlier = next(p for p in first["patients"] if p["key"] == "maria")
            assert earlier["assigned"]["practitionerRole"] == maria["assigned"]["practitionerRole"]
            assert earlier["alerts"][0]["task"] != maria["alerts"][0]["task"]
    finally:
        server.process.terminate()
        server.process.wait(timeout=30)


@pytest.mark.slow
async def test_with_payer_insurer_the_request_goes_to_the_running_gateways_payer(
    database_url_factory: Callable[[str], Awaitable[str]], tmp_path: Path
) -> None:
    """The running gateway has a payer for the insurer (here the demo's stand-in, behind a payers file): the
    demo's request goes through $request-prior-auth, the HL7 v2 order's prescriber (ORC-12, by NPI) is the
    Claim's provider, and the payer's decision (pended) is left to the payer."""
    insurer = "http://hl7.org/fhir/sid/us-npi|1234567893"
    payer = DemoPayer().start()
    try:
        payers = tmp_path / "payers.yaml"
        payers.write_text(payer.payers_file("acme", insurer))
        env = {**ENV, "GATEWAY_PAYERS_FILE": str(payers), "GATEWAY_DEMO_PAYER_TOKEN": payer.token}
        url = await database_url_factory("sqlite")
        server = await start_server("sqlite", url, tmp_path / "gateway.log", env=env)
        try:
            summary = run_demo(server, server.add_client("system/*.cruds"), "--payer-insurer", insurer)
        finally:
            server.process.terminate()
            server.process.wait(timeout=30)
        assert "$request-prior-auth" in summary["priorAuthorization"]
        maria = next(p for p in summary["patients"] if p["key"] == "maria")
        assert maria["priorAuthorization"]["moves"] == ["submitted", "pended"]
        (claim,) = payer.claims
        assert claim["provider"]["reference"].startswith("Practitioner/")
    finally:
        payer.stop()
