"""Talking to payers' PAS APIs over HTTP: tokens, `Claim/$submit`, `Claim/$inquire`.

Answers are classified for the caller, which decides what the Task becomes:
- `Answered`: a 2xx with a response Bundle (the decision is parsed by the PAS adapter);
- `Accepted`: a 2xx without a decision (202 queued, an empty body, or an OperationOutcome with only
  information or warnings): the payer has the request, so it is never sent again; the decision comes
  later by notification or `Claim/$inquire`;
- `Failed`: no usable answer (timeout, connection error, 5xx, 401 after a new token, 408, 429, a 2xx that
  is not JSON, a 2xx OperationOutcome whose errors are all transient): retry later;
- `Refused`: the payer refused the request itself (any other 4xx, or a 2xx OperationOutcome with an
  error or fatal issue that is not transient): the Task becomes rejected-by-payer, is not retried, and
  may be requested again once fixed.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import httpx

from gateway.fhir import jsonio
from gateway.pa.payers import PayerConfig
from gateway.types import JSON

log = logging.getLogger("gateway.payers")

FHIR_JSON = "application/fhir+json"


@dataclass(frozen=True, slots=True)
class Answered:
    body: JSON
    http_status: int
    duration_us: int


@dataclass(frozen=True, slots=True)
class Accepted:
    http_status: int
    duration_us: int
    note: str = ""  # the payer's diagnostics, when it said something (an informational OperationOutcome)


@dataclass(frozen=True, slots=True)
class Failed:
    error: str
    http_status: int | None
    duration_us: int


@dataclass(frozen=True, slots=True)
class Refused:
    error: str
    http_status: int
    body: JSON | None
    duration_us: int


Outcome = Answered | Accepted | Failed | Refused


class PayerClient:
    def __init__(self, http: httpx.AsyncClient | None = None) -> None:
        self._http = http or httpx.AsyncClient(follow_redirects=False)
        self._tokens: dict[str, tuple[str, float]] = {}  # payer -> (token, expiry on the monotonic clock)

    async def close(self) -> None:
        await self._http.aclose()

    async def submit(self, payer: PayerConfig, bundle: bytes, idempotency_key: str) -> Outcome:
        return await self._post(payer, "Claim/$submit", bundle, idempotency_key)

    async def inquire(self, payer: PayerConfig, bundle: bytes, idempotency_key: str) -> Outcome:
        return await self._post(payer, "Claim/$inquire", bundle, idempotency_key)

    async def _post(self, payer: PayerConfig, path: str, body: bytes, key: str) -> Outcome:
        outcome = await self._post_once(payer, path, body, key)
        if (
            isinstance(outcome, Failed)
            and outcome.http_status == 401
            and payer.auth.type == "client-credentials"
        ):
            # The cached token may have been revoked or the payer restarted: one more try with a new one.
            outcome = await self._post_once(payer, path, body, key)
        return outcome

    async def _post_once(self, payer: PayerConfig, path: str, body: bytes, key: str) -> Outcome:
        started = time.perf_counter()

        def elapsed() -> int:
            return int((time.perf_counter() - started) * 1_000_000)

        try:
            headers = {
                "Content-Type": FHIR_JSON,
                "Accept": FHIR_JSON,
                "Idempotency-Key": key,
                **await self._auth_headers(payer),
            }
            response = await self._http.post(
                f"{payer.fhir_base}/{path}", content=body, headers=headers, timeout=payer.timeout_seconds
            )
        except httpx.TimeoutException:
            return Failed(f"no answer within {payer.timeout_seconds:g} s", None, elapsed())
        except (httpx.HTTPError, TokenError) as exc:
            return Failed(f"{type(exc).__name__}: {exc}"[:500], None, elapsed())
        status = response.status_code
        parsed = _json(response)
        if status == 401:
            self._tokens.pop(_token_key(payer), None)  # maybe revoked: fetch a new one next time
        if 200 <= status < 300:
            if parsed is None and (status == 202 or not response.content.strip()):
                return Accepted(status, elapsed())  # taken, no decision yet: sending again would duplicate it
            if parsed is None:
                return Failed(f"HTTP {status} without a FHIR JSON body", status, elapsed())
            if parsed.get("resourceType") == "OperationOutcome":
                return _outcome_answer(parsed, status, elapsed())
            return Answered(parsed, status, elapsed())
        if status >= 500 or status in (401, 408, 429):
            return Failed(f"HTTP {status}{_diagnostics(parsed)}", status, elapsed())
        return Refused(f"HTTP {status}{_diagnostics(parsed)}", status, parsed, elapsed())

    async def _auth_headers(self, payer: PayerConfig) -> dict[str, str]:
        auth = payer.auth
        if auth.type == "static-token":
            return {"Authorization": f"Bearer {auth.static_token()}"}
        if auth.type == "client-credentials":
            return {"Authorization": f"Bearer {await self._token(payer)}"}
        return {}

    async def _token(self, payer: PayerConfig) -> str:
        cached = self._tokens.get(_token_key(payer))
        if cached is not None and cached[1] > time.monotonic() + 10:
            return cached[0]
        auth = payer.auth
        assert auth.token_url and auth.client_id
        form = {"grant_type": "client_credentials"}
        if auth.scope:
            form["scope"] = auth.scope
        response = await self._http.post(
            auth.token_url,
            data=form,
            auth=(auth.client_id, auth.secret() or ""),
            timeout=payer.timeout_seconds,
        )
        if response.status_code != 200:
            raise TokenError(f"token endpoint answered HTTP {response.status_code}")
        try:
            answer = response.json()
            token = str(answer["access_token"])
            lifetime = float(answer.get("expires_in", 300))
        except (ValueError, KeyError, TypeError):
            raise TokenError("token endpoint gave no access_token") from None
        self._tokens[_token_key(payer)] = (token, time.monotonic() + lifetime)
        return token


def _token_key(payer: PayerConfig) -> str:
    return f"{payer.name} {payer.auth.token_url} {payer.auth.client_id}"


class TokenError(Exception):
    pass


def _json(response: httpx.Response) -> JSON | None:
    """The payer's JSON answer, decimals as the payer wrote them (its ClaimResponse is stored as received)."""
    try:
        parsed = jsonio.loads(response.content)
    except jsonio.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) else None


# FHIR issue-type `transient` and the codes under it: the payer may well take the same request later.
TRANSIENT_ISSUES = frozenset(
    {"transient", "lock-error", "no-store", "exception", "timeout", "incomplete", "throttled"}
)


def _outcome_answer(body: JSON, status: int, duration_us: int) -> Outcome:
    """A 2xx whose body is an OperationOutcome: no decision in it. Only information and warnings: the
    payer took the request. Errors: a refusal, unless every one of them is transient (then retry)."""
    issues = [i for i in body.get("issue") or [] if isinstance(i, dict)]
    errors = [i for i in issues if i.get("severity") in ("error", "fatal")]
    said = _diagnostics(body)
    if not errors:
        return Accepted(status, duration_us, said.removeprefix(": "))
    if all(i.get("code") in TRANSIENT_ISSUES for i in errors):
        return Failed(f"HTTP {status} OperationOutcome{said}", status, duration_us)
    return Refused(f"HTTP {status} OperationOutcome{said}", status, body, duration_us)


def _diagnostics(body: JSON | None) -> str:
    if body and body.get("resourceType") == "OperationOutcome":
        texts = [str(i.get("diagnostics") or "") for i in body.get("issue") or [] if isinstance(i, dict)]
        joined = "; ".join(t for t in texts if t)
        return f": {joined[:300]}" if joined else ""
    return ""
