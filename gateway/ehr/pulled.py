"""What a resource pulled from an upstream EHR becomes here: its stable local id, its references rewritten.

- Local id: `{upstream}-{first 32 hex of SHA-256(upstream, type, remote id)}`. The same remote resource always
  lands on the same local resource (a second fetch is an update, and an unchanged one writes nothing),
  whichever process fetched it; two upstreams never collide, and remote ids of any length fit in 64 chars.
- References to a type the upstream is pulled for point to that resource's local id (the same rule, so
  an Observation fetched before its Patient already points to where the Patient will be). References to
  other types become absolute URLs on the upstream: still resolvable, never a dangling local reference.
- meta: the upstream's versionId/lastUpdated give way to ours; `meta.source` names the remote resource.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any

from gateway.types import JSON

# Type/id, optionally /_history/n, relative or absolute.
_REFERENCE = re.compile(
    r"^(?:(?P<base>https?://.+)/)?(?P<type>[A-Z][A-Za-z]+)/(?P<id>[A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$"
)


def local_id(upstream: str, resource_type: str, remote_id: str) -> str:
    digest = hashlib.sha256(f"{upstream}\n{resource_type}\n{remote_id}".encode()).hexdigest()
    return f"{upstream}-{digest[:32]}"


def rewrite_reference(reference: str, *, upstream: str, base: str, pulled: frozenset[str]) -> str:
    """One reference as it should read here (see the module notes); contained (#x) and URNs unchanged."""
    match = _REFERENCE.match(reference)
    if match is None:
        return reference
    if match["base"] is not None and match["base"].rstrip("/") != base:
        return reference  # a third server's resource: not ours to rename
    if match["type"] in pulled:
        return f"{match['type']}/{local_id(upstream, match['type'], match['id'])}"
    return f"{base}/{match['type']}/{match['id']}"


def _rewrite(value: Any, rename: Any) -> Any:
    if isinstance(value, dict):
        return {
            k: rename(v) if k == "reference" and isinstance(v, str) else _rewrite(v, rename)
            for k, v in value.items()
        }
    if isinstance(value, list):
        return [_rewrite(v, rename) for v in value]
    return value


def localize(resource: JSON, *, upstream: str, base: str, pulled: frozenset[str]) -> JSON:
    """A pulled resource as it is stored here: local id, rewritten references, our meta with its source."""
    rtype, remote_id = resource["resourceType"], str(resource["id"])

    def rename(reference: str) -> str:
        return rewrite_reference(reference, upstream=upstream, base=base, pulled=pulled)

    # Contained resources keep their ids ('#x' references do not look like Type/id); theirs are rewritten.
    body = {k: _rewrite(v, rename) for k, v in resource.items() if k not in ("id", "meta")}
    meta = {
        k: v
        for k, v in (resource.get("meta") or {}).items()
        if k not in ("versionId", "lastUpdated", "source")
    }
    meta["source"] = f"{base}/{rtype}/{remote_id}"
    return {**body, "id": local_id(upstream, rtype, remote_id), "meta": meta}
