"""Stable resource ids derived from the source's own identifiers.

The same message twice, or the same result re-sent with a correction, must land on the same resources,
so ids are UUIDv5 digests of what identifies the thing in HL7: the assigning authority and MRN for a
patient (the same person from two senders is one Patient), the order number for an order, the position
of an OBX within its order for a result. Digests, not the identifiers themselves: an MRN never appears in
a URL or a log line.
"""

from __future__ import annotations

import hashlib
import uuid

# Fixed namespace of this gateway's derived ids. Changing it would re-key every stored resource.
NAMESPACE = uuid.UUID("0d7c2a3e-8b5f-5e61-9c4a-2b8f61d3a9e7")


_NAMESPACE_BYTES = NAMESPACE.bytes


def stable_id(resource_type: str, *parts: str) -> str:
    """A UUIDv5 over the type and the identifying parts (separated by a unit separator, never in HL7 text).

    Computed directly (RFC 4122 section 4.3) rather than through uuid.UUID: it runs for every resource of
    every message, and the result is the same as uuid.uuid5(NAMESPACE, name).
    """
    digest = hashlib.sha1(_NAMESPACE_BYTES + "\x1f".join((resource_type, *parts)).encode()).digest()
    raw = bytearray(digest[:16])
    raw[6] = (raw[6] & 0x0F) | 0x50  # version 5
    raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 4122 variant
    h = raw.hex()
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
