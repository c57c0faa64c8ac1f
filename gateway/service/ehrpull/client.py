"""Reading an upstream EHR's FHIR API as a SMART Backend Services client.

- Tokens: a signed client assertion (RS384/ES384) exchanged with `client_credentials` at the upstream's token
  endpoint; cached until shortly before it expires; a 401 drops it and the request is tried once more.
- Pace: at most `max_requests_per_second` requests per upstream (token requests included), spaced evenly.
- 429/503 with Retry-After: waited out here when short, else `BackOff` tells the poller when to come back.
- Only URLs under the upstream's base are fetched: a `next` link elsewhere would carry our token there.

Exceptions: `UpstreamError` (no usable answer) and its subclass `BackOff` (told to wait).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import time
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import httpx

from gateway.auth.assertions import sign_client_assertion
from gateway.ehr.upstreams import UpstreamConfig
from gateway.fhir import jsonio
from gateway.types import JSON

FHIR_JSON = "application/fhir+json"
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# A Retry-After up to this long is slept through within the poll; longer ends the poll until then.
MAX_INLINE_WAIT_S = 10.0
MAX_INLINE_RETRIES = 3
TOKEN_MARGIN_S = 30.0  # a token this close to expiry is replaced before use: requests take time


class UpstreamError(Exception):
    """No usable answer; `str()` names the status or exception, never content (it may hold PHI)."""


class BackOff(UpstreamError):
    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """Retry-After as seconds from now: delta-seconds or an HTTP-date; None when absent or unreadable."""
    if not value:
        return None
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = email.utils.parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = now if now is not None else datetime.now(UTC).timestamp()
    return max(0.0, when.timestamp() - current)


class Pace:
    """Evenly spaced request slots: at most `per_second` starts per second, shared by all who call `wait`."""

    def __init__(self, per_second: float) -> None:
        self.gap_s = 1.0 / per_second
        self._next = 0.0
        self._lock = asyncio.Lock()

    async def wait(self) -> None:
        async with self._lock:
            now = time.monotonic()
            delay = self._next - now
            self._next = max(now, self._next) + self.gap_s
        if delay > 0:
            await asyncio.sleep(delay)


class UpstreamClient:
    def __init__(self, upstream: UpstreamConfig, http: httpx.AsyncClient) -> None:
        self.upstream = upstream
        self._http = http
        self._pace = Pace(upstream.max_requests_per_second)
        self._key = upstream.auth.private_key_pem() if upstream.auth.type == "backend-services" else b""
        self._token: tuple[str, float] | None = None  # (token, expiry on the monotonic clock)
        self.requests = 0  # requests sent, token requests included (for /metrics)

    def owns(self, url: str) -> bool:
        base = self.upstream.fhir_base
        return url == base or url.startswith(base + "/") or url.startswith(base + "?")

    async def get(self, url: str, params: list[tuple[str, str]] | None = None) -> JSON:
        """A JSON object from GET `url` (under the upstream's base), after auth, pace and short waits."""
        if not self.owns(url):
            raise UpstreamError("a link outside the upstream's base URL")
        for attempt in range(MAX_INLINE_RETRIES + 1):
            response = await self._send(url, params)
            if response.status_code == 401 and self.upstream.auth.type != "none" and attempt == 0:
                self._token = None  # revoked, or the upstream restarted with new keys: one more try
                continue
            if response.status_code in (429, 503):
                wait = retry_after_seconds(response.headers.get("retry-after"))
                wait = self.upstream.interval_seconds if wait is None else wait
                if wait > MAX_INLINE_WAIT_S or attempt == MAX_INLINE_RETRIES:
                    raise BackOff(f"HTTP {response.status_code}, retry after {wait:g} s", wait)
                await asyncio.sleep(wait)
                continue
            if response.status_code != 200:
                raise UpstreamError(f"HTTP {response.status_code}")
            try:
                body = jsonio.loads(response.content)
            except jsonio.JSONDecodeError:
                raise UpstreamError("HTTP 200 without JSON") from None
            if not isinstance(body, dict):
                raise UpstreamError("HTTP 200 without a JSON object")
            return body
        raise UpstreamError("HTTP 401 twice")

    async def post_transaction(self, body: bytes) -> tuple[int, float | None]:
        """POST a transaction Bundle to the base: (status, Retry-After seconds); UpstreamError when no
        HTTP answer came. A 401 drops the token and is tried once more; the caller decides on retries."""
        response = await self._write("POST", self.upstream.fhir_base, body)
        return response.status_code, retry_after_seconds(response.headers.get("retry-after"))

    async def write_resource(self, method: str, url: str, resource: JSON) -> tuple[int, JSON | None]:
        """POST or PUT one resource (the Subscription we keep there): (status, JSON answer or None);
        UpstreamError when no HTTP answer came. A 401 drops the token and is tried once more."""
        if not self.owns(url):
            raise UpstreamError("a URL outside the upstream's base URL")
        response = await self._write(method, url, jsonio.dumps(resource))
        try:
            body = jsonio.loads(response.content) if response.content else None
        except jsonio.JSONDecodeError:
            body = None
        return response.status_code, body if isinstance(body, dict) else None

    async def _write(self, method: str, url: str, body: bytes) -> httpx.Response:
        """Send FHIR JSON with the token, at the upstream's pace; a 401 drops the token, one more try."""
        for attempt in range(2):
            headers = {"Accept": FHIR_JSON, "Content-Type": FHIR_JSON}
            if self.upstream.auth.type == "backend-services":
                headers["Authorization"] = f"Bearer {await self._access_token()}"
            await self._pace.wait()
            self.requests += 1
            try:
                response = await self._http.request(
                    method, url, content=body, headers=headers, timeout=self.upstream.timeout_seconds
                )
            except httpx.HTTPError as exc:
                raise UpstreamError(type(exc).__name__) from None
            if response.status_code == 401 and self.upstream.auth.type != "none" and attempt == 0:
                self._token = None
                continue
            return response
        raise AssertionError("unreachable")

    async def _send(
        self,
        url: str,
        params: list[tuple[str, str]] | None,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        sent = {"Accept": FHIR_JSON, **(headers or {})}
        if self.upstream.auth.type == "backend-services":
            sent["Authorization"] = f"Bearer {await self._access_token()}"
        await self._pace.wait()
        self.requests += 1
        query = tuple(params) if params is not None else None  # a tuple: httpx types lists invariantly
        try:
            return await self._http.request(
                method, url, params=query, headers=sent, timeout=self.upstream.timeout_seconds
            )
        except httpx.HTTPError as exc:
            raise UpstreamError(type(exc).__name__) from None

    async def send(
        self,
        url: str,
        params: list[tuple[str, str]] | None = None,
        *,
        method: str = "GET",
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        """Any answer to a request under the upstream's base (Bulk Data kick-off and status), after auth
        and pace; a 401 drops the token and is tried once more. The caller reads the status."""
        if not self.owns(url):
            raise UpstreamError("a URL outside the upstream's base")
        response = await self._send(url, params, method=method, headers=headers)
        if response.status_code == 401 and self.upstream.auth.type != "none":
            self._token = None
            response = await self._send(url, params, method=method, headers=headers)
        return response

    @contextlib.asynccontextmanager
    async def stream(self, url: str, *, with_token: bool) -> AsyncIterator[httpx.Response]:
        """A streamed GET (a Bulk Data file). Our token goes only to URLs under the upstream's base; a
        file elsewhere is fetched without it, and one that needs it there is refused."""
        owned = self.owns(url)
        if with_token and not owned:
            raise UpstreamError("a file that needs our token is outside the upstream's base")
        headers = {"Accept": "application/fhir+ndjson"}
        if owned and self.upstream.auth.type == "backend-services":
            headers["Authorization"] = f"Bearer {await self._access_token()}"
        await self._pace.wait()
        self.requests += 1
        try:
            async with self._http.stream(
                "GET", url, headers=headers, timeout=self.upstream.timeout_seconds
            ) as response:
                yield response
        except httpx.HTTPError as exc:
            raise UpstreamError(type(exc).__name__) from None

    async def _access_token(self) -> str:
        if self._token is not None and self._token[1] > time.monotonic() + TOKEN_MARGIN_S:
            return self._token[0]
        auth = self.upstream.auth
        assert auth.client_id and auth.token_url
        assertion = sign_client_assertion(
            client_id=auth.client_id,
            token_url=auth.token_url,
            private_key_pem=self._key,
            alg=auth.alg,
            kid=auth.kid,
            now=int(time.time()),
            jti=uuid.uuid4().hex,
        )
        form = {
            "grant_type": "client_credentials",
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": assertion,
        }
        if auth.scope:
            form["scope"] = auth.scope
        await self._pace.wait()
        self.requests += 1
        try:
            response = await self._http.post(auth.token_url, data=form, timeout=self.upstream.timeout_seconds)
        except httpx.HTTPError as exc:
            raise UpstreamError(f"token endpoint: {type(exc).__name__}") from None
        if response.status_code != 200:
            raise UpstreamError(f"token endpoint answered HTTP {response.status_code}")
        try:
            answer = response.json()
            token, lifetime = str(answer["access_token"]), float(answer.get("expires_in", 300))
        except (ValueError, KeyError, TypeError):
            raise UpstreamError("token endpoint gave no access_token") from None
        self._token = (token, time.monotonic() + lifetime)
        return token
