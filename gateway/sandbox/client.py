"""How the runner reaches a FHIR server: httpx with timeouts, an optional bearer token, every exchange
handed to a recorder.

The token is either given (`--token`) or fetched with client credentials (client_secret_basic) from the
token endpoint that the server's `/.well-known/smart-configuration` names, as SMART Backend Services do.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import httpx

from gateway.fhir import jsonio

JSON = dict[str, Any]
FHIR_JSON = "application/fhir+json"
# `Patient/123`, or HAPI's `http://host/baseR4/Patient/123/_history/1`
_LOCATION = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?/?$")


class SandboxError(Exception):
    """A request the server refused or could not be reached for; the text says which and why."""


def location_id(location: str | None, rtype: str) -> str | None:
    """The id in a Location (or Content-Location) header, if it names a resource of `rtype`."""
    found = _LOCATION.search((location or "").split("?", 1)[0])
    return found.group(2) if found and found.group(1) == rtype else None


def problem(response: httpx.Response) -> str:
    """What went wrong, short: an OperationOutcome's diagnostics or the start of the body."""
    try:
        body = response.json()
    except ValueError:
        return f"HTTP {response.status_code} {response.text[:200]}".strip()
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        texts = [str(i.get("diagnostics") or i.get("code")) for i in body.get("issue") or []]
        return f"HTTP {response.status_code} " + "; ".join(texts)[:300]
    return f"HTTP {response.status_code} {response.text[:200]}"


class Server:
    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        timeout: float = 30.0,
        record: Callable[[httpx.Response], None] | None = None,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base = base_url.rstrip("/")
        self.token = token
        self._record = record
        self._http = httpx.Client(timeout=timeout, transport=transport, follow_redirects=False)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def url(self, path: str) -> str:
        return path if path.startswith(("http://", "https://")) else f"{self.base}/{path.lstrip('/')}"

    def request(
        self,
        method: str,
        path: str,
        *,
        body: JSON | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        sent = {"accept": FHIR_JSON, **(headers or {})}
        if self.token and "auth" not in kwargs:
            sent["authorization"] = f"Bearer {self.token}"
        if body is not None:
            kwargs["content"] = jsonio.dumps(body)  # decimals as written (1.20 stays 1.20)
            sent["content-type"] = FHIR_JSON
        try:
            response = self._http.request(method, self.url(path), params=params, headers=sent, **kwargs)
        except httpx.HTTPError as exc:
            raise SandboxError(f"{method} {path}: {type(exc).__name__} {exc}") from None
        if self._record is not None:
            self._record(response)
        return response

    def json(self, response: httpx.Response) -> JSON:
        try:
            body = response.json()
        except ValueError:
            raise SandboxError(f"{response.request.url.path}: the answer is not JSON") from None
        if not isinstance(body, dict):
            raise SandboxError(f"{response.request.url.path}: the answer is not a JSON object")
        return body

    def fetch_token(self, client_id: str, client_secret: str) -> str:
        """A client-credentials token from the endpoint the SMART configuration names."""
        found = self.request("GET", ".well-known/smart-configuration")
        if found.status_code != 200:
            raise SandboxError(f"no SMART configuration: {problem(found)}")
        endpoint = self.json(found).get("token_endpoint")
        if not isinstance(endpoint, str):
            raise SandboxError("the SMART configuration names no token_endpoint")
        answer = self.request(
            "POST",
            endpoint,
            data={"grant_type": "client_credentials"},
            auth=(client_id, client_secret),
            headers={"accept": "application/json"},
        )
        if answer.status_code != 200:
            raise SandboxError(f"the token endpoint refused the client: {problem(answer)}")
        token = self.json(answer).get("access_token")
        if not isinstance(token, str):
            raise SandboxError("the token endpoint answered no access_token")
        self.token = token
        return endpoint
