"""Token endpoint abuse: what 25 wrong secrets a second do to everyone else.

A real `gateway serve` per backend. While an attacker POSTs /auth/token with wrong secrets at a fixed pace
(open loop: a request every 40 ms whatever the answers take), an HL7 sender sends one six-OBX ORU^R01 at
a time over MLLP (10 a second) and a monitor GETs /healthz (20 a second); their latencies are the
figures. Scenarios:

- quiet: no attacker (the reference);
- one id, no limits: wrong secrets for one existing client id with the back-off switched off
  (GATEWAY_AUTH_FAILURES_PER_* very high): every request is hashed, which shows where the hashing runs;
- random ids, no limits: a new unknown client id each time (what a client-id prober sends);
- one id, default limits: the back-off as shipped (429 after 5 failures, doubling delays).

Run it against an older checkout to compare (`PYTHONPATH=/path/to/old python -m bench auth`): settings it
does not know are ignored there, so its "no limits" and "default limits" runs are the same.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import httpx

from bench.harness import GATEWAY_BIN, percentile, running_gateway, throwaway_database
from bench.hl7 import _send, six_obx_oru

ATTACK_RATE = 25.0  # wrong secrets per second
MLLP_RATE = 10.0  # messages per second, one connection, each after the previous ACK
HEALTH_RATE = 20.0
HEALTH_TIMEOUT_S = 10.0
WARMUP_S = 3.0
MEASURE_S = 20.0
NO_LIMITS = {
    "GATEWAY_AUTH_FAILURES_PER_CLIENT": "1000000000",
    "GATEWAY_AUTH_FAILURES_PER_ADDRESS": "1000000000",
}


@dataclass
class Figures:
    ack: list[float] = field(default_factory=list)
    health: list[float] = field(default_factory=list)
    token_answers: Counter[int] = field(default_factory=Counter)
    token_latency: list[float] = field(default_factory=list)
    attempts: int = 0
    health_failed: int = 0  # no answer within HEALTH_TIMEOUT_S


def _add_client(database_url: str, env: dict[str, str]) -> dict[str, str]:
    done = subprocess.run(
        [GATEWAY_BIN, "clients", "add", f"bench-{uuid.uuid4().hex[:6]}", "--scope", "system/*.rs", "--json"],
        env={**os.environ, **env, "GATEWAY_DATABASE_URL": database_url},
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    created: dict[str, str] = json.loads(done.stdout)
    return created


async def _paced(rate: float, until: float, action: Callable[[], Awaitable[None]], *, wait: bool) -> None:
    """Call action `rate` times a second until `until`; `wait`: one at a time (closed loop)."""
    interval = 1.0 / rate
    next_at = time.perf_counter()
    pending: set[asyncio.Task[None]] = set()
    while time.perf_counter() < until:
        if wait:
            await action()
        else:
            task = asyncio.create_task(action())
            pending.add(task)
            task.add_done_callback(pending.discard)
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
    if pending:
        await asyncio.wait(pending, timeout=30)


async def _scenario(
    base_url: str, mllp_port: int, attack_as: str | None, figures: Figures, seconds: float
) -> None:
    """One run; `attack_as`: None (no attacker), "random" (a new unknown id each time) or a client id."""
    until = time.perf_counter() + seconds
    counter = iter(range(10**9))

    async def attack(http: httpx.AsyncClient) -> None:
        who = f"probe-{uuid.uuid4().hex[:16]}" if attack_as == "random" else str(attack_as)
        started = time.perf_counter()
        try:
            answer = await http.post(
                f"{base_url}/auth/token",
                data={"grant_type": "client_credentials"},
                auth=(who, "a-wrong-secret"),
                timeout=30,
            )
            figures.token_answers[answer.status_code] += 1
        except httpx.HTTPError:
            figures.token_answers[0] += 1
        figures.token_latency.append(time.perf_counter() - started)
        figures.attempts += 1

    async def health(http: httpx.AsyncClient) -> None:
        started = time.perf_counter()
        try:
            (await http.get(f"{base_url}/healthz", timeout=HEALTH_TIMEOUT_S)).raise_for_status()
        except httpx.HTTPError:
            figures.health_failed += 1
            return
        figures.health.append(time.perf_counter() - started)

    reader, writer = await asyncio.open_connection("127.0.0.1", mllp_port, limit=2**20)

    async def message() -> None:
        started = time.perf_counter()
        ack = await _send(reader, writer, six_obx_oru(next(counter) + 10**6 * int(time.time() % 1000)))
        figures.ack.append(time.perf_counter() - started)
        if b"MSA|AA" not in ack:
            raise RuntimeError(f"message not accepted: {ack[:200]!r}")

    limits = httpx.Limits(max_connections=200)
    async with httpx.AsyncClient(limits=limits) as attacker, httpx.AsyncClient(limits=limits) as monitor:
        jobs = [
            _paced(MLLP_RATE, until, message, wait=True),
            _paced(HEALTH_RATE, until, lambda: health(monitor), wait=False),
        ]
        if attack_as is not None:
            jobs.append(_paced(ATTACK_RATE, until, lambda: attack(attacker), wait=False))
        await asyncio.gather(*jobs)
    writer.close()


def _ms(values: list[float], fraction: float) -> str:
    return f"{percentile(values, fraction) * 1000:.1f}" if values else "-"


async def run_scenario(backend: str, postgres_url: str, attacker: str | None, env: dict[str, str]) -> Figures:
    kek = base64.urlsafe_b64encode(os.urandom(32)).decode()
    full_env = {"GATEWAY_KEY_ENCRYPTION_KEY": kek, **env}
    async with throwaway_database(backend, postgres_url) as url, running_gateway(url, full_env) as server:
        client = _add_client(url, full_env)
        target = client["client_id"] if attacker == "one" else attacker
        await _scenario(server.base_url, server.mllp_port, target, Figures(), WARMUP_S)
        figures = Figures()
        await _scenario(server.base_url, server.mllp_port, target, figures, MEASURE_S)
    return figures


SCENARIOS: list[tuple[str, str | None, dict[str, str]]] = [
    ("quiet", None, {}),
    ("one id, no limits", "one", NO_LIMITS),
    ("random ids, no limits", "random", NO_LIMITS),
    ("one id, default limits", "one", {}),
]


async def run(backends: list[str], postgres_url: str) -> None:
    print(
        f"Token endpoint abuse: {ATTACK_RATE:.0f} wrong secrets/s against /auth/token while one MLLP"
        f" sender sends {MLLP_RATE:.0f} ORU^R01/s and /healthz is polled {HEALTH_RATE:.0f}/s;"
        f" {MEASURE_S:.0f} s each\n"
    )
    header = (
        f"{'backend':<11}{'scenario':<24}{'ACK p50':>8}{'p99':>8}{'max':>8}"
        f"{'healthz p50':>12}{'p99':>8}{'>10s':>5}{'token p50':>10}  token answers"
    )
    print(header + "   (ms)")
    for backend in backends:
        for name, attacker, env in SCENARIOS:
            figures = await run_scenario(backend, postgres_url, attacker, env)
            answers = ", ".join(f"{code} x{count}" for code, count in sorted(figures.token_answers.items()))
            print(
                f"{backend:<11}{name:<24}{_ms(figures.ack, 0.5):>8}{_ms(figures.ack, 0.99):>8}"
                f"{_ms(figures.ack, 1.0):>8}{_ms(figures.health, 0.5):>12}{_ms(figures.health, 0.99):>8}"
                f"{figures.health_failed:>5}{_ms(figures.token_latency, 0.5):>10}  {answers or '-'}",
                flush=True,
            )
