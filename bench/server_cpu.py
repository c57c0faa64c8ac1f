"""What the server spends: CPU milliseconds of the gateway's own processes per operation, side by side with
throughput, for the operations issue 13 sets goals for.

- HL7 v2: six-OBX ORU^R01 over MLLP (ACK after commit) from a lean asyncio sender, next to hl7apy's bare
  `parse_message` rate on the same message in the same run.
- FHIR: read, create and search by patient (a page of 20 Observations), each driven by `wrk` (a native load
  generator, so the client costs the shared cores little).

Server CPU is read from /proc (utime + stime of `gateway serve` and every process under it: the
supervisor, its workers and their parse pools), before and after each phase; a phase's figure is the
difference over the operations it completed. The load generator is not counted. On PostgreSQL the
database server's CPU is not counted either (it is another program: its figure is printed apart).
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx

from bench.harness import running_gateway, throwaway_database
from bench.hl7 import hl7apy_parse_rate, six_obx_oru
from bench.store import credentials, observation

WRK = shutil.which("wrk") or "/usr/bin/wrk"
TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")
ORU_MESSAGES = 3000
ORU_WARMUP = 300
ORU_CONNECTIONS = 16
WRK_SECONDS = 10
WRK_CONNECTIONS = 16
PATIENTS = 50  # creates go to these in turn
GOALS_MS = {"oru": 1.0, "read": 0.5, "create": 1.0, "search": 1.5}
# Published CRUD throughput of the fastest FHIR servers (issue 13's figures: about 5,200 requests/s for
# Aidbox and 3,100 for HAPI FHIR, each on 8 vCPU), per core, to set the gateway's rates beside.
PUBLISHED_PER_CORE = {"Aidbox": 5200 / 8, "HAPI FHIR": 3100 / 8}


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            for task in Path(f"/proc/{current}/task").iterdir():
                todo.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def cpu_seconds(pid: int) -> float:
    """utime + stime of `pid` and every live process under it."""
    total = 0.0
    for each in _descendants(pid):
        try:
            fields = Path(f"/proc/{each}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) * TICK_S  # utime, stime (fields 14, 15)
    return total


def postgres_cpu() -> dict[int, float]:
    """CPU seconds of each PostgreSQL server process, by pid (all of them: the benchmark's database is the
    busy one)."""
    found: dict[int, float] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if not (proc / "comm").read_text().startswith(("postgres", "postmaster")):
                continue
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        found[int(proc.name)] = (int(fields[11]) + int(fields[12])) * TICK_S
    return found


def postgres_cpu_between(before: dict[int, float], after: dict[int, float]) -> float:
    """What PostgreSQL spent between two readings: processes that ended in between are not counted (their
    time is gone from /proc), so this is a lower bound, never negative."""
    return sum(max(0.0, spent - before.get(pid, 0.0)) for pid, spent in after.items())


@dataclass
class Phase:
    name: str
    operations: int
    wall_s: float
    server_cpu_s: float
    database_cpu_s: float

    @property
    def per_op_ms(self) -> float:
        return self.server_cpu_s / self.operations * 1000 if self.operations else float("nan")

    @property
    def rate(self) -> float:
        return self.operations / self.wall_s if self.wall_s else 0.0


async def _measured(name: str, pid: int, run: Any) -> Phase:
    cpu0, db0, wall0 = cpu_seconds(pid), postgres_cpu(), time.perf_counter()
    operations = await run()
    wall = time.perf_counter() - wall0
    return Phase(name, operations, wall, cpu_seconds(pid) - cpu0, postgres_cpu_between(db0, postgres_cpu()))


async def _oru_load(port: int, first: int, count: int) -> int:
    next_n = first

    async def connection() -> int:
        nonlocal next_n
        done = 0
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
        try:
            while next_n < first + count:
                n = next_n
                next_n += 1
                writer.write(b"\x0b" + six_obx_oru(n).encode() + b"\x1c\x0d")
                await writer.drain()
                ack = await reader.readuntil(b"\x1c\x0d")
                if b"MSA|AA" not in ack:
                    raise RuntimeError(f"not AA: {ack[:200]!r}")
                done += 1
        finally:
            writer.close()
        return done

    return sum(await asyncio.gather(*[connection() for _ in range(ORU_CONNECTIONS)]))


_REQUESTS = re.compile(r"^\s+(\d+) requests in", re.MULTILINE)
_BAD = re.compile(r"Non-2xx or 3xx responses: (\d+)")


def _wrk(url: str, token: str, script: str | None = None) -> int:
    """Completed requests of a `wrk` run; raises on any non-2xx answer or socket error."""
    command = [
        WRK,
        "-t2",
        f"-c{WRK_CONNECTIONS}",
        f"-d{WRK_SECONDS}s",
        "-H",
        f"Authorization: Bearer {token}",
    ]
    if script:
        command += ["-s", script]
    done = subprocess.run([*command, url], capture_output=True, text=True, check=True)
    bad = _BAD.search(done.stdout)
    if bad or "Socket errors" in done.stdout:
        raise RuntimeError(f"wrk saw errors:\n{done.stdout}")
    requests = _REQUESTS.search(done.stdout)
    if requests is None:
        raise RuntimeError(f"cannot read wrk's output:\n{done.stdout}")
    return int(requests.group(1))


def _post_script(folder: Path, body: str, patients: list[str]) -> str:
    """A wrk script POSTing `body` with its subject taken in turn from `patients` (`{patient}` in it), so
    creates spread over patients as a lab's results do, instead of piling up in one record."""
    path = folder / "post.lua"
    template = body.replace("%", "%%").replace("{patient}", "%s")
    names = ", ".join(f'"{p}"' for p in patients)
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/fhir+json"\n'
        f"local patients = {{{names}}}\n"
        f"local body = [==[{template}]==]\n"
        "local n = 0\n"
        "request = function()\n"
        "  n = n + 1\n"
        "  return wrk.format(nil, nil, nil, string.format(body, patients[(n % #patients) + 1]))\n"
        "end\n"
    )
    return str(path)


