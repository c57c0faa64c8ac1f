"""A bad time zone (a site file's `timezone`, GATEWAY_HL7_DEFAULT_OFFSET) stops the real `gateway serve`
with one line naming it and exit status 1, before the database is touched."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.settings import PROJECT_ROOT


def serve(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """Run `python -m gateway serve` from this checkout on a fresh SQLite file; a start that succeeds
    (which would be the bug) is cut off by the timeout and fails the test."""
    paths = os.pathsep.join(p for p in (str(PROJECT_ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--port",
            "0",
            "--database-url",
            f"sqlite+aiosqlite:///{tmp_path}/tz.db",
        ],
        env={**os.environ, "PYTHONPATH": paths, "GATEWAY_MLLP_ENABLED": "false", **env},
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def the_error(done: subprocess.CompletedProcess[str]) -> str:
    """The one line `serve` failed with (what precedes it on stderr is the INFO log of the start)."""
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    (line,) = [line for line in done.stderr.splitlines() if "configuration:" in line]
    assert done.stderr.strip().endswith(line)
    return line


def test_an_invalid_site_timezone_stops_serve_with_one_line(tmp_path: Path) -> None:
    mappings = tmp_path / "mappings"
    shutil.copytree(PROJECT_ROOT / "mappings", mappings)
    site = mappings / "hl7v2" / "sites" / "example-lab.yaml"
    site.write_text(re.sub(r"(?m)^timezone:.*$", "timezone: Foo/Bar", site.read_text()))
    line = the_error(serve(tmp_path, GATEWAY_MAPPINGS_DIR=str(mappings)))
    assert "example-lab.yaml" in line and "'Foo/Bar'" in line and "America/Chicago" in line  # how to fix it
    assert not (tmp_path / "tz.db").exists()  # refused before the database was created


@pytest.mark.parametrize(
    ("value", "why"),
    [
        ("+25:00", "offsets run from -14:00 to +14:00"),  # no such offset
        ("America/Chicag", "is not an IANA time zone"),  # a typo in a zone name
    ],
)
def test_an_invalid_default_offset_stops_serve_with_one_line(tmp_path: Path, value: str, why: str) -> None:
    line = the_error(serve(tmp_path, GATEWAY_HL7_DEFAULT_OFFSET=value))
    assert f"GATEWAY_HL7_DEFAULT_OFFSET {value!r}" in line and why in line
    assert not (tmp_path / "tz.db").exists()


@pytest.mark.parametrize("value", ["[::1", "hooks.internal:99999", "10.0.0.0/8:443"])
def test_an_unreadable_allowlist_entry_stops_serve_with_one_line(tmp_path: Path, value: str) -> None:
    line = the_error(serve(tmp_path, GATEWAY_SUBSCRIPTION_ALLOWLIST=value))
    assert "GATEWAY_SUBSCRIPTION_ALLOWLIST" in line and repr(value) in line
