"""Outgoing subscriber connections go to exactly the addresses that passed the endpoint check.

Checking a host name and then letting the HTTP client resolve it again leaves a gap: a DNS answer that
changes in between (DNS rebinding, a TTL of zero) sends the request to an address nobody checked, such
as 127.0.0.1 or a cloud metadata service. So here, for every request:

    resolve the URL's host once -> endpoint_problem(url, answer, allow-list) -> refuse (EndpointRefused)
                                                                            -> or pin (host, port, answer)
    httpcore opens any new connection through _PinnedBackend, which dials only the pinned addresses

TLS is unchanged: httpcore starts TLS with the URL's host name after the TCP connection is open, so SNI
and certificate verification are for the name, whatever address was dialled. Pooled keep-alive
connections were pinned when they were opened, to addresses checked then. The system resolver, proxies
from the environment and redirects are never used.
"""

from __future__ import annotations

import contextvars
import ssl
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass

import httpcore
import httpx

from gateway.routing.endpoints import Allowlist, endpoint_problem

Resolver = Callable[[str], Awaitable[list[str]]]

RESOLVED_FOR_S = 60.0  # how long one answer is used for a host (each use is checked again)


class EndpointRefused(httpx.TransportError):
    """The endpoint failed the check (its URL, or an address its host resolves to); nothing was sent."""


@dataclass(frozen=True, slots=True)
class _Pin:
    host: str
    port: int
    addresses: tuple[str, ...]


# The request being sent in this task and the addresses checked for it. httpcore opens a connection in
# the task that sends the request, so the backend below sees the pin of the request it connects for.
_PIN: contextvars.ContextVar[_Pin | None] = contextvars.ContextVar("endpoint_pin", default=None)


class _PinnedBackend(httpcore.AsyncNetworkBackend):
    """Dials the checked addresses of the request being sent, and nothing else (fails closed)."""

    def __init__(self, inner: httpcore.AsyncNetworkBackend | None = None) -> None:
        self._inner = inner or httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        pin = _PIN.get()
        if pin is None or pin.host != host or pin.port != port:
            raise httpcore.ConnectError(f"no checked address to connect to {host}:{port}")
        failure: Exception = httpcore.ConnectError(f"{host} has no address")
        for address in pin.addresses:
            try:
                return await self._inner.connect_tcp(
                    address, port, timeout=timeout, local_address=local_address, socket_options=socket_options
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                failure = exc  # the next checked address, as a resolver-driven client would
        raise failure

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        raise httpcore.ConnectError("subscriber endpoints are never unix sockets")

    async def sleep(self, seconds: float) -> None:
        await self._inner.sleep(seconds)


class CheckedTransport(httpx.AsyncHTTPTransport):
    """An httpx transport that checks each request's endpoint and connects only where the check said.

    `resolve` and `allowlist` are read on every request (the subscription manager's, so a test or a
    reload that changes them is seen at once).
    """

    def __init__(
        self,
        resolve: Resolver,
        allowlist: Callable[[], Allowlist],
        *,
        verify: ssl.SSLContext | bool = True,
        limits: httpx.Limits = httpx.Limits(max_connections=200),  # noqa: B008 (immutable)
    ) -> None:
        super().__init__(verify=verify, limits=limits, trust_env=False)
        # httpx (pinned <0.29) takes no httpcore network backend, so its pool is rebuilt here exactly as
        # it builds it (same TLS context and limits), plus the pinning backend. The tests that connect
        # through this transport (pinning, TLS name checks) fail if httpx ever stops using `_pool`.
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=httpx.create_ssl_context(verify=verify, trust_env=False),
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=_PinnedBackend(),
        )
        self._resolve = resolve
        self._allowlist = allowlist
        self._answers: dict[str, tuple[float, list[str]]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        host = request.url.raw_host.decode("ascii")  # what httpcore will ask the backend to connect to
        port = request.url.port or (443 if request.url.scheme == "https" else 80)
        addresses = await self._addresses(host)
        problem = endpoint_problem(str(request.url), addresses, self._allowlist())
        if problem is not None:
            raise EndpointRefused(problem, request=request)
        token = _PIN.set(_Pin(host, port, tuple(addresses)))
        try:
            return await super().handle_async_request(request)
        finally:
            _PIN.reset(token)

    async def _addresses(self, host: str) -> list[str]:
        """The host's addresses, one lookup a minute at most (the answer is checked on every use)."""
        cached = self._answers.get(host)
        if cached is None or time.monotonic() - cached[0] > RESOLVED_FOR_S:
            cached = (time.monotonic(), await self._resolve(host))
            self._answers[host] = cached
        return cached[1]
