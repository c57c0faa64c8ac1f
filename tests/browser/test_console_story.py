"""The console in a real browser, on the data `gateway demo` feeds into a running gateway.

One test, one demo run: the story's pharmacist (the one the gateway assigned to the demo's Spanish-
speaking patient in Texas) logs in and sees the patient's alert; a new ANC sent over MLLP by a lab
appears on the open worklist without a reload; she acknowledges it, opens the patient and sees the value
drawn below the 1500/uL threshold line; a second pharmacist (licensed in California, not on that
patient's care team) cannot open the patient. Screenshots of each page go to test-output/screenshots/.
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

from playwright.async_api import Browser, Page, expect

from gateway.demo.client import Mllp
from gateway.demo.story import Lab, Story
from tests.browser.conftest import Person, screenshot
from tests.conftest import TEST_PASSWORD_HASH_COST
from tests.integration.conftest import GATEWAY_BIN, LiveServer
from tests.integration.test_demo import reader, run_demo


def add_user(server: LiveServer, role: str, practitioner: str | None) -> Person:
    name = f"{role}-{uuid.uuid4().hex[:6]}"
    person = Person(name, f"pw-{uuid.uuid4().hex}", practitioner or "")
    command = [GATEWAY_BIN, "users", "add", name, "--role", role, "--password-stdin"]
    if practitioner:
        command += ["--practitioner", practitioner]
    subprocess.run(
        command, input=person.password + "\n", capture_output=True, text=True, check=True, timeout=60,
        env={**server.env(), "GATEWAY_PASSWORD_HASH_COST": str(TEST_PASSWORD_HASH_COST)},
    )  # fmt: skip
    return person


async def sign_in(page: Page, person: Person) -> None:
    await page.goto("/console/login")
    await page.get_by_label("User name").fill(person.name)
    await page.get_by_label("Password").fill(person.password)
    await page.get_by_role("button", name="Sign in").click()
    # the console's home, or for a role without a worklist its first section
    await expect(page).to_have_url(re.compile(r"/console(/(messages|pa|subscriptions|metrics))?$"))


def new_anc(summary: dict[str, Any], value: str) -> str:
    """An ORU^R01 from the demo's reference lab for the demo's patient: one more ANC, collected now."""
    story = Story(summary["run"], datetime.now(UTC))
    lab = Lab(
        "anc-9", story.maria, datetime.now(UTC) - timedelta(minutes=30), "751-8",
        "Neutrophils [#/volume] in Blood by Automated count", value, "10*3/uL", "1.5-8.0", "L",
        ("57021-8", "CBC W Auto Differential panel - Blood"),
    )  # fmt: skip
    return story.result(lab)


async def test_a_pharmacist_works_a_live_alert_and_a_colleague_cannot_open_the_patient(
    browser: Browser, console_server: LiveServer
) -> None:
    summary = await asyncio.to_thread(run_demo, console_server, console_server.add_client("system/*.cruds"))
    maria = next(p for p in summary["patients"] if p["key"] == "maria")
    kim = next(p for p in summary["pharmacists"] if p["key"] == "kim")
    assert maria["assigned"]["practitioner"] != kim["practitioner"]
    her = add_user(console_server, "pharmacist", maria["assigned"]["practitioner"])
    him = add_user(console_server, "pharmacist", kim["practitioner"])
    patient_id = maria["patient"].split("/", 1)[1]

    context = await browser.new_context(
        base_url=console_server.base_url, viewport={"width": 1280, "height": 900}
    )
    page = await context.new_page()
    await sign_in(page, her)
    alerts = page.locator('tr[data-kind="alert"]')
    await expect(alerts.first).to_be_visible()
    before = await alerts.count()
    await expect(page.locator("#worklist")).to_contain_text("clozapine")
    await screenshot(page, "console-worklist")

    # A lab sends a lower ANC over MLLP; the open page shows the new alert without a reload.
    await page.evaluate("window.stillThisPage = true")
    with Mllp("127.0.0.1", console_server.mllp_port) as mllp:
        assert await asyncio.to_thread(mllp.send, new_anc(summary, "0.8")) == "AA"
    await expect(alerts).to_have_count(before + 1, timeout=15_000)
    assert await page.evaluate("window.stillThisPage === true")
    fresh = alerts.filter(has_text="0.8")
    await expect(fresh).to_have_count(1)
    task = await fresh.get_attribute("data-task")
    assert task is not None and task.startswith("Task/")
    await screenshot(page, "console-worklist-live-alert")

    await fresh.get_by_role("button", name="Acknowledge").click()
    await expect(page.get_by_role("status")).to_have_text("Alert acknowledged.")
    looker = console_server.add_client("system/*.rs")
    with reader(console_server.base_url, looker["client_id"], looker["client_secret"]) as http:
        moved = http.get(f"/{task}").json()
    assert moved["status"] == "in-progress"
    assert moved["owner"]["reference"] in (
        maria["assigned"]["practitioner"],
        maria["assigned"]["practitionerRole"],
    )

    await page.locator(f'tr[data-task="{task}"]').get_by_role("link").click()
    await expect(page).to_have_url(f"/console/patients/{patient_id}")
    await expect(page.get_by_test_id("patient-name")).to_contain_text("Reyes")
    chart = page.locator('[data-rule="clozapine-anc"] svg')
    await expect(chart).to_be_visible()
    line = await chart.locator('.threshold[data-value="1500"] line').bounding_box()
    point = await chart.locator('.point[data-value="0.8"]').bounding_box()
    assert line is not None and point is not None
    assert point["y"] + point["height"] / 2 > line["y"] + line["height"] / 2  # drawn below the line
    await expect(chart.locator('.point[data-value="0.8"]')).to_have_class("point below-threshold")
    await screenshot(page, "console-patient")
    await context.close()

    other = await browser.new_context(
        base_url=console_server.base_url, viewport={"width": 1024, "height": 768}
    )
    colleague = await other.new_page()
    await sign_in(colleague, him)
    await expect(colleague.locator(f'tr[data-task="{task}"]')).to_have_count(0)
    answer = await colleague.goto(f"/console/patients/{patient_id}")
    assert answer is not None and answer.status == 404
    await expect(colleague.get_by_role("heading", level=1)).to_have_text("Patient not found")
    assert "Reyes" not in await colleague.content()
    await screenshot(colleague, "console-patient-refused")
    await other.close()

    # The other pages, on the same data: an admin's PA board, metrics, subscriptions and message log, and
    # an analyst's message log, masked.
    admin = await browser.new_context(
        base_url=console_server.base_url, viewport={"width": 1280, "height": 900}
    )
    boss = await admin.new_page()
    await sign_in(boss, add_user(console_server, "admin", None))
    await boss.goto("/console/pa")
    await expect(boss.get_by_role("heading", level=1)).to_have_text("Prior authorizations")
    await expect(boss.locator("main")).to_contain_text("approved")
    await screenshot(boss, "console-pa-board")
    await boss.goto("/console/metrics")
    await expect(boss.get_by_role("heading", level=1)).to_have_text("Metrics")
    await expect(boss.locator("svg[role=img]").first).to_be_visible()
    await screenshot(boss, "console-metrics")
    await boss.goto("/console/subscriptions")
    await expect(boss.get_by_role("heading", level=1)).to_have_text("Subscriptions")
    await screenshot(boss, "console-subscriptions")
    await admin.close()
    analyst = await browser.new_context(
        base_url=console_server.base_url, viewport={"width": 1280, "height": 900}
    )
    reader_page = await analyst.new_page()
    await sign_in(reader_page, add_user(console_server, "analyst", None))
    await reader_page.goto("/console/messages")
    await expect(reader_page.get_by_role("heading", level=1)).to_have_text("Message log")
    await expect(reader_page.locator("main")).to_contain_text("ORU^R01")
    await screenshot(reader_page, "console-message-log")
    await reader_page.locator('a[href^="/console/messages/"]').first.click()
    await expect(reader_page.locator("main")).to_contain_text("MSH")
    shown = await reader_page.content()
    assert "Reyes" not in shown and "REYES" not in shown  # the patient's name is masked for an analyst
    await screenshot(reader_page, "console-message-masked")
    await analyst.close()
