"""Bundles assembled from stored resource bytes.

Stored resources are already serialised JSON; a searchset or history Bundle is built around those bytes
without parsing them again, which keeps large result pages cheap.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson

from gateway.fhir.dates import format_instant, now_us


@dataclass(frozen=True, slots=True)
class Entry:
    full_url: str
    resource: bytes | None
    search_mode: str | None = None  # match | include | outcome
    request: dict[str, Any] | None = None
    response: dict[str, Any] | None = None


def _entry_bytes(entry: Entry) -> bytes:
    parts = [b'{"fullUrl":', orjson.dumps(entry.full_url)]
    if entry.resource is not None:
        parts += [b',"resource":', entry.resource]
    if entry.search_mode:
        parts += [b',"search":{"mode":"', entry.search_mode.encode(), b'"}']
    if entry.request is not None:
        parts += [b',"request":', orjson.dumps(entry.request)]
    if entry.response is not None:
        parts += [b',"response":', orjson.dumps(entry.response)]
    parts.append(b"}")
    return b"".join(parts)


def bundle_bytes(
    bundle_type: str,
    entries: Iterable[Entry],
    *,
    total: int | None = None,
    links: Iterable[tuple[str, str]] = (),
) -> bytes:
    """A Bundle of `bundle_type` around already-serialised entries."""
    head: dict[str, Any] = {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": format_instant(now_us())},
        "type": bundle_type,
    }
    if total is not None:
        head["total"] = total
    link_list = [{"relation": rel, "url": url} for rel, url in links]
    if link_list:
        head["link"] = link_list
    prefix = orjson.dumps(head)[:-1]
    body = b",".join(_entry_bytes(e) for e in entries)
    return prefix + b',"entry":[' + body + b"]}"


def bundle_dict(bundle_type: str, entries: list[dict[str, Any]]) -> dict[str, Any]:
    """A small Bundle as a dict (transaction and batch responses)."""
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"lastUpdated": format_instant(now_us())},
        "type": bundle_type,
        "entry": entries,
    }
