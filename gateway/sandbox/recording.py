"""Recorded sessions: every request and response of a run as JSON files, and serving them back.

`Recorder` writes `NNN-METHOD-Type.json` per exchange (method, path, query, status, the headers that
matter, body) and `session.json` (run id, start time, base URL: what a replay needs to send the same
requests). Credentials never reach the files: Authorization headers, client secrets and tokens in token
requests and answers are replaced by `REDACTED`.

`Replay` is the other half, for tests: `respond(request)` answers the recorded requests in the order they
were made (a respx side effect), and says which request differed when a replayed run strays.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

import httpx
import orjson

REDACTED = "REDACTED"
SECRET_FIELDS = ("access_token", "refresh_token", "id_token", "client_secret", "client_assertion")
# Headers a replay needs or a reader wants; the rest (dates, servers, request ids) is noise.
KEPT_REQUEST_HEADERS = ("accept", "content-type", "prefer", "cache-control", "authorization")
KEPT_RESPONSE_HEADERS = ("content-type", "location", "etag", "last-modified", "content-location")
_FORM_SECRET = re.compile(r"((?:" + "|".join(SECRET_FIELDS) + r")=)[^&]*")


def _redact_body(text: str) -> Any:
    """The body as JSON where it is JSON, else as text; secret fields redacted either way."""
    if not text:
        return None
    try:
        body = orjson.loads(text)
    except orjson.JSONDecodeError:
        return _FORM_SECRET.sub(rf"\g<1>{REDACTED}", text)
    if isinstance(body, dict):
        body = {k: (REDACTED if k in SECRET_FIELDS else v) for k, v in body.items()}
    return body


def _headers(headers: httpx.Headers, kept: tuple[str, ...]) -> dict[str, str]:
    out = {name: headers[name] for name in kept if name in headers}
    if "authorization" in out:
        scheme = out["authorization"].split(" ", 1)[0]
        out["authorization"] = f"{scheme} {REDACTED}"
    return out


def exchange(response: httpx.Response) -> dict[str, Any]:
    """One request/response pair as JSON, credentials redacted."""
    request = response.request
    return {
        "method": request.method,
        "path": request.url.path,
        "query": sorted(parse_qsl(request.url.query.decode(), keep_blank_values=True)),
        "request": {
            "headers": _headers(request.headers, KEPT_REQUEST_HEADERS),
            "body": _redact_body(request.content.decode(errors="replace")),
        },
        "status": response.status_code,
        "headers": _headers(response.headers, KEPT_RESPONSE_HEADERS),
        "body": _redact_body(response.text),
    }


@dataclass
class Recorder:
    folder: Path
    count: int = 0

    def start(self, session: dict[str, Any]) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        for old in self.folder.glob("[0-9][0-9][0-9]-*.json"):  # a re-recording replaces the last one
            old.unlink()
        (self.folder / "session.json").write_bytes(orjson.dumps(session, option=orjson.OPT_INDENT_2))

    def __call__(self, response: httpx.Response) -> None:
        self.count += 1
        what = exchange(response)
        name = re.sub(r"[^A-Za-z0-9.-]", "_", what["path"].rstrip("/").rsplit("/", 1)[-1] or "root")
        path = self.folder / f"{self.count:03d}-{what['method']}-{name[:40]}.json"
        path.write_bytes(orjson.dumps(what, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS))


@dataclass
class Replay:
    """A recorded session served back in order."""

    session: dict[str, Any]
    exchanges: list[dict[str, Any]]
    served: int = 0
    strays: list[str] = field(default_factory=list)

    @classmethod
    def load(cls, folder: Path) -> Replay:
        files = sorted(folder.glob("[0-9][0-9][0-9]-*.json"))
        return cls(
            orjson.loads((folder / "session.json").read_bytes()),
            [orjson.loads(f.read_bytes()) for f in files],
        )

    def respond(self, request: httpx.Request) -> httpx.Response:
        query = sorted(parse_qsl(request.url.query.decode(), keep_blank_values=True))
        asked = f"{request.method} {request.url.path}?{urlencode(query)}"
        if self.served >= len(self.exchanges):
            return self._stray(asked, "the recording has ended")
        recorded = self.exchanges[self.served]
        expected = (
            f"{recorded['method']} {recorded['path']}?{urlencode([tuple(q) for q in recorded['query']])}"
        )
        if asked != expected:
            return self._stray(asked, f"the recording has {expected} here")
        self.served += 1
        body = recorded["body"]
        content = b"" if body is None else body.encode() if isinstance(body, str) else orjson.dumps(body)
        return httpx.Response(recorded["status"], headers=recorded["headers"], content=content)

    def _stray(self, asked: str, why: str) -> httpx.Response:
        self.strays.append(f"{asked}: {why}")
        return httpx.Response(599, json={"replay": f"{asked} was not recorded: {why}"})
