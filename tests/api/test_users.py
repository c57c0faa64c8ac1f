"""`gateway users add|list|disable|enable|reset-password` on both backends: argon2id hashes at rest, passwords
never taken as arguments nor shown, clear refusals."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable

import argon2
import pytest_asyncio
from click.testing import CliRunner, Result

from gateway.auth.passwords import verify_password
from gateway.cli import main
from gateway.store.database import Database
from gateway.store.users import UserRecord, get_user
from tests.conftest import TEST_PASSWORD_HASH_COST

ENV = {"GATEWAY_PASSWORD_HASH_COST": str(TEST_PASSWORD_HASH_COST)}
PASSWORD = "clozapine-anc-1500"


@pytest_asyncio.fixture
async def url(database_url_factory: Callable[[str], Awaitable[str]], backend: str) -> str:
    return await database_url_factory(backend)


async def gateway_cmd(url: str, *args: str, stdin: str | None = None) -> Result:
    """Run the command in a thread (it runs its own event loop)."""
    runner = CliRunner()
    return await asyncio.to_thread(runner.invoke, main, [*args, "--database-url", url], stdin, env=ENV)


async def stored(url: str, name: str) -> UserRecord | None:
    db = Database(url)
    try:
        async with db.read() as conn:
            return await get_user(conn, name)
    finally:
        await db.dispose()


async def listed(url: str) -> list[dict[str, object]]:
    result = await gateway_cmd(url, "users", "list", "--json")
    assert result.exit_code == 0, result.output
    return list(json.loads(result.output))


async def test_add_list_disable_and_reset_password(url: str) -> None:
    added = await gateway_cmd(
        url, "users", "add", "Pharm.One", "--role", "pharmacist", "--practitioner", "Practitioner/ph1",
        "--password-stdin", stdin=PASSWORD + "\n",
    )  # fmt: skip
    assert added.exit_code == 0, added.output
    # Typed at the hidden prompt, twice.
    prompted = await gateway_cmd(url, "users", "add", "audit", "--role", "auditor", stdin=f"{PASSWORD}\n" * 2)
    assert prompted.exit_code == 0, prompted.output
    for result in (added, prompted):
        assert PASSWORD not in result.output
    assert await listed(url) == [
        {"name": "audit", "role": "auditor", "practitioner": None, "disabled": False},
        {"name": "Pharm.One", "role": "pharmacist", "practitioner": "Practitioner/ph1", "disabled": False},
    ]
    text = await gateway_cmd(url, "users", "list")
    assert "Pharm.One  pharmacist  Practitioner/ph1  [enabled]" in text.output

    record = await stored(url, "pharm.one")  # names are found ignoring case
    assert record is not None and record.name == "Pharm.One"
    assert argon2.extract_parameters(record.password_hash).type is argon2.Type.ID
    assert record.password_hash.startswith("$argon2id$") and PASSWORD not in record.password_hash
    assert verify_password(PASSWORD, record.password_hash)
    assert record.failed_logins == 0 and record.locked_until_us is None
    assert record.created_us == record.updated_us == record.password_changed_us
    for result in (text, await gateway_cmd(url, "users", "list", "--json")):
        assert record.password_hash not in result.output and "argon2" not in result.output

    disabled = await gateway_cmd(url, "users", "disable", "PHARM.ONE")
    assert disabled.exit_code == 0 and "disabled Pharm.One" in disabled.output
    assert [u["disabled"] for u in await listed(url)] == [False, True]

    new_password = "a new and longer passphrase"
    reset = await gateway_cmd(
        url, "users", "reset-password", "pharm.one", "--password-stdin", stdin=new_password
    )
    assert reset.exit_code == 0, reset.output
    assert new_password not in reset.output
    after = await stored(url, "Pharm.One")
    assert after is not None and after.password_hash != record.password_hash
    assert verify_password(new_password, after.password_hash)
    assert not verify_password(PASSWORD, after.password_hash)
    assert after.password_changed_us > record.password_changed_us
    assert after.disabled  # a reset does not enable the user again

    enabled = await gateway_cmd(url, "users", "enable", "pharm.one")
    assert enabled.exit_code == 0 and "enabled Pharm.One" in enabled.output
    assert [u["disabled"] for u in await listed(url)] == [False, False]
    unknown = await gateway_cmd(url, "users", "enable", "nobody")
    assert unknown.exit_code == 1 and unknown.output.count("\n") == 1


async def test_a_password_cannot_be_given_as_an_argument(url: str) -> None:
    for args in (
        ("users", "add", "alice", "--role", "admin", "--password", PASSWORD),
        ("users", "add", "alice", "--role", "admin", PASSWORD),
        ("users", "add", "alice", "--role", "admin", f"--password={PASSWORD}"),
        ("users", "reset-password", "alice", PASSWORD),
    ):
        result = await gateway_cmd(url, *args, stdin="")
        assert result.exit_code == 2, result.output
        assert "No such option" in result.output or "unexpected extra argument" in result.output
    assert await listed(url) == []


async def test_refusals_are_one_clear_line(url: str) -> None:
    ok = await gateway_cmd(
        url, "users", "add", "alice", "--role", "admin", "--password-stdin", stdin=PASSWORD
    )
    assert ok.exit_code == 0, ok.output
    cases = [
        (("add", "ALICE", "--role", "analyst"), PASSWORD, "a user named 'ALICE' already exists"),
        (("add", "bob", "--role", "nurse"), PASSWORD, "unknown role 'nurse'"),
        (("add", "bob", "--role", "pharmacist"), PASSWORD, "a pharmacist needs --practitioner"),
        (("add", "bob", "--role", "admin", "--practitioner", "Patient/1"), PASSWORD, "Practitioner/ID"),
        (("add", "bob", "--role", "admin"), "short", "at least 12 characters"),
        (("add", "bob.the.builder", "--role", "admin"), "Bob.The.Builder", "must not be the user name"),
        (("add", "bob", "--role", "admin"), "", "no password on standard input"),
        (("add", "bob smith", "--role", "admin"), PASSWORD, "not usable"),
        (("disable", "nobody"), None, "no user named 'nobody'"),
        (("reset-password", "nobody"), PASSWORD, "no user named 'nobody'"),
        (("reset-password", "alice"), "alice", "at least 12 characters"),
    ]
    for args, password, message in cases:
        stdin_flag = ("--password-stdin",) if password is not None else ()
        result = await gateway_cmd(url, "users", *args, *stdin_flag, stdin=password)
        assert result.exit_code == 1, (args, result.output)
        assert result.output.strip() == f"Error: {message}" or (
            result.output.startswith("Error: ")
            and message in result.output
            and result.output.count("\n") == 1
        ), result.output
        if password and len(password) > 5:
            assert password not in result.output
    assert [u["name"] for u in await listed(url)] == ["alice"]
    before = await stored(url, "alice")
    assert before is not None and verify_password(PASSWORD, before.password_hash)  # the refused reset kept it


async def test_mismatched_prompt_confirmation_stores_nothing(url: str) -> None:
    result = await gateway_cmd(
        url, "users", "add", "carol", "--role", "coordinator", stdin=f"{PASSWORD}\nsomething-else-entirely\n"
    )
    assert result.exit_code != 0
    assert PASSWORD not in result.output
    assert await listed(url) == []
