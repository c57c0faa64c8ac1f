"""Deletions upstream, from its history (pure logic; reading and deleting in
gateway/service/ehrpull/deletions.py).

A deleted resource drops out of `_lastUpdated` searches, so a pull never hears of it. With
`deletions: history` an upstream's pulled types are also read as `GET {Type}/_history?_since={checkpoint}`:
an entry whose `request.method` is DELETE (or, from servers that leave `request` out, whose response
status is 410 or that has no resource) is a deletion of `Type/id`. History lists the newest version
first (FHIR R4 http.html#history), so only the first entry seen per id counts: a resource deleted and
created again upstream is not deleted here.

Each type keeps its own checkpoint, in the pull's table under the key `{Type}#deleted` (no schema change).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from gateway.ehr.upstreams import UpstreamConfig
from gateway.types import JSON

SUFFIX = "#deleted"
# Where a first read starts: deletions before `deletions: history` was turned on are not followed (what
# was deleted before the first pull was never pulled); a margin for the two clocks' difference.
FIRST_READ_MARGIN = timedelta(minutes=5)
_TYPE_ID = re.compile(r"(?:^|/)(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/?]+)?$")


def checkpoint_key(res_type: str) -> str:
    return f"{res_type}{SUFFIX}"


def poll_keys(upstream: UpstreamConfig) -> list[str]:
    """The checkpoint keys polled: each pulled type, and `{Type}#deleted` with `deletions: history`."""
    followed = upstream.resources if upstream.deletions == "history" else []
    return [*upstream.resources, *(checkpoint_key(t) for t in followed)]


def deletion_type(key: str) -> str | None:
    """The resource type a checkpoint key follows deletions of; None for a pull's own key."""
    return key[: -len(SUFFIX)] if key.endswith(SUFFIX) else None


def first_since(now: datetime) -> str:
    return (now.astimezone(UTC) - FIRST_READ_MARGIN).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def history_params(since: str, page_size: int) -> list[tuple[str, str]]:
    return [("_since", since), ("_count", str(page_size))]


def _target(entry: JSON, res_type: str) -> str | None:
    """The remote id an entry is about, from request.url, else fullUrl."""
    for text in ((entry.get("request") or {}).get("url"), entry.get("fullUrl")):
        match = _TYPE_ID.search(text.split("?", 1)[0]) if isinstance(text, str) else None
        if match is not None and match["type"] == res_type:
            return match["id"]
    resource = entry.get("resource")
    if isinstance(resource, dict) and resource.get("resourceType") == res_type:
        return str(resource["id"]) if isinstance(resource.get("id"), str) else None
    return None


def is_deletion(entry: JSON) -> bool:
    method = (entry.get("request") or {}).get("method")
    if method is not None:
        return bool(method == "DELETE")
    status = str((entry.get("response") or {}).get("status") or "")
    return status.startswith("410") or not isinstance(entry.get("resource"), dict)


def entry_time(entry: JSON) -> str | None:
    """When the version was written: response.lastModified, else the resource's meta.lastUpdated."""
    modified = (entry.get("response") or {}).get("lastModified")
    if isinstance(modified, str):
        return modified
    updated = ((entry.get("resource") or {}).get("meta") or {}).get("lastUpdated")
    return updated if isinstance(updated, str) else None


def deleted_ids(bundle: JSON, res_type: str, seen: set[str]) -> list[str]:
    """Remote ids of `res_type` whose newest version in the history read so far is a deletion; `seen`
    (updated here) holds the ids already decided by newer entries (earlier pages)."""
    deleted = []
    for entry in bundle.get("entry") or []:
        if not isinstance(entry, dict):
            continue
        remote_id = _target(entry, res_type)
        if remote_id is None or remote_id in seen:
            continue
        seen.add(remote_id)
        if is_deletion(entry):
            deleted.append(remote_id)
    return deleted
