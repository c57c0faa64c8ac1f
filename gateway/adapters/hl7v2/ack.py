"""HL7 v2 acknowledgements: original-mode ACKs for messages received, NAKs for input that is not one.

Pure text in, text out. The ACK is written in the received message's own encoding characters and
version, so a sender that declared `$` as its component separator (or 2.3's ERR layout) reads back
what it expects. The transport frames and sends the result; nothing here does I/O.

Layouts (HL7 v2 chapter 2):
- every version: `MSH` (addressing swapped) and `MSA|<code>|<original MSH-10>`;
- before 2.5: `MSA-3` carries the first error's text and a single `ERR` repeats ERR-1 (ELD,
  `segment^sequence^field^code&text&HL70357`) once per error, because ERR did not repeat in the ACK;
- 2.5 and later: one `ERR` per error with ERR-2 (ERL location), ERR-3 (CWE code from table 0357),
  ERR-4 (severity) and ERR-8 (the user message).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from gateway.adapters.hl7v2.er7 import DEFAULT_ENCODING, Encoding, ER7Error, Message, split_segments

AckCode = Literal["AA", "AE", "AR"]  # HL7 table 0008, original mode
Severity = Literal["E", "W", "I"]  # HL7 table 0516

# HL7 table 0357 (message error condition codes): the standard text sent in ERR-3.2 / ELD-4.2.
ERROR_CODES: dict[str, str] = {
    "0": "Message accepted",
    "100": "Segment sequence error",
    "101": "Required field missing",
    "102": "Data type error",
    "103": "Table value not found",
    "104": "Value too long",
    "200": "Unsupported message type",
    "201": "Unsupported event code",
    "202": "Unsupported processing id",
    "203": "Unsupported version id",
    "204": "Unknown key identifier",
    "205": "Duplicate key identifier",
    "206": "Application record locked",
    "207": "Application internal error",
}

# Version written in a NAK when the input gave none we could read: the first with today's ERR layout.
FALLBACK_VERSION = "2.5"
_ERR_SEGMENT_FROM = (2, 5)  # ERR-2..ERR-8 and a repeating ERR segment
_STRUCTURE_FROM = (2, 3, 1)  # MSH-9.3 (message structure) first appears in 2.3.1
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# "MSH" followed by a plausible field separator: where a header starts, even after leading junk.
_MSH_START = re.compile(r"MSH(?=[^\w\s])")

_Escaper = Callable[[str], str]


@dataclass(frozen=True)
class AckError:
    """One problem reported in an ACK. Location numbers are 1-based; 0 or None means "not given"."""

    code: str  # HL7 table 0357, e.g. "101"
    text: str  # for the sender's staff: what is wrong; no patient data
    severity: Severity = "E"
    segment: str = ""  # e.g. "OBX"
    sequence: int | None = None  # which occurrence of the segment
    field: int | None = None
    repetition: int | None = None
    component: int | None = None
    subcomponent: int | None = None

    @classmethod
    def from_er7(cls, error: ER7Error) -> AckError:
        """The tokenizer's complaint as an ACK error (MSH is always the first segment)."""
        sequence = 1 if error.segment == "MSH" else None
        return cls(error.code, str(error), "E", error.segment, sequence, error.field)


def build_ack(
    message: Message,
    code: AckCode,
    *,
    errors: Sequence[AckError] = (),
    control_id: str,
    timestamp: str,
) -> str:
    """The original-mode ACK to `message`, with our own `control_id` and `timestamp` (MSH-7) in its MSH.

    `timestamp` is a DTM such as `hl7_timestamp` writes; `errors` go to ERR (and MSA-3 before 2.5).
    """
    msh = message.msh
    header = _Header(
        encoding=message.encoding,
        encoding_chars=_encoding_chars(msh.raw(2), message.encoding),
        fields={n: msh.raw(n) for n in _COPIED},
        trigger=message.trigger,
        version=message.version,
    )
    return _render(header, code, errors, control_id, timestamp)


