"""FHIR Bulk Data Access (v2.0) `$export`, the parts without I/O: both the server's and the client's.

- Kick-off parameters: `_outputFormat` (ndjson only), `_type` (a comma list).
- The completion manifest (server) and reading one (client): `transactionTime`, `request`,
  `requiresAccessToken`, `output: [{type, url, count}]`, `error: [...]`.
- ndjson: splitting a byte stream into lines of bounded length, and each line into one resource.
- A Group's current members: `member.entity` Patient references, skipping `inactive` members and those
  whose `period` has ended.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson

from gateway.types import JSON

NDJSON = "application/fhir+ndjson"
OUTPUT_FORMATS = frozenset({NDJSON, "application/ndjson", "ndjson"})
# The Bulk Data IG's CapabilityStatement, which a server offering `$export` instantiates.
BULK_CAPABILITY = "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data"
EXPORT_OPERATION = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"
PATIENT_EXPORT_OPERATION = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"
GROUP_EXPORT_OPERATION = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/group-export"

_TYPE = re.compile(r"^[A-Z][A-Za-z]{1,63}$")
_PATIENT_REF = re.compile(
    r"^(?:(?P<base>https?://.+)/)?Patient/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/.+)?$"
)


class BulkDataError(ValueError):
    """Input that does not follow the specification; the message says what (never content: it may be PHI)."""


def output_format_ok(value: str) -> bool:
    # The IG's `ndjson` shorthand, and the two media types; a `; charset=...` is tolerated.
    return value.split(";")[0].strip() in OUTPUT_FORMATS


def parse_types(values: list[str]) -> list[str]:
    """`_type` values (comma lists, maybe repeated) as type names in first-seen order; malformed: error."""
    found: list[str] = []
    for value in values:
        for name in (v.strip() for v in value.split(",")):
            if not name:
                continue
            if not _TYPE.match(name):
                raise BulkDataError(f"_type names something that is not a resource type: {name[:64]!r}")
            if name not in found:
                found.append(name)
    return found


@dataclass(frozen=True, slots=True)
class OutputFile:
    type: str
    url: str
    count: int


def manifest(
    *, transaction_time: str, request: str, outputs: list[OutputFile], errors: list[OutputFile] | None = None
) -> JSON:
    """The completion manifest. Files always need the same token that started the export."""
    return {
        "transactionTime": transaction_time,
        "request": request,
        "requiresAccessToken": True,
        "output": [{"type": o.type, "url": o.url, "count": o.count} for o in outputs],
        "error": [{"type": e.type, "url": e.url, "count": e.count} for e in errors or []],
    }


@dataclass(frozen=True, slots=True)
class Manifest:
    transaction_time: str
    requires_access_token: bool
    outputs: list[OutputFile]
    errors: int  # error files listed (each holds OperationOutcomes)


def read_manifest(body: Any) -> Manifest:
    """A server's completion manifest, checked; BulkDataError naming the first problem."""
    if not isinstance(body, dict):
        raise BulkDataError("the manifest is not a JSON object")
    when = body.get("transactionTime")
    if not isinstance(when, str):
        raise BulkDataError("the manifest has no transactionTime")
    try:
        parsed = datetime.fromisoformat(when.replace("Z", "+00:00"))
    except ValueError:
        raise BulkDataError("the manifest's transactionTime is not an instant") from None
    if parsed.tzinfo is None:
        raise BulkDataError("the manifest's transactionTime has no time zone")
    outputs: list[OutputFile] = []
    for item in body.get("output") or []:
        if not (
            isinstance(item, dict) and isinstance(item.get("type"), str) and isinstance(item.get("url"), str)
        ):
            raise BulkDataError("a manifest output lacks its type or url")
        count = item.get("count")
        outputs.append(OutputFile(item["type"], item["url"], count if isinstance(count, int) else -1))
    errors = body.get("error") or []
    return Manifest(
        transaction_time=when,
        requires_access_token=body.get("requiresAccessToken") is not False,
        outputs=outputs,
        errors=len(errors) if isinstance(errors, list) else 1,
    )


class LineTooLong(BulkDataError):
    pass


class NdjsonLines:
    """Bytes in (any chunking), complete lines out; a line longer than `max_bytes` raises LineTooLong as soon
    as it is known to be too long, so a peer cannot make us hold an unbounded line."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._partial = bytearray()

    def feed(self, chunk: bytes) -> Iterator[bytes]:
        start = 0
        while True:
            end = chunk.find(b"\n", start)
            if end < 0:
                break
            if len(self._partial) + end - start > self.max_bytes:
                raise LineTooLong(f"an ndjson line is longer than {self.max_bytes} bytes")
            line = bytes(self._partial) + chunk[start:end]
            self._partial.clear()
            start = end + 1
            if line.strip():
                yield line
        self._partial += chunk[start:]
        if len(self._partial) > self.max_bytes:
            raise LineTooLong(f"an ndjson line is longer than {self.max_bytes} bytes")

    def close(self) -> Iterator[bytes]:
        """The last line, when the stream did not end with a newline."""
        rest, self._partial = bytes(self._partial), bytearray()
        if rest.strip():
            yield rest


def parse_line(line: bytes, expected_type: str) -> JSON:
    """One ndjson line as a resource of the file's type, with an id; BulkDataError otherwise."""
    try:
        value = orjson.loads(line)
    except orjson.JSONDecodeError:
        raise BulkDataError("an ndjson line is not JSON") from None
    if not isinstance(value, dict):
        raise BulkDataError("an ndjson line is not a JSON object")
    if value.get("resourceType") != expected_type:
        raise BulkDataError(f"an ndjson line in a {expected_type} file is not a {expected_type}")
    if not isinstance(value.get("id"), str):
        raise BulkDataError(f"a {expected_type} in an ndjson file has no id")
    return value


def _ended(period: Any, now: datetime) -> bool:
    end = period.get("end") if isinstance(period, dict) else None
    if not isinstance(end, str):
        return False
    try:
        moment = datetime.fromisoformat(end.replace("Z", "+00:00"))
    except ValueError:
        return False
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=now.tzinfo)  # a date or local time: taken in the reader's zone
    return moment < now


def group_members(group: JSON, now: datetime, base: str | None = None) -> list[str]:
    """The Patient ids a Group lists as current members (relative references, or absolute ones on `base`),
    in order, each once. Members that are `inactive` or whose `period` ended are left out."""
    found: list[str] = []
    for member in group.get("member") or []:
        if (
            not isinstance(member, dict)
            or member.get("inactive") is True
            or _ended(member.get("period"), now)
        ):
            continue
        reference = (member.get("entity") or {}).get("reference")
        match = _PATIENT_REF.match(reference) if isinstance(reference, str) else None
        if match is None:
            continue
        if match["base"] is not None and (base is None or match["base"].rstrip("/") != base.rstrip("/")):
            continue  # a Patient on another server: not one we can ask this server about
        if match["id"] not in found:
            found.append(match["id"])
    return found
