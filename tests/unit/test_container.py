"""The image and the compose file: docker-compose accepts the file and builds the gateway from the
Dockerfile (nothing installed at container start); the Dockerfile is multi-stage, non-root, health-checked.

Images cannot be pulled or built on these machines (no registry access): README, "Docker", says how.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = os.environ.get("GATEWAY_TEST_COMPOSE", "/usr/bin/docker-compose")


def compose_config(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [COMPOSE, "--project-directory", str(folder), "-f", str(folder / "docker-compose.yml"), "config"],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_docker_compose_accepts_the_file_and_builds_the_gateway_image() -> None:
    done = compose_config(ROOT)
    assert done.returncode == 0, done.stderr
    config = yaml.safe_load(done.stdout)
    gateway = config["services"]["gateway"]
    assert Path(gateway["build"]["context"]) == ROOT
    assert "command" not in gateway  # the image's own `gateway serve`, no install at start
    assert gateway["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert gateway["environment"]["GATEWAY_DATABASE_URL"].startswith("postgresql+asyncpg://")


def test_docker_compose_refuses_a_broken_file(tmp_path: Path) -> None:
    broken = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    broken["services"]["gateway"]["helthcheck"] = {"test": ["CMD", "true"]}  # misspelt key
    (tmp_path / "docker-compose.yml").write_text(yaml.safe_dump(broken))
    done = compose_config(tmp_path)
    assert done.returncode != 0
    assert "helthcheck" in done.stderr


def _stages(dockerfile: str) -> list[list[str]]:
    stages: list[list[str]] = []
    logical = dockerfile.replace("\\\n", " ")
    for line in logical.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_the_dockerfile_builds_a_wheel_and_runs_it_unprivileged_with_a_health_check() -> None:
    build, runtime = _stages((ROOT / "Dockerfile").read_text())
    assert any(line.startswith("COPY profiles") for line in build)
    assert any(line.startswith("COPY mappings") for line in build)
    assert any("pip wheel" in line for line in build)
    assert not any(line.startswith(("COPY gateway", "COPY profiles", "COPY mappings")) for line in runtime)
    users = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    health = [line for line in runtime if line.startswith("HEALTHCHECK ")]
    assert health and "/healthz" in health[0]
    assert runtime[-1].startswith("CMD") and "serve" in runtime[-1]
