"""How the demo reaches a gateway: as any client would, over its public interfaces.

- `Api`: the HTTP API with an OAuth 2.0 client-credentials token from `POST /auth/token` (fetched again
  once when a request is answered 401, e.g. after the token expired);
- `Mllp`: HL7 v2 over MLLP with python-hl7's `MLLPClient`, one connection for the whole feed, one ACK
  awaited per message.

Errors are `DemoError`s whose text says what was sent and what came back (the gateway's OperationOutcome
diagnostics or the ACK's MSA/ERR); they are for the operator's terminal, never logged.
"""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from hl7.client import MLLPClient

JSON = dict[str, Any]
FHIR_JSON = "application/fhir+json"
START_BLOCK, END_BLOCK = b"\x0b", b"\x1c\x0d"


class DemoError(Exception):
    """A step of the demo that the gateway refused or could not be reached for."""


def next_second() -> None:
    """Waits until the wall clock's next whole second. The gateway writes a PA Task's times to the second,
    and alerts and recorded versions to the microsecond: steps of the story that happen today wait for the
    next second, so the patient's timeline shows them in the order they happened."""
    time.sleep(1.01 - time.time() % 1)


def gateway_root(base_url: str) -> str:
    """The gateway's root URL from what an operator may type: `http://host:8080`, with or without `/fhir`."""
    root = base_url.strip().rstrip("/")
    if root.endswith("/fhir"):
        root = root[: -len("/fhir")]
    if not root.startswith(("http://", "https://")):
        raise DemoError(f"--base-url must be an http(s) URL, not {base_url!r}")
    return root


def _problem(response: httpx.Response) -> str:
    """The diagnostics of an OperationOutcome (or the start of any other body)."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:300]
    if isinstance(body, dict) and body.get("resourceType") == "OperationOutcome":
        texts = [str(i.get("diagnostics") or i.get("code")) for i in body.get("issue") or []]
        return "; ".join(texts)[:600]
    if isinstance(body, dict) and "error" in body:
        return f"{body.get('error')}: {body.get('error_description', '')}"
    return response.text[:300]


class Api:
    def __init__(self, base_url: str, client_id: str, client_secret: str, *, timeout: float = 30.0) -> None:
        self.root = gateway_root(base_url)
        self.fhir = f"{self.root}/fhir"
        self._credentials = (client_id, client_secret)
        self._http = httpx.Client(base_url=self.root, timeout=timeout)
        self._token: str | None = None

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Api:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def token(self) -> str:
        """An access token for the client (client_secret_basic)."""
        try:
            answer = self._http.post(
                "/auth/token", data={"grant_type": "client_credentials"}, auth=self._credentials
            )
        except httpx.HTTPError as exc:
            raise DemoError(f"cannot reach {self.root}/auth/token: {exc}") from None
        if answer.status_code != 200:
            raise DemoError(
                f"{self.root}/auth/token refused the client: HTTP {answer.status_code} {_problem(answer)}"
            )
        token = answer.json().get("access_token")
        if not isinstance(token, str):
            raise DemoError(f"{self.root}/auth/token answered no access_token")
        self._token = token
        return token

    def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        text: str | None = None,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200, 201),
    ) -> httpx.Response:
        """One request with the bearer token; a 401 fetches a new token and tries once more."""
        content: bytes | None = None
        sent = {"accept": FHIR_JSON, **(headers or {})}
        if body is not None:
            content = orjson.dumps(body)
            sent.setdefault("content-type", FHIR_JSON)
        elif text is not None:
            content = text.encode()
            sent.setdefault("content-type", "text/plain")
        for attempt in (1, 2):
            token = self._token if self._token and attempt == 1 else self.token()
            try:
                answer = self._http.request(
                    method,
                    path,
                    content=content,
                    params=params,
                    headers={**sent, "authorization": f"Bearer {token}"},
                )
            except httpx.HTTPError as exc:
                raise DemoError(f"{method} {path}: {exc}") from None
            if answer.status_code != 401:
                break
        if answer.status_code not in ok:
            raise DemoError(f"{method} {path}: HTTP {answer.status_code} {_problem(answer)}")
        return answer

    def json(self, method: str, path: str, **kwargs: Any) -> JSON:
        body = self.call(method, path, **kwargs).json()
        if not isinstance(body, dict):
            raise DemoError(f"{method} {path}: the answer is not a JSON object")
        return body

    # -- FHIR ----------------------------------------------------------------------------------------

    def create(self, resource: JSON) -> JSON:
        return self.json("POST", f"/fhir/{resource['resourceType']}", body=resource)

    def ensure(self, resource: JSON) -> JSON:
        """Create or update by the resource's first identifier (conditional update): a second run reuses
        the pharmacists, prescribers and insurer the first one made."""
        identifier = resource["identifier"][0]
        criteria = quote(f"{identifier['system']}|{identifier['value']}", safe="")
        return self.json("PUT", f"/fhir/{resource['resourceType']}?identifier={criteria}", body=resource)

    def read(self, reference: str) -> JSON:
        return self.json("GET", f"/fhir/{reference}")

    def search(self, resource_type: str, **params: str) -> list[JSON]:
        """The matches of a search (first page; the demo's searches are small)."""
        bundle = self.json("GET", f"/fhir/{resource_type}", params={**params, "_count": "100"})
        return [
            e["resource"]
            for e in bundle.get("entry") or []
            if (e.get("search") or {}).get("mode", "match") == "match" and "resource" in e
        ]


def ack_parts(ack: str) -> tuple[str, str]:
    """(MSA-1 acknowledgment code, the text of MSA-3 and ERR segments) of an HL7 v2 ACK."""
    code, texts = "", []
    for segment in ack.replace("\n", "\r").split("\r"):
        fields = segment.split("|")
        if fields[0] == "MSA":
            code = fields[1] if len(fields) > 1 else ""
            if len(fields) > 3 and fields[3]:
                texts.append(fields[3])
        elif fields[0] == "ERR" and len(fields) > 8 and fields[8]:
            texts.append(fields[8])
    return code, "; ".join(texts)


class Mllp:
    """HL7 v2 over MLLP with python-hl7's client: one connection, one ACK per message."""

    def __init__(self, host: str, port: int, *, timeout: float = 60.0) -> None:
        self.where = f"{host}:{port}"
        try:
            self._client = MLLPClient(host, port)
        except OSError as exc:
            raise DemoError(f"cannot connect to the MLLP listener at {self.where}: {exc}") from None
        self._client.socket.settimeout(timeout)

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> Mllp:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send(self, message: str) -> str:
        """Sends one message and returns its ACK code (AA); anything else is a DemoError."""
        try:
            reply = bytes(self._client.send_message(message))
            while reply and not reply.endswith(END_BLOCK):  # the ACK came in more than one read
                more = self._client.socket.recv(65536)
                if not more:
                    break
                reply += more
        except OSError as exc:  # refused, reset, timed out
            raise DemoError(f"MLLP {self.where}: {exc}") from None
        ack = reply.strip(START_BLOCK + END_BLOCK).decode("utf-8", errors="replace")
        code, text = ack_parts(ack)
        if code not in ("AA", "CA"):
            kind = message.split("\r", 1)[0].split("|")[8] if message.count("|") > 8 else "message"
            raise DemoError(f"MLLP {self.where}: {kind} answered {code or 'no ACK'} {text}".rstrip())
        return code