def build_nak(
    raw: str,
    text: str,
    *,
    code: str = "100",
    control_id: str,
    timestamp: str,
    segment: str = "MSH",
    field: int = 0,
) -> str:
    """An AR for input that could not be tokenized, addressed from whatever MSH `raw` still has.

    Falls back to `|^~\\&`, version 2.5 and empty addressing when no MSH header can be salvaged.
    """
    error = AckError(code, text, "E", segment, 1 if segment == "MSH" else None, field)
    return _render(_salvage(raw), "AR", [error], control_id, timestamp)


def hl7_timestamp(moment: datetime) -> str:
    """A DTM for MSH-7: `YYYYMMDDHHMMSS` plus the UTC offset when `moment` is aware."""
    return moment.strftime("%Y%m%d%H%M%S%z")


# MSH fields carried over from the received header: addressing (swapped below), control id,
# processing id, version and character set (the ACK travels back in the same character set).
_COPIED = (3, 4, 5, 6, 9, 10, 11, 12, 18)
_SWAP = {3: 5, 4: 6, 5: 3, 6: 4}  # ACK field -> received field


@dataclass(frozen=True)
class _Header:
    """What an ACK needs from the received MSH; raw fields are in `encoding`, still escaped."""

    encoding: Encoding
    encoding_chars: str  # MSH-2 as written back, with a 2.7 truncation character if one was declared
    fields: dict[int, str]
    trigger: str
    version: str


def _render(header: _Header, code: str, errors: Sequence[AckError], control_id: str, timestamp: str) -> str:
    enc, trunc = header.encoding, header.encoding_chars[4:]
    version = _version(header.version)
    modern = version is None or version >= _ERR_SEGMENT_FROM

    def esc(text: str) -> str:
        return _escape(text, enc, trunc)

    def raw(n: int) -> str:
        return _clean(header.fields.get(n, ""))

    message_type = ["ACK", esc(header.trigger)]
    if version is None or version >= _STRUCTURE_FROM:
        message_type.append("ACK")
    msh = [
        "MSH" + enc.field + header.encoding_chars,
        *(raw(_SWAP[n]) for n in (3, 4, 5, 6)),
        esc(timestamp),
        "",
        _join(message_type, enc.component),
        esc(control_id),
        raw(11) or "P",  # MSH-11 is required; a NAK to unreadable input has nothing to copy
        raw(12) or FALLBACK_VERSION,
        *([""] * 5),  # MSH-13..17
        raw(18),
    ]
    msa = ["MSA", code, raw(10)]
    if errors and not modern:
        msa.append(esc(errors[0].text))
    segments = [_join(msh, enc.field), _join(msa, enc.field)]
    if errors:
        segments += _err_segments(errors, enc, esc) if modern else [_err_legacy(errors, enc, esc)]
    return "\r".join(segments) + "\r"


def _err_segments(errors: Sequence[AckError], enc: Encoding, esc: _Escaper) -> list[str]:
    """2.5+: one ERR per error (ERR-2 location, ERR-3 code, ERR-4 severity, ERR-8 user message)."""
    out = []
    for e in errors:
        location = [esc(e.segment), *(_num(n) for n in (e.sequence, e.field, e.repetition))]
        location += [_num(e.component), _num(e.subcomponent)]
        erl = _join(location, enc.component) if e.segment else ""
        cwe = _join([esc(e.code), esc(ERROR_CODES.get(e.code, e.text)), "HL70357"], enc.component)
        out.append(_join(["ERR", "", erl, cwe, e.severity, "", "", "", esc(e.text)], enc.field))
    return out


def _err_legacy(errors: Sequence[AckError], enc: Encoding, esc: _Escaper) -> str:
    """Before 2.5: a single ERR whose ERR-1 (ELD) repeats, one repetition per error."""
    eld = []
    for e in errors:
        ce = _join([esc(e.code), esc(e.text), "HL70357"], enc.subcomponent)
        eld.append(_join([esc(e.segment), _num(e.sequence), _num(e.field), ce], enc.component))
    return "ERR" + enc.field + enc.repetition.join(eld)


