"""A real HTTP receiver on 127.0.0.1 for subscription notifications (not a mock).

It runs `http.server` in a thread, records every request (headers, body, arrival time) and counts every
connection it accepts (even one that never sends a request), and can be told to answer with an error
status or to go down (its socket closed: connections refused) and come back on the same port. It may
listen on another loopback address (127.0.0.2) and speak TLS (recording the SNI names clients send).
"""

from __future__ import annotations

import socket
import ssl
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson

from gateway.routing.notifications import verify


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes
    at: float  # time.time() on arrival

    @property
    def json(self) -> Any:
        return orjson.loads(self.body)

    @property
    def parameters(self) -> dict[str, Any]:
        status = self.json["entry"][0]["resource"]
        return {p["name"]: p for p in status["parameter"] if p["name"] != "notification-event"}

    @property
    def kind(self) -> str:
        return str(self.parameters["type"]["valueCode"])

    @property
    def event_numbers(self) -> list[int]:
        status = self.json["entry"][0]["resource"]
        return [
            int(next(part["valueString"] for part in p["part"] if part["name"] == "event-number"))
            for p in status["parameter"]
            if p["name"] == "notification-event"
        ]

    def signed_with(self, secret: str) -> bool:
        return verify(self.body, secret, self.headers.get("x-signature", ""))


class Receiver:
    def __init__(self, port: int = 0, host: str = "127.0.0.1", tls: ssl.SSLContext | None = None) -> None:
        self.received: list[Received] = []
        self.connections = 0  # accepted TCP connections, whether or not a request followed
        self.arriving = 0  # requests whose body was read (counted before any delay and answer)
        self.sni: list[str | None] = []  # server names TLS clients asked for
        self.status = 200
        self.delay_s = 0.0
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self.host = host
        self.port = port
        self.tls = tls
        if tls is not None:
            tls.sni_callback = self._note_sni
        self.start()

    def _note_sni(self, _sock: ssl.SSLObject, name: str | None, _context: ssl.SSLContext) -> None:
        with self._lock:
            self.sni.append(name)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                with receiver._lock:
                    receiver.arriving += 1
                if receiver.delay_s:
                    time.sleep(receiver.delay_s)
                status = receiver.status
                if status < 300:
                    with receiver._lock:
                        receiver.received.append(
                            Received(
                                self.path, {k.lower(): v for k, v in self.headers.items()}, body, time.time()
                            )
                        )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

            def setup(self) -> None:
                if receiver.tls is not None:  # the handshake runs in this connection's thread
                    wrapped = receiver.tls.wrap_socket(
                        self.request, server_side=True, do_handshake_on_connect=False
                    )
                    try:
                        wrapped.do_handshake()
                    except OSError:
                        wrapped.close()  # a client that refused the certificate: nothing to serve
                        raise
                    self.request = wrapped
                super().setup()

            def finish(self) -> None:
                super().finish()
                if receiver.tls is not None:
                    self.request.close()  # the server closes the plain socket it accepted, not this one

        return Handler

    def start(self) -> None:
        receiver = self

        class Server(ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

            def get_request(self) -> tuple[socket.socket, Any]:
                accepted = super().get_request()
                with receiver._lock:
                    receiver.connections += 1
                return accepted

            def handle_error(self, request: Any, client_address: Any) -> None:
                pass  # a failed TLS handshake is what some tests expect; keep the output clean

        self._server = Server((self.host, self.port), self._handler())
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Down: the listening socket is closed, so connections are refused."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def url(self, path: str = "/hook", host: str | None = None) -> str:
        scheme = "https" if self.tls is not None else "http"
        return f"{scheme}://{host or self.host}:{self.port}{path}"

    def on(self, path: str) -> list[Received]:
        with self._lock:
            return [r for r in self.received if r.path == path]

    def events(self, path: str) -> list[Received]:
        return [r for r in self.on(path) if r.kind == "event-notification"]

    def wait_for(self, predicate: Any, timeout: float = 10.0) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                return
            time.sleep(0.01)
        raise AssertionError("the receiver did not get what was expected in time")

    async def until(self, predicate: Any, timeout: float = 10.0) -> None:
        """As wait_for, without blocking the event loop the gateway under test runs on."""
        import asyncio

        deadline = time.time() + timeout
        while time.time() < deadline:
            if predicate():
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the receiver did not get what was expected in time")
