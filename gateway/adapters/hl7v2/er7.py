"""ER7, HL7 v2's pipe-and-hat encoding: messages split into segments and fields, decoded on demand.

Tokenizing is the hot path of every feed, so nothing is parsed before it is asked for: a message splits
into segments, a segment into raw fields (one `str.split`), and components, subcomponents and escape
sequences are resolved only for the values a mapping reads. Input is accepted as real senders write it:
CR, LF, CRLF or mixed segment separators, a leading byte-order mark, any encoding characters the MSH
declares.

Bounded: a message is checked against `Limits` when it is tokenized (segments, fields, repetitions,
components, escape sequences, NUL characters, the size it decodes to), and the lazy paths check the
limits in force again, so no value is ever expanded past a cap; see `Limits`.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from functools import cached_property
from typing import Any

# Segment separators seen in the wild: CR (the standard), LF (files edited on Unix), CRLF, mixed.
_SEGMENT_SPLIT = re.compile(r"\r\n|\r|\n")
_SEGMENT_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}$")


class ER7Error(ValueError):
    """Input that is not an HL7 v2 message: no MSH, bad encoding characters, junk.

    `segment`, `sequence` (its occurrence, 1-based) and `field` locate the problem for the NAK's ERR
    segment; `code` is from HL7 table 0357.
    """

    def __init__(
        self,
        message: str,
        *,
        segment: str = "MSH",
        field: int = 0,
        code: str = "100",
        sequence: int | None = None,
    ) -> None:
        super().__init__(message)
        self.segment = segment
        self.field = field
        self.code = code
        self.sequence = sequence

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only arguments: rebuilt from the attributes (errors cross process boundaries).
        return _rebuild_error, (type(self), str(self), dict(vars(self)))


def _rebuild_error(kind: type[ER7Error], message: str, state: dict[str, object]) -> ER7Error:
    error = kind.__new__(kind)
    ValueError.__init__(error, message)
    error.__dict__.update(state)
    return error


class LimitExceeded(ER7Error):
    """A message over one of the `Limits` (code 104, value too long), or holding a NUL (code 102).

    `value` is the offending text when the cap was met outside the tokenizer (a number's digits) and
    the location is not known yet: the pipeline finds the field that holds it.
    """

    def __init__(
        self,
        message: str,
        *,
        segment: str = "",
        field: int = 0,
        code: str = "104",
        sequence: int | None = None,
        value: str | None = None,
    ) -> None:
        super().__init__(message, segment=segment, field=field, code=code, sequence=sequence)
        self.value = value


@dataclass(frozen=True, slots=True)
class Limits:
    """How much one message may make the gateway hold or compute; every count is "at most".

    Real feeds stay far below these (an ORU with a few hundred OBX, segments of fewer than 50 fields);
    they exist so that a hostile or broken sender cannot turn a small message into a huge one.
    """

    segments: int = 2000  # segments per message
    fields: int = 300  # fields per segment
    repetitions: int = 500  # repetitions per field
    components: int = 100  # components per repetition, and subcomponents per component
    line_skip: int = 100  # n in the formatting escape \.sp n\ (n line feeds)
    number_digits: int = 18  # digits of an NM value (leading zeros aside); 18 fit in 64 bits
    decoded_bytes: int = 16 * 1024 * 1024  # the message's length once escape sequences are expanded


DEFAULT_LIMITS = Limits()
_IN_FORCE: ContextVar[Limits] = ContextVar("hl7_limits", default=DEFAULT_LIMITS)


def active_limits() -> Limits:
    """The limits the lazy paths (unescaping, number conversion) enforce right now."""
    return _IN_FORCE.get()


@contextlib.contextmanager
def limits_in_force(limits: Limits) -> Iterator[Limits]:
    """Enforce `limits` on the lazy paths for the duration of the block (one message's translation)."""
    token = _IN_FORCE.set(limits)
    try:
        yield limits
    finally:
        _IN_FORCE.reset(token)


@dataclass(frozen=True, slots=True)
class Encoding:
    field: str = "|"
    component: str = "^"
    repetition: str = "~"
    escape: str = "\\"
    subcomponent: str = "&"

    @classmethod
    def from_msh(cls, header: str) -> Encoding:
        """The delimiters an MSH segment declares (MSH-1 and MSH-2)."""
        if len(header) < 8 or not header.startswith("MSH"):
            raise ER7Error("The message does not start with an MSH segment", field=1, code="100")
        field = header[3]
        if field.isalnum() or field in " \r\n":
            raise ER7Error(f"Invalid field separator {field!r} in MSH-1", field=1, code="102")
        end = header.find(field, 4)
        chars = header[4:end] if end != -1 else header[4:]
        if "\x00" in field + chars:
            # Refused like a NUL anywhere else: the log stores NUL as \X00\, which would read as other
            # delimiters on reprocessing, and the ACK, written in these delimiters, would carry it back.
            raise ER7Error(
                "MSH-1 or MSH-2 holds a NUL character", field=1 if field == "\x00" else 2, code="102"
            )
        if len(chars) >= 5 and chars[2] == chars[3] == "\\":
            # MSH-2 written as ^~ + two backslashes + &: the escape character doubled, as senders that escape
            # their own output produce it. Read it as the standard ^~\\&.
            chars = chars[:2] + chars[3:]
        if (
            len(chars) < 4
            or len(set(chars[:4])) != 4
            or field in chars
            or any(c.isalnum() for c in chars[:4])
        ):
            raise ER7Error(f"Invalid encoding characters {chars!r} in MSH-2", field=2, code="102")
        return cls(field, chars[0], chars[1], chars[2], chars[3])


DEFAULT_ENCODING = Encoding()


def _unescape(text: str, enc: Encoding) -> str:
    """Resolve escape sequences (\\F\\ \\S\\ \\T\\ \\R\\ \\E\\ \\Xhh\\ \\.br\\); highlighting is dropped."""
    esc = enc.escape
    if esc not in text:
        return text
    out: list[str] = []
    i = 0
    while i < len(text):
        ch = text[i]
        end = text.find(esc, i + 1) if ch == esc else -1
        if end == -1:
            out.append(ch)
            i += 1
            continue
        code = text[i + 1 : end]
        out.append(_escape_value(code, enc, text[i : end + 1]))
        i = end + 1
    return "".join(out)


def _escape_value(code: str, enc: Encoding, original: str) -> str:
    simple = {"F": enc.field, "S": enc.component, "T": enc.subcomponent, "R": enc.repetition, "E": enc.escape}
    if code in simple:
        return simple[code]
    if code in ("H", "N"):  # start/end highlighting: presentation only
        return ""
    if code == ".br":
        return "\n"
    if code.startswith(".sp"):
        return "\n" * _line_skip(code)
    if code.startswith("X") and len(code) > 1 and len(code) % 2 == 1:
        try:
            found = bytes.fromhex(code[1:]).decode("utf-8", errors="replace")
        except ValueError:
            return original
        if "\x00" in found:
            raise LimitExceeded("A hex escape sequence decodes to a NUL character", code="102")
        return found
    if code.startswith((".in", ".ti", ".sk", ".ce", ".fi", ".nf")):
        return ""  # formatting commands of FT: layout only
    return original  # unknown escape: keep it visible rather than lose text


def _line_skip(code: str) -> int:
    """The line feeds `\\.sp n\\` stands for (1 when n is missing or not a number), never past the cap."""
    count = code[3:].strip()
    if not (count.isascii() and count.isdigit()):
        return 1
    cap = active_limits().line_skip
    if len(count) > len(str(cap)) or int(count) > cap:
        raise LimitExceeded(f"\\.sp{count}\\ skips more than {cap} lines")
    return max(1, int(count))


class Value:
    """One repetition of a field (or a component, one level down): split and unescaped on access.

    `c(n)` is the n-th component (1-based) as text; `part(n)` is that component as a Value whose own
    components are its subcomponents (for composite types such as CX-4, an HD).
    """

    __slots__ = ("_parts", "enc", "level", "raw")

    def __init__(self, raw: str, enc: Encoding = DEFAULT_ENCODING, level: int = 0) -> None:
        self.raw = raw
        self.enc = enc
        self.level = level
        self._parts: list[str] | None = None

    def __bool__(self) -> bool:
        return self.raw not in ("", '""')

    def __repr__(self) -> str:
        return f"Value({self.raw!r})"

    @property
    def is_null(self) -> bool:
        """HL7's explicit null ("" between delimiters): the sender says the value is deleted."""
        return self.raw == '""'

    def _split(self) -> list[str]:
        if self._parts is None:
            sep = self.enc.component if self.level == 0 else self.enc.subcomponent
            self._parts = self.raw.split(sep) if self.level < 2 else [self.raw]
        return self._parts

    def c(self, n: int) -> str:
        """The n-th component (1-based), unescaped; subcomponent separators are kept out (first one)."""
        parts = self._split()
        if n > len(parts):
            return ""
        text = parts[n - 1]
        if self.level == 0 and self.enc.subcomponent in text:
            text = text.split(self.enc.subcomponent, 1)[0]
        return "" if text == '""' else _unescape(text, self.enc)

    def part(self, n: int) -> Value:
        parts = self._split()
        return Value(parts[n - 1] if n <= len(parts) else "", self.enc, self.level + 1)

    @property
    def text(self) -> str:
        """The whole value with escapes resolved, delimiters and all: for logs and keys, never for FHIR."""
        return "" if self.raw == '""' else _unescape(self.raw, self.enc)

    def pieces(self) -> list[str]:
        """Every component and subcomponent at this level, unescaped, in order (empty ones included)."""
        if self.raw == '""':
            return [""]
        if self.level >= 2:
            return [_unescape(self.raw, self.enc)]
        parts = self._split() if self.level == 0 else [self.raw]
        found: list[str] = []
        for part in parts:
            found += [_unescape(sub, self.enc) for sub in part.split(self.enc.subcomponent)]
        return found

    @property
    def structured(self) -> bool:
        """Whether the value holds component or subcomponent separators (not escaped ones)."""
        return self.level < 2 and (
            (self.level == 0 and self.enc.component in self.raw) or self.enc.subcomponent in self.raw
        )

    @property
    def components(self) -> int:
        return len(self._split())


EMPTY = Value("")
# `Segment.taken` value for "every repetition was read".
ALL = 1 << 30


class Segment:
    """One segment: its name and raw fields. Field numbers follow HL7: MSH-1 is the field separator.

    A segment remembers which fields (and how many of their repetitions) were read: what a mapping
    never read is what the message log reports as not mapped, field by field.
    """

    __slots__ = ("_reps", "enc", "fields", "index", "name", "taken")

    def __init__(self, line: str, enc: Encoding, index: int) -> None:
        self.enc = enc
        self.index = index
        parts = line.split(enc.field)
        self.name = parts[0]
        if self.name == "MSH":
            # MSH-1 is the separator itself and MSH-2 the encoding characters: shift so numbers match HL7.
            parts = [parts[0], enc.field, *parts[1:]]
        self.fields = parts
        self._reps: dict[int, list[Value]] = {}
        # field number -> repetitions read (a large number: all of them)
        self.taken: dict[int, int] = {}

    def __repr__(self) -> str:
        return f"<{self.name} #{self.index}>"

    def raw(self, n: int) -> str:
        """Field n as written, every repetition (counts as reading all of them)."""
        self.taken[n] = ALL
        return self.fields[n] if n < len(self.fields) else ""

    def has(self, n: int) -> bool:
        return n < len(self.fields) and self.fields[n] not in ("", '""')

    def _split(self, n: int) -> list[Value]:
        cached = self._reps.get(n)
        if cached is not None:
            return cached
        raw = self.fields[n] if n < len(self.fields) else ""
        if not raw:
            reps: list[Value] = []
        elif self.name == "MSH" and n in (1, 2):
            reps = [Value(raw, self.enc, level=2)]
        elif self.enc.repetition not in raw:
            reps = [Value(raw, self.enc)]
        else:
            reps = [Value(r, self.enc) for r in raw.split(self.enc.repetition) if r != ""]
        self._reps[n] = reps
        return reps

    def repetitions(self, n: int) -> list[Value]:
        """Every repetition of field n (split once, then remembered: mappings read fields many times)."""
        self.taken[n] = ALL
        return self._split(n)

    def get(self, n: int) -> Value:
        """The first repetition of field n (only that one counts as read)."""
        if n not in self.taken:
            self.taken[n] = 1
        reps = self._reps.get(n)
        if reps is None:
            reps = self._split(n)
        return reps[0] if reps else EMPTY

    def peek(self, n: int) -> Value:
        """The first repetition of field n without counting it as read (structure checks, keys)."""
        reps = self._split(n)
        return reps[0] if reps else EMPTY

    def unread(self) -> Iterator[tuple[int, int, int]]:
        """(field, repetitions read, repetitions with a value) of every field with a value not all of
        whose repetitions were read; HL7's explicit null ("") is no value."""
        taken = self.taken
        for n in range(1, len(self.fields)):
            read = taken.get(n, 0)
            if read == ALL:
                continue
            raw = self.fields[n]
            if not raw or raw == '""':
                continue
            if read == 0 and self.enc.repetition not in raw:
                yield n, 0, 1
                continue
            count = sum(1 for rep in self._split(n) if rep)
            if count > read:
                yield n, read, count

    def __getitem__(self, n: int) -> Value:
        return self.get(n)

    @property
    def field_count(self) -> int:
        return len(self.fields) - 1


def split_segments(text: str) -> list[str]:
    """Segment lines of one message: BOM, blank lines, trailing whitespace and NUL padding after the
    last segment (senders writing C strings into fixed buffers) tolerated."""
    text = text.lstrip("\ufeff").rstrip("\x00\r\n")
    return [line for line in _SEGMENT_SPLIT.split(text) if line.strip() and line.strip("\x00 \t")]


# --- limits ------------------------------------------------------------------------------------------

_ESCAPES: dict[Encoding, re.Pattern[str]] = {}


def _escapes(enc: Encoding) -> re.Pattern[str]:
    """Escape sequences of one encoding: the escape character, a code holding no delimiter, the escape
    character (how `_unescape` pairs them inside one component)."""
    found = _ESCAPES.get(enc)
    if found is None:
        delimiters = re.escape(enc.field + enc.component + enc.repetition + enc.subcomponent + enc.escape)
        esc = re.escape(enc.escape)
        found = _ESCAPES[enc] = re.compile(f"{esc}([^{delimiters}\r\n]*){esc}")
    return found


def check_limits(lines: list[str], enc: Encoding, limits: Limits) -> None:
    """Raise `LimitExceeded` naming the first segment and field over a cap, or holding a NUL.

    Cheap for a normal message: whole-segment counts decide whether a segment needs looking into, and
    only such a segment is split field by field.
    """
    if len(lines) > limits.segments:
        name = lines[limits.segments][:3]
        sequence = sum(1 for line in lines[: limits.segments + 1] if line[:3] == name)
        raise LimitExceeded(
            f"The message has {len(lines)} segments; at most {limits.segments} are accepted",
            segment=name,
            sequence=sequence,
        )
    seen: dict[str, int] = {}
    decoded = 0
    for line in lines:
        name = line[:3]
        seen[name] = sequence = seen.get(name, 0) + 1
        decoded += len(line) + 1
        if (
            line.count(enc.field) >= limits.fields
            or line.count(enc.repetition) >= limits.repetitions
            or line.count(enc.component) >= limits.components
            or line.count(enc.subcomponent) >= limits.components
            or enc.escape in line
            or "\x00" in line
        ):
            decoded += _check_segment(line, name, sequence, enc, limits)
        if decoded > limits.decoded_bytes:
            raise LimitExceeded(
                f"The message decodes to more than {limits.decoded_bytes} characters",
                segment=name,
                sequence=sequence,
            )


def _check_segment(line: str, name: str, sequence: int, enc: Encoding, limits: Limits) -> int:
    """One segment field by field; returns how many characters its escape sequences add."""
    fields = line.split(enc.field)
    first = 3 if name == "MSH" else 1  # MSH-1 and MSH-2 are the delimiters themselves
    offset = 1 if name == "MSH" else 0  # MSH-1 is the separator: MSH-n is parts[n - 1]
    count = len(fields) - 1 + offset
    if count > limits.fields:
        raise LimitExceeded(
            f"{name} has {count} fields; at most {limits.fields} are accepted",
            segment=name,
            sequence=sequence,
            field=limits.fields + 1,
        )
    added = 0
    for number in range(first, count + 1):
        raw = fields[number - offset]

        def refuse(text: str, code: str = "104", number: int = number) -> LimitExceeded:
            return LimitExceeded(text, segment=name, sequence=sequence, field=number, code=code)

        where = f"{name}-{number}"
        if "\x00" in raw:
            raise refuse(f"{where} holds a NUL character", "102")
        repetitions = raw.split(enc.repetition)
        if len(repetitions) > limits.repetitions:
            raise refuse(f"{where} has {len(repetitions)} repetitions; at most {limits.repetitions}")
        for repetition in repetitions:
            components = repetition.split(enc.component)
            if len(components) > limits.components:
                raise refuse(f"{where} has {len(components)} components; at most {limits.components}")
            for component in components:
                if component.count(enc.subcomponent) >= limits.components:
                    raise refuse(f"{where} has more than {limits.components} subcomponents")
        if enc.escape in raw:
            added += _check_escapes(raw, enc, limits, refuse)
    return added


def _check_escapes(raw: str, enc: Encoding, limits: Limits, refuse: Any) -> int:
    """The escape sequences of one field: line skips within the cap, no hex NUL; the growth they make."""
    added = 0
    for match in _escapes(enc).finditer(raw):
        code = match.group(1)
        if code.startswith(".sp"):
            count = code[3:].strip()
            if count.isascii() and count.isdigit():
                if len(count) > len(str(limits.line_skip)) or int(count) > limits.line_skip:
                    raise refuse(f"\\.sp{count}\\ skips more than {limits.line_skip} lines")
                added += max(1, int(count)) - len(match.group(0))
        elif code.startswith("X") and "00" in code:
            digits = code[1:]
            if len(digits) % 2 == 0 and any(digits[i : i + 2] == "00" for i in range(0, len(digits), 2)):
                raise refuse("A hex escape sequence decodes to a NUL character", "102")
    return added


class Message:
    """A tokenized HL7 v2 message. Header fields are read eagerly; everything else on demand.

    `limits` (default: those in force, see `limits_in_force`) are checked before anything is split.
    """

    def __init__(self, text: str, limits: Limits | None = None) -> None:
        lines = split_segments(text)
        if not lines:
            raise ER7Error("The message is empty", code="100")
        if not lines[0].startswith("MSH"):
            junk = lines[0][:3] if _SEGMENT_NAME.match(lines[0][:3]) else "junk"
            raise ER7Error(f"The message starts with {junk!r}, not an MSH segment", code="100")
        self.encoding = Encoding.from_msh(lines[0])
        check_limits(lines, self.encoding, limits or active_limits())
        self.segments = [Segment(line, self.encoding, i) for i, line in enumerate(lines)]
        for segment in self.segments:
            if not _SEGMENT_NAME.match(segment.name):
                raise ER7Error(
                    f"Segment {segment.index + 1} has an invalid name {segment.name[:10]!r}",
                    segment=segment.name[:3],
                    code="100",
                )
        self.msh = self.segments[0]

    @cached_property
    def message_code(self) -> str:
        return self.msh[9].c(1)

    @cached_property
    def trigger(self) -> str:
        return self.msh[9].c(2)

    @cached_property
    def structure(self) -> str:
        return self.msh[9].c(3)

    @cached_property
    def control_id(self) -> str:
        return self.msh[10].text

    @cached_property
    def version(self) -> str:
        return self.msh[12].c(1)

    @cached_property
    def sending_application(self) -> str:
        return self.msh[3].c(1) or self.msh[3].c(2)

    @cached_property
    def sending_facility(self) -> str:
        return self.msh[4].c(1) or self.msh[4].c(2)

    @property
    def sender(self) -> str:
        """Who sent it, for duplicate detection and per-source mappings: MSH-3|MSH-4."""
        return f"{self.sending_application}|{self.sending_facility}"

    def names(self) -> list[str]:
        return [s.name for s in self.segments]


def split_batch(text: str) -> list[str]:
    """The messages of a file: a plain message, several in a row, or an FHS/BHS batch (headers dropped)."""
    lines = split_segments(text)
    messages: list[list[str]] = []
    for line in lines:
        name = line[:3]
        if name in ("FHS", "BHS", "BTS", "FTS"):
            continue
        if name == "MSH" or not messages:
            messages.append([])
        messages[-1].append(line)
    return ["\r".join(m) + "\r" for m in messages]