def _salvage(raw: str) -> _Header:
    """The MSH of input the tokenizer rejected, as far as it can be read; else an empty header."""
    start = _MSH_START.search(raw)
    lines = split_segments(raw[start.start() :]) if start else []
    line = lines[0] if lines else ""
    try:
        enc = Encoding.from_msh(line)
        chars = _encoding_chars(line.split(enc.field)[1], enc)
    except ER7Error:
        # Broken MSH-2: keep the field separator if it is usable and read the fields as standard
        # encoding, which is what nearly every sender writes; the values are echoed, not interpreted.
        separator = line[3:4]
        # A NUL separator would come back escaped (\X00\) in the logged and sent answer: standard instead.
        unusable = not separator or separator.isalnum() or separator.isspace() or separator == "\x00"
        if unusable or separator in "^~\\&":
            return _Header(DEFAULT_ENCODING, "^~\\&", {}, "", "")
        enc = Encoding(field=separator)
        chars = "^~\\&"
    fields = line.split(enc.field)
    fields.insert(1, enc.field)  # number as HL7 does: MSH-1 is the separator itself
    copied = {n: fields[n] for n in _COPIED if n < len(fields)}
    message_type = copied.get(9, "").split(enc.component)
    version = copied.get(12, "").split(enc.component)[0]
    return _Header(enc, chars, copied, message_type[1] if len(message_type) > 1 else "", version)


def _encoding_chars(msh2: str, enc: Encoding) -> str:
    """MSH-2 to write back: the four delimiters, plus the truncation character (2.7+) if declared."""
    chars = enc.component + enc.repetition + enc.escape + enc.subcomponent
    # The tokenizer reads a doubled escape (`^~\\&`) as `^~\&`; skip it the same way here.
    rest = msh2[5:] if msh2[2:4] == enc.escape * 2 else msh2[4:]
    truncation = rest[:1]
    # A control character there (a vertical tab, say) is no truncation character: declaring it back would put
    # it in the ACK, where control characters must not pass (see _clean).
    usable = truncation and not truncation.isalnum() and not _CONTROL.match(truncation)
    if usable and truncation not in chars + enc.field:
        chars += truncation
    return chars


def _escape(text: str, enc: Encoding, truncation: str = "") -> str:
    """`text` as an ER7 value: delimiters as \\F\\ \\S\\ \\T\\ \\R\\ \\E\\ (\\P\\), controls as \\Xhh\\."""
    e = enc.escape
    # The escape character first, so the escapes added next are not escaped again.
    text = text.replace(e, f"{e}E{e}")
    delimiters = {enc.field: "F", enc.component: "S", enc.subcomponent: "T", enc.repetition: "R"}
    for char, name in delimiters.items():
        text = text.replace(char, f"{e}{name}{e}")
    if truncation:
        text = text.replace(truncation, f"{e}P{e}")
    # CR/LF would end the segment and 0x1C could end the MLLP frame: write them as hex escapes.
    return _CONTROL.sub(lambda m: f"{e}X{ord(m.group()):02X}{e}", text)


def _clean(raw: str) -> str:
    """A raw field copied from the input: already escaped, but control characters must not pass."""
    return _CONTROL.sub("", raw)


def _version(text: str) -> tuple[int, ...] | None:
    """`2.5.1` -> (2, 5, 1); None when MSH-12 is empty or unreadable (treated as a current version)."""
    parts = text.strip().split(".")
    if not all(p.isdigit() for p in parts):
        return None
    return tuple(int(p) for p in parts)


def _num(n: int | None) -> str:
    return str(n) if n else ""


def _join(parts: Sequence[str], separator: str) -> str:
    """Join, dropping trailing empty values (HL7 leaves them out rather than writing `|||`)."""
    items = list(parts)
    while items and items[-1] == "":
        items.pop()
    return separator.join(items)
