"""uvicorn's server, with something to do as its shutdown begins, and one line when it listens.

On SIGTERM uvicorn stops accepting, then waits for every answer in progress before the application's
own shutdown runs; an endless answer (a timeline stream) would hold it there. `on_shutdown` runs first:
the gateway ends its open streams, so their answers finish and the connections close.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable

import uvicorn

log = logging.getLogger("gateway.http")


class GatewayServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_shutdown = on_shutdown

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:  # uvicorn's own start-up lines are kept below WARNING (gateway/logs.py)
            log.info("http listening on %s:%d", self.config.host, self.config.port)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.on_shutdown()
        await super().shutdown(sockets)
