"""Logging in to the console in a real browser."""

from __future__ import annotations

from playwright.async_api import Page, expect

from gateway.transports.http.console_routes import REFUSED
from tests.browser.conftest import Person, screenshot


async def sign_in(page: Page, name: str, password: str) -> None:
    await page.goto("/console/login")
    await page.get_by_label("User name").fill(name)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()


async def test_pharmacist_signs_in_and_sees_their_name(page: Page, pharmacist: Person) -> None:
    await sign_in(page, pharmacist.name, pharmacist.password)
    await expect(page).to_have_url("/console")
    await expect(page.get_by_role("heading", level=1)).to_have_text("Worklist")
    await expect(page.get_by_test_id("user-name")).to_have_text(pharmacist.name)
    await expect(page.get_by_role("button", name="Sign out")).to_be_visible()
    assert (await screenshot(page, "console-signed-in")).stat().st_size > 0


async def test_wrong_password_shows_the_refusal(page: Page, pharmacist: Person) -> None:
    await sign_in(page, pharmacist.name, pharmacist.password + "-wrong")
    await expect(page.get_by_role("alert")).to_have_text(REFUSED)
    await expect(page.get_by_role("heading", level=1)).to_have_text("Sign in")
    await screenshot(page, "console-login-refused")
