"""Memory soak: six-OBX ORUs over MLLP into one `gateway serve`, its resident memory printed every
10,000 messages. The goal (issue 13): flat after warm-up (no growth beyond 10 %) and under 300 MB per
process. `python -m bench soak [--messages N] [--backends ...]`; 200,000 messages by default.
"""

from __future__ import annotations

import time
from pathlib import Path

from bench.harness import running_gateway, throwaway_database
from bench.server_cpu import _descendants, _oru_load

STEP = 10_000
WARMUP_STEPS = 2  # RSS after this many steps is the baseline the rest is compared with


def rss_mb(pid: int) -> list[float]:
    """Resident memory of each process in the gateway's tree, in MB (the serving process first)."""
    sizes = []
    for each in _descendants(pid):
        try:
            for line in Path(f"/proc/{each}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    sizes.append(int(line.split()[1]) / 1024)
        except OSError:
            continue
    return sizes


async def soak(backend: str, postgres_url: str, messages: int) -> None:
    async with throwaway_database(backend, postgres_url) as url, running_gateway(url) as server:
        pid = server.process.pid
        print(f"{backend}: RSS before any message: {rss_mb(pid)[0]:.0f} MB")
        baseline: float | None = None
        peak = 0.0
        for step in range(messages // STEP):
            started = time.perf_counter()
            await _oru_load(server.mllp_port, step * STEP, STEP)
            rate = STEP / (time.perf_counter() - started)
            sizes = rss_mb(pid)
            serving = sizes[0]
            peak = max(peak, *sizes)
            if step + 1 == WARMUP_STEPS:
                baseline = serving
            growth = "" if baseline is None else f"  {100 * (serving / baseline - 1):+5.1f} % since warm-up"
            print(
                f"{backend}: {(step + 1) * STEP:>7} messages  RSS {serving:6.0f} MB"
                f" (largest process {max(sizes):.0f} MB, {len(sizes)} processes)  {rate:5.0f} msg/s{growth}",
                flush=True,
            )
        print(f"{backend}: largest RSS of any process during the soak: {peak:.0f} MB")


async def run(backends: list[str], postgres_url: str, messages: int = 200_000) -> None:
    print(f"Memory soak: {messages} six-OBX ORUs over MLLP, RSS every {STEP}\n")
    for backend in backends:
        await soak(backend, postgres_url, messages)
