"""Stable resource ids derived from the source's own identifiers.

The same message twice, or the same result re-sent with a correction, must land on the same resources,
so ids are UUIDv5 digests of what identifies the thing in HL7: the assigning authority and MRN for a
patient (the same person from two senders is one Patient), the order number for an order, the position
of an OBX within its order for a result. Digests, not the identifiers themselves: an MRN never appears in
a URL or a log line.
"""

from __future__ import annotations

import uuid

# Fixed namespace of this gateway's derived ids. Changing it would re-key every stored resource.
NAMESPACE = uuid.UUID("0d7c2a3e-8b5f-5e61-9c4a-2b8f61d3a9e7")


def stable_id(resource_type: str, *parts: str) -> str:
    """A UUIDv5 over the type and the identifying parts (separated by a unit separator, never in HL7 text)."""
    return str(uuid.uuid5(NAMESPACE, "\x1f".join((resource_type, *parts))))
