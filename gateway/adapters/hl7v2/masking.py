"""An HL7 v2 message's structure without its patient or clinical content, for readers without clinical
values (the console's analyst): pure, no I/O.

The rule is a list of what is KEPT, not of what is hidden: a field no one listed (a Z-segment, a field a
sender stuffs with a note, a segment this list has never heard of) is masked, so a new kind of message
cannot leak by default. Kept are the message header and the codes an analyst needs to debug a mapping:

- MSH whole: sender, receiver, message time, type, control id, version (routing, not the patient);
- MSA-1/2 and ERR-2/3/4 of an ACK (acknowledgment code, control id, error location and code);
- EVN-1, PV1-2, ORC-1/5, OBR-4/24/25, OBX-2/3/4/6/7/11, RXO-1, RXE-2/5, RXD-2, RXR-1, SPM-4: event and
  order control codes, test and drug codes, value types, units, reference ranges, statuses;
- field 1 (the set id) of the segments that number their repeats.

Everything else that is not empty becomes `***`, in particular: PID-3 (identifiers: MRNs are identifying
numbers), PID-5/6/9 (names, mother's maiden name, aliases), PID-7 (birth date), PID-11 (address),
PID-13/14 (phones), PID-19 (SSN), NK1 names, addresses and phones (identify the patient's family), OBX-5
(the result itself) and OBX-8 (its abnormal flag reveals the value), NTE-3 and any other free text
(notes say anything), order numbers (accession numbers identify a patient's order), and every date about
care outside MSH (dates of service identify). A field is masked whole, repeats and components included:
its shape could say how many names or identifiers a patient has. The HL7 empty value `""` is kept
(it says "delete", not who). A line that is not a segment (no three-character name followed by the
field separator) is masked whole.
"""

from __future__ import annotations

import re

MASK = "***"

# Field numbers kept per segment (HL7 numbering: MSH-1 is the field separator itself).
KEPT_FIELDS: dict[str, frozenset[int]] = {
    "MSA": frozenset({1, 2}),
    "ERR": frozenset({2, 3, 4}),
    "EVN": frozenset({1}),
    "PID": frozenset({1}),
    "PD1": frozenset(),
    "NK1": frozenset({1}),
    "PV1": frozenset({1, 2}),
    "PV2": frozenset(),
    "ORC": frozenset({1, 5}),
    "OBR": frozenset({1, 4, 24, 25}),
    "OBX": frozenset({1, 2, 3, 4, 6, 7, 11}),
    "NTE": frozenset({1, 2}),
    "SPM": frozenset({1, 4}),
    "RXO": frozenset({1}),
    "RXE": frozenset({2, 5}),
    "RXD": frozenset({1, 2}),
    "RXR": frozenset({1}),
    "RXC": frozenset({1}),
    "TQ1": frozenset({1}),
    "AL1": frozenset({1}),
    "DG1": frozenset({1}),
    "IN1": frozenset({1}),
    "GT1": frozenset({1}),
}
HEADER_SEGMENTS = frozenset({"MSH", "BHS", "FHS"})  # separators and routing; BHS/FHS are batch headers
_NAME = re.compile(r"[A-Z][A-Z0-9]{2}")
_LINE_BREAK = re.compile(r"\r\n|\n|\r")


def field_separator(raw: str) -> str:
    """The separator the message's MSH declares (MSH-1), or `|` when there is no usable MSH."""
    for line in _LINE_BREAK.split(raw):
        if line.startswith("MSH") and len(line) > 3:
            return line[3]
    return "|"


def mask_segment(line: str, separator: str) -> str:
    """One segment with every field not in KEPT_FIELDS replaced by `***`."""
    name = line[:3]
    if not line or not _NAME.fullmatch(name) or (len(line) > 3 and line[3] != separator):
        return MASK if line else line
    if name in HEADER_SEGMENTS:
        return line
    fields = line.split(separator)
    kept = KEPT_FIELDS.get(name, frozenset())
    masked = [f if (n in kept or f in ("", '""')) else MASK for n, f in enumerate(fields[1:], start=1)]
    return separator.join([name, *masked])


def masked_message(raw: str) -> list[str]:
    """The message's segments, one per item, each masked (line breaks of any kind end a segment)."""
    separator = field_separator(raw)
    return [mask_segment(line, separator) for line in _LINE_BREAK.split(raw) if line]


def segments(raw: str) -> list[str]:
    """The message's segments as sent, one per item (for a reader who may see its content)."""
    return [line for line in _LINE_BREAK.split(raw) if line]
