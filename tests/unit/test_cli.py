"""The `gateway` command line: client registration and the serve banner."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from gateway.cli import _banner, main
from gateway.settings import Settings


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args))
    return result.exit_code, result.output


def test_clients_add_list_remove(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    code, out = run(
        "clients", "add", "lab-feed", "--scope", "system/Observation.cruds", "--json", "--database-url", url
    )
    assert code == 0, out
    created = json.loads(out)
    assert created["name"] == "lab-feed" and len(created["client_secret"]) >= 32
    code, out = run("clients", "list", "--json", "--database-url", url)
    listed = json.loads(out)
    assert [c["client_id"] for c in listed] == [created["client_id"]]
    assert created["client_secret"] not in out  # secrets are never shown again
    assert run("clients", "remove", "lab-feed", "--database-url", url)[0] == 0
    assert json.loads(run("clients", "list", "--json", "--database-url", url)[1]) == []


def test_clients_add_refuses_bad_scopes_and_duplicates(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    code, out = run("clients", "add", "x", "--scope", "system/Observation.sr", "--database-url", url)
    assert code != 0 and "system/Observation.sr" in out
    assert run("clients", "add", "x", "--scope", "system/*.rs", "--database-url", url)[0] == 0
    code, out = run("clients", "add", "x", "--scope", "system/*.rs", "--database-url", url)
    assert code != 0 and "already exists" in out


def test_environment_supplies_options(tmp_path: Path, monkeypatch: object) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/env.db"
    result = CliRunner().invoke(
        main, ["clients", "add", "env-client", "--scope", "system/*.rs"], env={"GATEWAY_DATABASE_URL": url}
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "env.db").exists()


def test_serve_banner_says_where_everything_is() -> None:
    banner = _banner(Settings(host="127.0.0.1", port=8080))
    for part in ("http://127.0.0.1:8080/fhir", "/docs", "/healthz", "clients add", "/auth/token"):
        assert part in banner


def test_a_bad_payers_file_is_one_clear_line_and_a_failed_exit(tmp_path: Path) -> None:
    payers = tmp_path / "payers.yaml"
    payers.write_text("payers:\n  - name: acme\n    base_url: https://pas.acme.example/fhir\n")
    message = tmp_path / "msg.hl7"
    message.write_text("MSH|^~\\&|A|B|C|D|20240101||ADT^A04|1|P|2.5.1\r")
    result = CliRunner().invoke(
        main,
        ["ingest", str(message), "--database-url", f"sqlite+aiosqlite:///{tmp_path}/p.db"],
        env={"GATEWAY_PAYERS_FILE": str(payers)},
    )
    assert result.exit_code == 1
    assert "configuration:" in result.output and "payers[0]: insurers: Field required" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "p.db").exists()  # refused before the database was touched


def test_clients_disable_and_enable(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/cli.db"
    assert run("clients", "add", "pharmacy", "--scope", "system/*.rs", "--database-url", url)[0] == 0
    code, out = run("clients", "disable", "pharmacy", "--database-url", url)
    assert code == 0, out
    listed = json.loads(run("clients", "list", "--json", "--database-url", url)[1])
    assert [(c["name"], c["state"]) for c in listed] == [("pharmacy", "disabled")]
    assert run("clients", "enable", "pharmacy", "--database-url", url)[0] == 0
    listed = json.loads(run("clients", "list", "--json", "--database-url", url)[1])
    assert [(c["name"], c["state"]) for c in listed] == [("pharmacy", "enabled")]
    code, out = run("clients", "disable", "nobody", "--database-url", url)
    assert code != 0 and "nobody" in out


def test_keys_rotate_and_list_never_show_key_material(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path}/keys.db"
    code, out = run("keys", "rotate", "--database-url", url)
    assert code == 0, out
    code, out = run("keys", "rotate", "--database-url", url)
    assert code == 0, out
    code, out = run("keys", "list", "--json", "--database-url", url)
    assert code == 0, out
    keys = json.loads(out)
    # The first rotation of an empty key ring makes its first key; the second retires it with an overlap.
    assert [k["state"] for k in keys] == ["previous", "current"]
    for key in keys:
        assert set(key) == {"kid", "created", "state", "retire_after", "retired"}
    code, text_out = run("keys", "list", "--database-url", url)
    assert code == 0 and keys[-1]["kid"] in text_out and "current" in text_out
    # A key thought compromised: its tokens are refused at once instead of running out.
    code, out = run("keys", "rotate", "--retire-previous-now", "--database-url", url)
    assert code == 0 and "retired now" in out
    keys = json.loads(run("keys", "list", "--json", "--database-url", url)[1])
    assert [(k["kid"], k["state"]) for k in keys] == [
        ("k1", "previous"),
        ("k2", "retired"),
        ("k3", "current"),
    ]


def test_a_key_encryption_key_that_does_not_open_the_keys_is_one_line_and_a_failed_exit(
    tmp_path: Path,
) -> None:
    from gateway.auth.key_encryption import new_key_text

    url = f"sqlite+aiosqlite:///{tmp_path}/kek.db"
    assert run("keys", "rotate", "--database-url", url)[0] == 0
    result = CliRunner().invoke(
        main, ["keys", "rotate", "--database-url", url], env={"GATEWAY_KEY_ENCRYPTION_KEY": new_key_text()}
    )
    assert result.exit_code == 1
    assert "key encryption:" in result.output and "not configured" in result.output
    assert "Traceback" not in result.output
    result = CliRunner().invoke(
        main, ["keys", "list"], env={"GATEWAY_DATABASE_URL": url, "GATEWAY_KEY_ENCRYPTION_KEY": "c2hvcnQ="}
    )
    assert result.exit_code == 1 and "32 bytes" in result.output


def test_serve_runs_on_the_configured_event_loop() -> None:
    import asyncio

    from gateway.cli import _run_loop

    seen: list[str] = []

    async def which() -> None:
        seen.append(type(asyncio.get_running_loop()).__module__)

    _run_loop(Settings(event_loop="uvloop"), which())
    _run_loop(Settings(event_loop="asyncio"), which())
    assert seen[0].startswith("uvloop") and seen[1].startswith("asyncio")
    assert Settings().event_loop == "uvloop"  # the default


def test_serve_uses_the_configured_http_parser_with_its_header_deadline() -> None:
    from uvicorn.protocols.http.h11_impl import H11Protocol
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from gateway.transports.http.header_timeout import with_header_timeout

    fast, plain = with_header_timeout(3.0, "httptools"), with_header_timeout(4.0, "h11")
    assert issubclass(fast, HttpToolsProtocol) and fast.timeout == 3.0
    assert issubclass(plain, H11Protocol) and plain.timeout == 4.0
    assert Settings().http_parser == "httptools"  # the default
