"""Browser tests: Debian's Chromium, driven by Playwright, against a real `gateway serve` on SQLite.

Each pytest-xdist worker starts its own server (on a free port, with its own database) and its own
browser, so workers never share a port or a login. Chromium is the system one (`make test` installs it
with apt where missing); Playwright's own browser download is never used. Without Chromium the tests
fail, saying why: they must not skip, since CI has to run them.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, async_playwright

from tests.conftest import TEST_PASSWORD_HASH_COST
from tests.integration.conftest import GATEWAY_BIN, LiveServer, start_server

CHROMIUM = os.environ.get("GATEWAY_TEST_CHROMIUM", "/usr/bin/chromium")
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-output" / "screenshots"


@dataclass(frozen=True)
class Person:
    """A console user made with the CLI, and the password they type."""

    name: str
    password: str
    practitioner: str


@pytest_asyncio.fixture(scope="session")
async def console_server(
    database_url_factory: Callable[[str], Awaitable[str]], tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[LiveServer]:
    """This worker's `gateway serve` on a fresh SQLite database."""
    url = await database_url_factory("sqlite")
    server = await start_server("sqlite", url, tmp_path_factory.mktemp("browser") / "serve.log")
    yield server
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()


@pytest.fixture(scope="session")
def pharmacist(console_server: LiveServer) -> Person:
    """A pharmacist added with `gateway users add ... --password-stdin`, as an operator would."""
    person = Person("Pharm.Browser", f"pw-{uuid.uuid4().hex}", "Practitioner/browser-ph1")
    subprocess.run(
        [GATEWAY_BIN, "users", "add", person.name, "--role", "pharmacist",
         "--practitioner", person.practitioner, "--password-stdin"],
        input=person.password + "\n",
        env={**console_server.env(), "GATEWAY_PASSWORD_HASH_COST": str(TEST_PASSWORD_HASH_COST)},
        capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    return person


@pytest_asyncio.fixture(scope="session")
async def browser() -> AsyncIterator[Browser]:
    """Headless system Chromium (without its sandbox when run as root, which Chromium refuses otherwise)."""
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"The browser tests need Chromium at {CHROMIUM}, which is missing. Install it with "
            "`apt-get install -y --no-install-recommends chromium` (as root; `make test` does it) "
            "or point GATEWAY_TEST_CHROMIUM at one.",
            pytrace=False,
        )
    args = ["--no-sandbox"] if os.geteuid() == 0 else []
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        yield launched
        await launched.close()


@pytest_asyncio.fixture
async def page(browser: Browser, console_server: LiveServer) -> AsyncIterator[Page]:
    """A fresh page in its own context (no cookies from other tests), addressed relative to the server.
    Content-Security-Policy violations the page reports fail the test."""
    context = await browser.new_context(base_url=console_server.base_url)
    opened = await context.new_page()
    violations: list[str] = []
    opened.on(
        "console",
        lambda message: (
            violations.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    yield opened
    await context.close()
    assert not violations, violations


async def screenshot(page: Page, name: str) -> Path:
    """Save the page as test-output/screenshots/<name>.png (for people reviewing a run) and return it."""
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path
