"""CPU-heavy parsing off the event loop: a small pool of warm worker processes, with limits.

Why processes: parsing is pure Python, so in a thread it holds the GIL and the event loop still waits
(measured with a 5,000-OBX ORU being translated in a loop beside a server: `/healthz` p99 146 ms with a
thread, 15 ms with a process, 9 ms with neither). A process needs picklable inputs and outputs (message
text in; a prepared `Job`, `CsvResult` or decisions out) and keeps what it loaded at start (mappings,
profiles, the validator's caches) for every later task.

Limits, each a setting:
- `workers` processes, and at most four tasks per process waiting or running at once (callers wait for
  a slot: memory held by waiting inputs stays bounded);
- `worker_timeout_seconds` per task: past it the caller gets `WorkerTimeout` and the pool is replaced (a
  process cannot be interrupted any other way);
- `worker_memory_bytes` of data segment per process (RLIMIT_DATA): a runaway parse raises MemoryError in
  the worker instead of taking the machine's memory.

Workers are spawned (not forked: the server has threads, such as aiosqlite's, that a fork would copy
mid-state) on first use or by `warm()`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import multiprocessing
import random
import resource
import signal
from collections.abc import Awaitable, Callable
from concurrent.futures.process import BrokenProcessPool
from typing import Any, TypeVar

from gateway.settings import Settings

log = logging.getLogger("gateway.workers")

T = TypeVar("T")
TASKS_PER_WORKER = 4

# In a worker process: the server's settings, for code that builds what it needs once (pipeline.py).
_settings: Settings | None = None


class WorkerFailed(Exception):
    """A task could not finish in a worker: it took too long, or its process died."""


class WorkerTimeout(WorkerFailed):
    pass


def worker_settings() -> Settings:
    """The server's settings, in a worker process."""
    if _settings is None:
        raise RuntimeError("not in a gateway worker process")
    return _settings


def _initialize(settings: Settings, memory_bytes: int) -> None:
    global _settings
    _settings = settings
    # Ctrl-C reaches the whole process group: the serving process stops the pool; a worker that took it
    # too would die mid-task with a traceback on the operator's terminal.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if memory_bytes > 0:
        with contextlib.suppress(ValueError, OSError):  # a lower hard limit set by the operator wins
            resource.setrlimit(resource.RLIMIT_DATA, (memory_bytes, memory_bytes))


class Repeating:
    """Runs `round()` at once and then every `interval_s` in a task of its own, until `stop()`; a round that
    fails is logged on `logger` (as `what` failed) and the next one runs as usual. `jitter` (a fraction)
    spreads each wait by up to that much either way: processes that compete for the same leased work on
    the same period would otherwise settle into a phase where one always wins it."""

    def __init__(
        self,
        name: str,
        what: str,
        round_: Callable[[], Awaitable[object]],
        interval_s: float,
        logger: logging.Logger,
        *,
        jitter: float = 0.0,
    ) -> None:
        self.name, self.what, self.round, self.interval_s, self.log = name, what, round_, interval_s, logger
        self.jitter = jitter
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._forever(), name=self.name)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _forever(self) -> None:
        while True:
            try:
                await self.round()
            except Exception:
                self.log.exception("%s failed", self.what)
            spread = random.uniform(-self.jitter, self.jitter) if self.jitter else 0.0
            await asyncio.sleep(self.interval_s * (1 + spread))


class WorkerPool:
    """`await pool.run(function, *args)`: a module-level function run in a worker process."""

    def __init__(
        self,
        settings: Settings,
        *,
        warmers: tuple[Callable[[], None], ...] = (),
    ) -> None:
        self.settings = settings
        self.size = max(1, settings.workers)
        self.timeout = settings.worker_timeout_seconds
        self.memory_bytes = settings.worker_memory_bytes
        self.warmers = warmers  # run once in each new worker by warm(): load mappings, profiles
        self._executor: concurrent.futures.ProcessPoolExecutor | None = None
        self._slots: asyncio.Semaphore | None = None
        self.replaced = 0  # pools replaced after a timeout or a dead worker

    def _pool(self) -> concurrent.futures.ProcessPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ProcessPoolExecutor(
                max_workers=self.size,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_initialize,
                initargs=(self.settings, self.memory_bytes),
            )
        return self._executor

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """`function(*args)` in a worker; its exception is raised here. WorkerFailed when it took longer
        than the timeout or its process died (the pool is replaced either way)."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.size * TASKS_PER_WORKER)
        async with self._slots:
            executor = self._pool()
            future = asyncio.get_running_loop().run_in_executor(executor, function, *args)
            try:
                return await asyncio.wait_for(future, self.timeout)
            except TimeoutError:
                log.error(
                    "worker task %s took longer than %ss; replacing the pool", _name(function), self.timeout
                )
                self._replace(executor)
                raise WorkerTimeout(f"processing took longer than {self.timeout:g} s") from None
            except BrokenProcessPool:
                log.error("a worker process died running %s; replacing the pool", _name(function))
                self._replace(executor)
                raise WorkerFailed("the worker process processing it died") from None

    async def warm(self) -> None:
        """Start every worker and have it load what its tasks need, before the first big message."""
        await asyncio.gather(*(self.run(_warm_all, self.warmers) for _ in range(self.size)))

    def _replace(self, executor: concurrent.futures.ProcessPoolExecutor) -> None:
        if self._executor is not executor:
            return  # already replaced by another caller
        self._executor = None
        self.replaced += 1
        # A running task cannot be cancelled: end its process (the executor's own list of them).
        processes = getattr(executor, "_processes", None) or {}
        for process in list(processes.values()):
            with contextlib.suppress(Exception):
                process.kill()
        executor.shutdown(wait=False, cancel_futures=True)

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None


def _warm_all(warmers: tuple[Callable[[], None], ...]) -> None:
    import time

    for warmer in warmers:
        warmer()
    time.sleep(0.2)  # hold this worker a moment so the next warm task starts another one


def _name(function: Callable[..., Any]) -> str:
    return getattr(function, "__qualname__", repr(function))


__all__ = ["WorkerFailed", "WorkerPool", "WorkerTimeout", "worker_settings"]