async def bench_backend(backend: str, postgres_url: str, workers: int) -> list[Phase]:
    import orjson

    phases: list[Phase] = []
    env = {"GATEWAY_SERVE_WORKERS": str(workers)}
    async with throwaway_database(backend, postgres_url) as url, running_gateway(url, env) as server:
        pid = server.process.pid
        await _oru_load(server.mllp_port, 0, ORU_WARMUP)
        phases.append(
            await _measured("oru", pid, lambda: _oru_load(server.mllp_port, ORU_WARMUP, ORU_MESSAGES))
        )
        auth = await credentials(url, server.base_url)
        async with httpx.AsyncClient(base_url=server.base_url, auth=auth, timeout=60) as http:
            patients = [
                (await http.post("/fhir/Patient", json={"resourceType": "Patient"})).json()["id"]
                for _ in range(PATIENTS)
            ]
            patient = patients[0]
            ids = []
            for n in range(40):
                created = await http.post("/fhir/Observation", json=observation(patient, n))
                created.raise_for_status()
                ids.append(created.json()["id"])
            token = auth.token
        base = server.base_url
        read_url = f"{base}/fhir/Observation/{ids[0]}"
        search_url = f"{base}/fhir/Observation?patient={patient}&_count=20"
        with tempfile.TemporaryDirectory() as folder:
            body = orjson.dumps(observation("{patient}", 99)).decode()
            script = _post_script(Path(folder), body, patients)
            for name, url_, lua in (
                ("read", read_url, None),
                ("create", f"{base}/fhir/Observation", script),
                ("search", search_url, None),
            ):
                _wrk(url_, token, lua)  # warm-up run, not counted

                async def run(u: str = url_, s: str | None = lua) -> int:
                    return await asyncio.to_thread(_wrk, u, token, s)

                phases.append(await _measured(name, pid, run))
    return phases


async def run(backends: list[str], postgres_url: str, workers: int = 1) -> None:
    if not Path(WRK).exists():
        raise SystemExit("wrk is missing: `make bench` installs it (Debian package wrk)")
    parse_rate = hl7apy_parse_rate()
    print(
        f"Server CPU per operation (gateway processes only; --workers {workers}; wrk -c{WRK_CONNECTIONS}"
        f" {WRK_SECONDS} s; ORU: {ORU_MESSAGES} six-OBX messages over {ORU_CONNECTIONS} MLLP connections)"
    )
    print(f"hl7apy bare parse_message of the same ORU: {parse_rate:.0f}/s in this process\n")
    print(f"{'backend':<11}{'operation':<10}{'server CPU/op':>15}{'goal':>9}{'ops/s':>10}{'DB CPU/op':>12}")
    for backend in backends:
        for phase in await bench_backend(backend, postgres_url, workers):
            db = phase.database_cpu_s / phase.operations * 1000 if backend == "postgresql" else float("nan")
            db_cell = f"{db:9.2f} ms" if backend == "postgresql" else "         -"
            print(
                f"{backend:<11}{phase.name:<10}{phase.per_op_ms:12.2f} ms{GOALS_MS[phase.name]:6.1f} ms"
                f"{phase.rate:10.0f}{db_cell:>12}"
            )
            if phase.name == "oru":
                print(f"{'':<21}ORU throughput {phase.rate / parse_rate:.2f}x hl7apy's bare parse rate")
            elif phase.name in ("read", "create"):
                print(f"{'':<21}{_per_core(phase, with_database=backend == 'postgresql')}")


def _per_core(phase: Phase, *, with_database: bool) -> str:
    """The phase's rate per core the gateway and its database kept busy, beside the published figures.

    Cores busy = (gateway CPU + database CPU) / wall time: on a shared two-core machine the load generator
    takes the rest, so dividing by the machine's cores would understate what a core of the gateway does.
    """
    cpu = phase.server_cpu_s + (phase.database_cpu_s if with_database else 0.0)  # SQLite runs in-process
    busy = cpu / phase.wall_s if phase.wall_s else 0.0
    ours = phase.rate / busy if busy else float("nan")
    published = ", ".join(f"{name} {rate:.0f}" for name, rate in PUBLISHED_PER_CORE.items())
    return f"{phase.name}: {ours:.0f}/s per busy core ({busy:.2f} busy); published per core: {published}"
