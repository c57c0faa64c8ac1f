"""`gateway serve --workers N`: N serving processes on one HTTP port and one MLLP port.

Each worker is a whole `gateway serve` (HTTP, MLLP, deliverer, PA worker, EHR puller) that binds both
ports with SO_REUSEPORT; the kernel spreads new connections over the workers, and a connection stays with
the worker that accepted it, so one MLLP connection's messages are still handled one after the other, in
order. Background work is safe in every worker: deliveries, PA submissions, pulls and exports are taken
by leases in the database (README: Architecture). What each process keeps in memory (the login throttle
per address, caches) is per worker.

This process only supervises: it starts the workers, starts a new one when one dies (a worker that dies
within a few seconds of its start, again and again, stops the whole cluster: a port taken, a bad
setting), and on SIGTERM or SIGINT stops them all gracefully (each finishes its requests and messages in
progress) before it exits.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

log = logging.getLogger("gateway.cluster")

STOP_GRACE_S = 30.0  # what a worker gets to finish before it is killed
EARLY_DEATH_S = 5.0  # a worker that dies this soon after its start did not come up
MAX_EARLY_DEATHS = 3  # in a row, then the cluster stops with the reason in the workers' logs
WORKER_INDEX_ENV = "GATEWAY_WORKER_INDEX"


def reuse_port_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on (host, port) that other workers may bind too (SO_REUSEPORT)."""
    family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(address)
    sock.listen(2048)
    sock.setblocking(False)
    return sock


@dataclass
class Worker:
    index: int
    process: subprocess.Popen[bytes]
    started: float = field(default_factory=time.monotonic)


class Supervisor:
    def __init__(self, command: Sequence[str], count: int, env: dict[str, str]) -> None:
        self.command = list(command)
        self.count = count
        self.env = env
        self.workers: dict[int, Worker] = {}
        self._stopping = False
        self._early_deaths = 0

    def _start(self, index: int) -> None:
        env = {**self.env, WORKER_INDEX_ENV: str(index), "GATEWAY_REUSE_PORT": "true"}
        process = subprocess.Popen(self.command, env=env)
        self.workers[index] = Worker(index, process)
        log.info("worker %d started pid=%d", index, process.pid)

    def _request_stop(self, _signum: int, _frame: object) -> None:
        self._stopping = True

    def run(self) -> int:
        """Supervise until told to stop; the exit status (0: stopped on request)."""
        signal.signal(signal.SIGTERM, self._request_stop)
        signal.signal(signal.SIGINT, self._request_stop)
        for index in range(1, self.count + 1):
            self._start(index)
        status = 0
        while not self._stopping:
            time.sleep(0.2)
            for worker in list(self.workers.values()):
                code = worker.process.poll()
                if code is None or self._stopping:
                    continue
                lived = time.monotonic() - worker.started
                log.error("worker %d pid=%d exited with %d", worker.index, worker.process.pid, code)
                self._early_deaths = self._early_deaths + 1 if lived < EARLY_DEATH_S else 0
                if self._early_deaths >= MAX_EARLY_DEATHS:
                    log.error("workers keep dying at start; stopping (see their lines above)")
                    self._stopping, status = True, 1
                    break
                self._start(worker.index)
        self.stop()
        return status

    def stop(self) -> None:
        live = [w for w in self.workers.values() if w.process.poll() is None]
        for worker in live:
            worker.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + STOP_GRACE_S
        for worker in live:
            try:
                worker.process.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %d did not stop within %g s: killed", worker.index, STOP_GRACE_S)
                worker.process.kill()
                worker.process.wait()
        log.info("all %d workers stopped", len(self.workers))


def worker_command(host: str, port: int, mllp_port: int, database_url: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "gateway",
        "serve",
        "--host",
        host,
        "--port",
        str(port),
        "--mllp-port",
        str(mllp_port),
        "--database-url",
        database_url,
        "--workers",
        "1",
    ]


def worker_env() -> dict[str, str]:
    """The workers' environment: ours, with the banner left to the supervisor."""
    return {**os.environ, "GATEWAY_BANNER": "false"}
