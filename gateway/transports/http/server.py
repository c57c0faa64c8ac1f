"""uvicorn's server, with something to do as its shutdown begins.

On SIGTERM uvicorn stops accepting, then waits for every answer in progress before the application's
own shutdown runs; an endless answer (a timeline stream) would hold it there. `on_shutdown` runs first:
the gateway ends its open streams, so their answers finish and the connections close.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import uvicorn


class GatewayServer(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_shutdown: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_shutdown = on_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        self.on_shutdown()
        await super().shutdown(sockets)
