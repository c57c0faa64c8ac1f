"""What a message carried that no mapping read: segments, fields and repetitions, for the message log.

Segments remember which of their fields (and how many repetitions) were read while the message was
translated (er7.Segment.taken). Every other field that holds a value was not mapped, and is reported as
`SEG#position-field` (all its repetitions) or `SEG#position-field[r]` (repetition r only), e.g. `PID#2-19`
or `OBX#6-5[2]`. Set ID fields (datatype SI: OBX-1, PID-1) only number segments and are never reported;
nor is the envelope (MSH, SFT, EVN, UAC), which the pipeline reads.
"""

from __future__ import annotations

from functools import cache

from gateway.adapters.hl7v2.er7 import Message
from gateway.adapters.hl7v2.structure import nearest_version, segment_field_types

ENVELOPE = frozenset({"MSH", "SFT", "EVN", "UAC"})


@cache
def _set_id_fields(version: str, segment: str) -> frozenset[int]:
    types = segment_field_types(nearest_version(version), segment)
    return frozenset(n for n, kind in types.items() if kind == "SI")


def unmapped_fields(message: Message) -> list[str]:
    """Every field (or repetition) with a value that no mapping read, in message order."""
    found: list[str] = []
    for segment in message.segments:
        if segment.index == 0 or segment.name in ENVELOPE:
            continue
        structural = _set_id_fields(message.version, segment.name)
        for number, taken, count in segment.unread():
            if number in structural:
                continue
            where = f"{segment.name}#{segment.index + 1}-{number}"
            if taken == 0:
                found.append(where)
            else:
                found += [f"{where}[{r}]" for r in range(taken + 1, count + 1)]
    return found


def unused_segments(message: Message, used: set[int]) -> list[str]:
    """Segments none of whose fields a mapping read (`PV1#3`, `ZPI#7`)."""
    return [
        f"{s.name}#{s.index + 1}"
        for s in message.segments
        if s.index != 0 and s.name not in ENVELOPE and s.index not in used and not s.taken
    ]


def field_name(entry: str) -> str:
    """The field an entry names, without position and repetition: `PID#2-19` -> `PID-19`."""
    segment, _, rest = entry.partition("#")
    number = rest.partition("-")[2].partition("[")[0]
    return f"{segment}-{number}"
