"""X12 278 (005010X217) responses into `PayerDecision`s: one per patient event the payer answered.

Loop structure read here (the delimiters come from the fixed-width ISA header):

    ISA interchange
      GS functional group (GS08 version 005010X217)
        ST transaction set 278 (ST03 version), BHT (BHT02 = 11: response)
          HL 20  2000A utilization management organization (the payer)
            HL 21  2000B requester
              HL 22  2000C subscriber  (NM1*IL carries the member id)
                HL 23  2000D dependent (optional)
                  HL EV  2000E patient event: TRN, AAA, UM, HCR, REF, DTP
                    HL SS  2000F service: TRN, AAA, UM, HCR, REF, DTP
        SE (segment count ST..SE), GE
    IEA

Every segment after an HL belongs to that HL's level (its 2010 name loops included) until the next HL.
Parsing runs in four small steps: split the text into segments, check the envelope (trailers, counts,
control numbers, version), build the HL tree, and turn each 2000E into a decision (its 2000F services
become the items; AAA on the levels above apply to every event below). Names and birth dates are never
read; error messages name segments, element positions and codes, never the values of a patient.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import Any, TypeVar

from gateway.pa.decision import (
    CERTIFIED,
    MODIFIED,
    PARTIAL,
    REVIEW_ACTIONS,
    REVIEW_REASON_SYSTEM,
    Correlation,
    ItemDecision,
    PayerDecision,
    Reason,
)

SOURCE = "x12-278"
VERSION = "005010X217"
TRANSACTION_SET = "278"
RESPONSE = "11"  # BHT02 transaction set purpose: response
HCR_REASON_SYSTEM = REVIEW_REASON_SYSTEM  # X12 886, the system PAS binds reason codes to too
REJECT_REASON_SYSTEM = "https://codesystem.x12.org/005010/901"

# X12 901 reject reason codes (AAA03) with a short text; other codes keep display None.
REJECT_REASONS: dict[str, str] = {
    "15": "Required application data missing",
    "33": "Input errors",
    "41": "Authorization/access restrictions",
    "42": "Unable to respond at current time",
    "43": "Invalid/missing provider identification",
    "51": "Provider not on file",
    "57": "Invalid/missing date(s) of service",
    "58": "Invalid/missing date-of-birth",
    "64": "Invalid/missing patient ID",
    "65": "Invalid/missing patient name",
    "67": "Patient not found",
    "72": "Invalid/missing subscriber/insured ID",
    "73": "Invalid/missing subscriber/insured name",
    "75": "Subscriber/insured not found",
    "79": "Invalid participant identification",
}

# HL03 level codes and the loop each one opens; the parent level codes each may hang under.
LEVELS: dict[str, str] = {
    "20": "2000A",
    "21": "2000B",
    "22": "2000C",
    "23": "2000D",
    "EV": "2000E",
    "SS": "2000F",
}
_PARENTS: dict[str, tuple[str, ...]] = {
    "20": (),
    "21": ("20",),
    "22": ("21",),
    "23": ("22",),
    "EV": ("22", "23"),
    "SS": ("EV",),
}

ISA_LENGTH = 106  # "ISA", 16 fixed-width elements with their separators, the segment terminator
_ISA_WIDTHS = (2, 10, 2, 10, 2, 15, 2, 15, 6, 4, 1, 5, 9, 1, 1, 1)
_SEGMENT_ID = re.compile(r"[A-Z][A-Z0-9]{1,2}")
# Values echoed in messages: short codes, or longer ones with a digit (versions, control numbers); an
# all-letter word could be a name.
_CODE = re.compile(r"[A-Z0-9]{1,3}|(?=[A-Z]*[0-9])[A-Z0-9]{4,15}")
_LEADING = "\ufeff \t\r\n"
_T = TypeVar("_T")
_ENVELOPE = ("ST", "SE", "GS", "GE", "IEA", "ISA")
_CERTIFYING = (CERTIFIED, PARTIAL, MODIFIED)  # review actions that come with an authorization number
PERIOD_QUALIFIERS = ("AAH",)  # DTP01 of the authorized period
EFFECTIVE, EXPIRATION = "007", "036"  # certification effective / expiration dates, used when AAH is absent


class X12Error(ValueError):
    """Input that is not a well-formed 278 response. Never carries patient names or birth dates.

    `segment_index` is the 1-based position of the segment in the interchange (ISA is 1), `segment_id`
    the segment concerned (for a missing trailer, the one that is missing); either may be None.
    """

    def __init__(
        self, message: str, *, segment_index: int | None = None, segment_id: str | None = None
    ) -> None:
        where = [f"segment {segment_index}"] if segment_index is not None else []
        where += [segment_id] if segment_id else []
        super().__init__(f"X12 278: {message}" + (f" ({', '.join(where)})" if where else ""))
        self.segment_index = segment_index
        self.segment_id = segment_id


@dataclass(frozen=True, slots=True)
class Delimiters:
    element: str
    component: str
    segment: str
    repetition: str | None = None


@dataclass(frozen=True, slots=True)
class _Segment:
    index: int  # 1-based position in the interchange
    elements: tuple[str, ...]

    @property
    def id(self) -> str:
        return self.elements[0]

    def get(self, position: int) -> str:
        """Element `position` (1-based, as in `HCR01`), stripped; "" when absent."""
        return self.elements[position].strip() if position < len(self.elements) else ""


def _fail(message: str, segment: _Segment | None = None, segment_id: str | None = None) -> X12Error:
    index = segment.index if segment is not None else None
    return X12Error(message, segment_index=index, segment_id=segment_id or (segment.id if segment else None))


def _show(value: str) -> str:
    """A code value fit for an error message; anything that does not look like a code is not echoed."""
    return repr(value) if _CODE.fullmatch(value) else "a value that is not a code"


# --------------------------------------------------------------------------------------------- reading


def looks_like_x12(data: bytes | str) -> bool:
    """True when the content starts (after a BOM and whitespace) with an ISA segment."""
    head = data[:512].decode("latin-1") if isinstance(data, bytes) else data[:512]
    head = head.replace("\xef\xbb\xbf", "", 1).lstrip(_LEADING)
    return len(head) > 3 and head.startswith("ISA") and not head[3].isalnum() and not head[3].isspace()


def read_delimiters(text: str) -> Delimiters:
    """The delimiters an ISA header declares; `text` starts with the ISA."""
    if len(text) < ISA_LENGTH:
        raise _fail(f"the ISA header is shorter than its fixed {ISA_LENGTH} characters", segment_id="ISA")
    element = text[3]
    position = 3
    for number, width in enumerate(_ISA_WIDTHS, start=1):
        if text[position] != element:
            raise _fail(
                f"ISA is not fixed width: the separator before ISA{number:02d} is not at position {position}",
                segment_id="ISA",
            )
        position += width + 1
    component, segment, repetition = text[104], text[105], text[82]
    chosen = (element, component, segment)
    if len(set(chosen)) != 3 or any(c.isalnum() or c == " " for c in chosen):
        raise _fail(
            "the element, component and segment delimiters must be distinct symbols", segment_id="ISA"
        )
    rep = None if repetition.isalnum() or repetition == " " or repetition in chosen else repetition
    return Delimiters(element, component, segment, rep)


def _split(text: str, delimiters: Delimiters) -> list[_Segment]:
    pieces = text.split(delimiters.segment)
    tail = pieces.pop().strip(" \t\r\n")
    segments: list[_Segment] = []
    for piece in pieces:
        piece = piece.strip("\r\n").lstrip(" \t")
        if piece:
            segments.append(_segment(len(segments) + 1, piece, delimiters))
    if tail:
        elements = tuple(tail.split(delimiters.element))
        if elements[0] != "IEA" or len(elements) != 3:  # only the last trailer may lack its terminator
            raise X12Error(
                "the file ends inside a segment, without its terminator; it looks truncated",
                segment_index=len(segments) + 1,
                segment_id=elements[0] if _SEGMENT_ID.fullmatch(elements[0]) else None,
            )
        segments.append(_Segment(len(segments) + 1, elements))
    return segments


def _segment(index: int, raw: str, delimiters: Delimiters) -> _Segment:
    elements = tuple(raw.split(delimiters.element))
    if not _SEGMENT_ID.fullmatch(elements[0]):
        raise X12Error(
            "a segment does not start with a segment id (wrong delimiters or not X12)", segment_index=index
        )
    return _Segment(index, elements)


# -------------------------------------------------------------------------------------------- envelope


@dataclass(frozen=True, slots=True)
class _Transaction:
    control: str
    segments: tuple[_Segment, ...]  # ST .. SE


def _interchange(segments: list[_Segment]) -> list[_Transaction]:
    isa = segments[0]
    if len(isa.elements) != 17:
        raise _fail(f"ISA has {len(isa.elements) - 1} elements, expected 16", isa)
    transactions: list[_Transaction] = []
    i, groups = 1, 0
    while i < len(segments) and segments[i].id == "GS":
        i = _group(segments, i, transactions)
        groups += 1
    if i >= len(segments):
        raise _fail("the interchange has no IEA trailer; the file looks truncated", segment_id="IEA")
    iea = segments[i]
    if iea.id != "IEA":
        raise _fail(f"unexpected segment {iea.id} outside a functional group; expected GS or IEA", iea)
    _same_control(iea, "IEA02", iea.get(2), "ISA13", isa.get(13))
    _count(iea, "IEA01", groups, "functional groups")
    if groups == 0:
        raise _fail("the interchange holds no functional group (GS)", iea)
    if i + 1 < len(segments):
        raise _fail("content after the IEA trailer", segments[i + 1])
    return transactions


def _group(segments: list[_Segment], i: int, out: list[_Transaction]) -> int:
    gs = segments[i]
    i, count = i + 1, 0
    while i < len(segments) and segments[i].id == "ST":
        transaction, i = _transaction(segments, i, gs)
        out.append(transaction)
        count += 1
    if i >= len(segments):
        raise _fail(
            f"functional group {_show(gs.get(6))} has no GE trailer; the file looks truncated", gs, "GE"
        )
    ge = segments[i]
    if ge.id != "GE":
        raise _fail(f"functional group {_show(gs.get(6))} has no GE trailer before {ge.id}", ge, "GE")
    _same_control(ge, "GE02", ge.get(2), "GS06", gs.get(6))
    _count(ge, "GE01", count, "transaction sets")
    return i + 1


def _transaction(segments: list[_Segment], i: int, gs: _Segment) -> tuple[_Transaction, int]:
    st = segments[i]
    end = i + 1
    while end < len(segments) and segments[end].id not in _ENVELOPE:
        end += 1
    if end >= len(segments) or segments[end].id != "SE":
        raise _fail(f"transaction set {_show(st.get(2))} has no SE trailer", st, "SE")
    se = segments[end]
    if st.get(1) != TRANSACTION_SET:
        raise _fail(f"ST01 is {_show(st.get(1))}; only transaction set 278 is read here", st)
    _check_version(st, gs)
    _count(se, "SE01", end - i + 1, "segments from ST to SE")
    _same_control(se, "SE02", se.get(2), "ST02", st.get(2))
    return _Transaction(st.get(2), tuple(segments[i : end + 1])), end + 1


def _check_version(st: _Segment, gs: _Segment) -> None:
    declared = [v for v in (gs.get(8), st.get(3)) if v]
    if VERSION not in declared:
        shown = ", ".join(_show(v) for v in dict.fromkeys(declared)) or "none"
        raise _fail(f"version {shown} is not {VERSION} (278 review response); GS08 or ST03 must say so", st)
    other = [v for v in declared if v != VERSION and not VERSION.startswith(v)]
    if other:
        raise _fail(f"GS08 and ST03 disagree: {_show(other[0])} besides {VERSION}", st)


def _same_control(trailer: _Segment, name: str, value: str, header_name: str, header: str) -> None:
    same = int(value) == int(header) if value.isdigit() and header.isdigit() else value == header
    if not same:
        raise _fail(
            f"{name} control number {_show(value)} does not match {header_name} {_show(header)}", trailer
        )


def _count(trailer: _Segment, name: str, actual: int, what: str) -> None:
    value = trailer.get(1)
    if not value.isdigit():
        raise _fail(f"{name} is not a count of {what}", trailer)
    if int(value) != actual:
        raise _fail(f"{name} says {int(value)} {what}, found {actual}", trailer)


# ------------------------------------------------------------------------------------------- hierarchy


@dataclass(frozen=True, slots=True)
class _Hcr:
    action: str
    number: str | None
    reason: str | None


@dataclass(slots=True)
class _Facts:
    """What one HL level says, from the segments between its HL and the next."""

    hcr: _Hcr | None = None
    period: tuple[str | None, str | None] | None = None
    authorization_refs: list[str] = field(default_factory=list)  # REF*BB
    administration_refs: list[str] = field(default_factory=list)  # REF*NT
    traces: list[str] = field(default_factory=list)  # TRN02
    rejections: list[Reason] = field(default_factory=list)  # AAA
    follow_ups: list[str] = field(default_factory=list)  # AAA04
    um: dict[str, str] = field(default_factory=dict)
    member_id: str | None = None


@dataclass(slots=True)
class _Level:
    hl: _Segment
    code: str
    parent: _Level | None
    segments: list[_Segment] = field(default_factory=list)
    children: list[_Level] = field(default_factory=list)
    facts: _Facts = field(default_factory=_Facts)

    def walk(self) -> Iterator[_Level]:
        yield self
        for child in self.children:
            yield from child.walk()

    def has_event(self) -> bool:
        return any(level.code == "EV" for level in self.walk())


def _hierarchy(transaction: _Transaction) -> list[_Level]:
    body = transaction.segments[2:-1]
    levels: dict[str, _Level] = {}
    roots: list[_Level] = []
    current: _Level | None = None
    for segment in body:
        if segment.id == "HL":
            current = _new_level(segment, levels)
            (current.parent.children if current.parent else roots).append(current)
        elif current is None:
            raise _fail(f"segment {segment.id} comes before the first HL", segment)
        else:
            current.segments.append(segment)
    if not roots:
        raise _fail("the transaction set has no HL levels", transaction.segments[0])
    for level in levels.values():
        level.facts = _read_facts(level.segments)
    return roots


def _new_level(hl: _Segment, levels: dict[str, _Level]) -> _Level:
    hl_id, parent_id, code = hl.get(1), hl.get(2), hl.get(3)
    if not hl_id or hl_id in levels:
        raise _fail("HL01 is missing or repeats an earlier HL id", hl)
    if code not in LEVELS:
        raise _fail(f"HL03 {_show(code)} is not a 278 level code ({', '.join(LEVELS)})", hl)
    parent = levels.get(parent_id) if parent_id else None
    if parent_id and parent is None:
        raise _fail(f"HL {_show(hl_id)} names parent {_show(parent_id)}, which is no earlier HL", hl)
    expected = _PARENTS[code]
    if (parent.code if parent else None) not in (expected or (None,)):
        shown = f"level {parent.code}" if parent else "no parent"
        want = " or ".join(expected) or "none"
        raise _fail(f"HL {_show(hl_id)} ({LEVELS[code]}) has {shown}; its parent level must be {want}", hl)
    levels[hl_id] = _Level(hl, code, parent)
    return levels[hl_id]


# --------------------------------------------------------------------------------------------- segments


def _read_facts(segments: list[_Segment]) -> _Facts:
    facts = _Facts()
    dates: dict[str, _Segment] = {}
    for segment in segments:
        reader = _READERS.get(segment.id)
        if reader is not None:
            reader(segment, facts)
        elif segment.id == "DTP" and segment.get(1) in (*PERIOD_QUALIFIERS, EFFECTIVE, EXPIRATION):
            dates.setdefault(segment.get(1), segment)
    facts.period = _choose_period(dates)
    return facts


def _read_hcr(segment: _Segment, facts: _Facts) -> None:
    if facts.hcr is not None:
        raise _fail("a second HCR in the same HL level", segment)
    action = segment.get(1)
    if action not in REVIEW_ACTIONS:
        raise _fail(f"HCR01 {_show(action)} is not a review action ({', '.join(REVIEW_ACTIONS)})", segment)
    facts.hcr = _Hcr(action, segment.get(2) or None, segment.get(3) or None)


def _read_ref(segment: _Segment, facts: _Facts) -> None:
    value = segment.get(2)
    if value and segment.get(1) == "BB":
        facts.authorization_refs.append(value)
    elif value and segment.get(1) == "NT":
        facts.administration_refs.append(value)


def _read_trn(segment: _Segment, facts: _Facts) -> None:
    if segment.get(2):
        facts.traces.append(segment.get(2))


def _read_aaa(segment: _Segment, facts: _Facts) -> None:
    code = segment.get(3) or None
    display = REJECT_REASONS.get(code) if code else "Request rejected (no reason code)"
    facts.rejections.append(Reason(code=code, system=REJECT_REASON_SYSTEM if code else None, display=display))
    if segment.get(4):
        facts.follow_ups.append(segment.get(4))


def _read_um(segment: _Segment, facts: _Facts) -> None:
    if not facts.um:
        um = {"request_category": segment.get(1), "certification_type": segment.get(2)}
        facts.um = {key: value for key, value in um.items() if value}


def _read_nm1(segment: _Segment, facts: _Facts) -> None:
    # Only the member id is read: NM103.. (names) are never looked at.
    if segment.get(1) == "IL" and segment.get(9):
        facts.member_id = segment.get(9)


_READERS = {
    "HCR": _read_hcr,
    "REF": _read_ref,
    "TRN": _read_trn,
    "AAA": _read_aaa,
    "UM": _read_um,
    "NM1": _read_nm1,
}


def _period(segment: _Segment) -> tuple[str | None, str | None]:
    form, value = segment.get(2), segment.get(3)
    if form == "D8":
        day = _fhir_date(value, segment, "DTP03")
        return day, day
    if form == "RD8" and value.count("-") == 1:
        start, end = value.split("-")
        return _fhir_date(start, segment, "DTP03 start"), _fhir_date(end, segment, "DTP03 end")
    raise _fail(f"DTP {segment.get(1)} must be D8 (CCYYMMDD) or RD8 (CCYYMMDD-CCYYMMDD)", segment)


def _choose_period(dates: dict[str, _Segment]) -> tuple[str | None, str | None] | None:
    """The DTP*AAH period; without one, the certification effective (007) and expiration (036) dates."""
    for qualifier in PERIOD_QUALIFIERS:
        if qualifier in dates:
            return _period(dates[qualifier])
    effective, expiration = dates.get(EFFECTIVE), dates.get(EXPIRATION)
    if effective is None and expiration is None:
        return None
    start, end = _period(effective) if effective else (None, None)
    if effective is not None and effective.get(2) == "D8":
        end = None  # a single effective date opens the period; it does not close it
    if expiration is not None:
        end = _period(expiration)[1]
    return start, end


def _fhir_date(value: str, segment: _Segment, name: str) -> str:
    """CCYYMMDD as a FHIR date; the value itself never goes into the message."""
    try:
        if len(value) != 8 or not value.isdigit():
            raise ValueError(value)
        return date(int(value[:4]), int(value[4:6]), int(value[6:])).isoformat()
    except ValueError:
        raise _fail(f"{name} is not a valid date CCYYMMDD", segment) from None


# -------------------------------------------------------------------------------------------- decisions


@dataclass(frozen=True, slots=True)
class _Header:
    reference_id: str | None
    decided_at: str | None


def parse_278_response(text: str) -> list[PayerDecision]:
    """Every authorization decision in a 278 response interchange, in file order.

    One decision per 2000E patient event; one per rejected branch (AAA) that has no patient event.
    Raises `X12Error` for anything malformed.
    """
    text = text.lstrip(_LEADING)
    if not looks_like_x12(text):
        raise X12Error("not an X12 interchange: the content does not start with an ISA segment")
    segments = _split(text, read_delimiters(text))
    decisions: list[PayerDecision] = []
    for transaction in _interchange(segments):
        decisions += _transaction_decisions(transaction)
    return decisions


def _transaction_decisions(transaction: _Transaction) -> list[PayerDecision]:
    header = _header(transaction)
    decisions: list[PayerDecision] = []
    for root in _hierarchy(transaction):
        decisions += _branch(root, [], header)
    if not decisions:
        raise _fail(
            f"transaction set {_show(transaction.control)} has no patient event (HL EV) and no AAA rejection",
            transaction.segments[0],
        )
    return decisions


def _header(transaction: _Transaction) -> _Header:
    bht = transaction.segments[1]
    if bht.id != "BHT":
        raise _fail("BHT must follow ST", bht, "BHT")
    if bht.get(2) != RESPONSE:
        raise _fail(f"BHT02 is {_show(bht.get(2))}; a 278 response has 11", bht)
    decided_at = _fhir_date(bht.get(4), bht, "BHT04") if bht.get(4) else None
    return _Header(bht.get(3) or None, decided_at)


def _branch(level: _Level, ancestors: list[_Level], header: _Header) -> list[PayerDecision]:
    if level.code == "EV":
        return [_event_decision(level, ancestors, header)]
    if not level.has_event():
        rejected = any(lvl.facts.rejections for lvl in [*ancestors, *level.walk()])
        return [_rejection_decision(level, ancestors, header)] if rejected else []
    decisions: list[PayerDecision] = []
    for child in level.children:
        decisions += _branch(child, [*ancestors, level], header)
    return decisions


def _event_decision(event: _Level, ancestors: list[_Level], header: _Header) -> PayerDecision:
    services = [child.facts for child in event.children]
    items = _items(event.facts, services)
    levels = [lvl.facts for lvl in ancestors] + [event.facts, *services]
    errors = _unique(reason for facts in levels for reason in facts.rejections)
    if not items and not errors:
        raise _fail(
            "the patient event has no HCR decision (at 2000E or 2000F) and no AAA rejection", event.hl
        )
    um = event.facts.um or next((s.um for s in services if s.um), {})
    return _decision(levels, [event.facts, *services], header, items, errors, um)


def _rejection_decision(level: _Level, ancestors: list[_Level], header: _Header) -> PayerDecision:
    levels = [lvl.facts for lvl in [*ancestors, *level.walk()]]
    errors = _unique(reason for facts in levels for reason in facts.rejections)
    return _decision(levels, levels, header, [], errors, {})


def _decision(
    levels: list[_Facts],
    own: list[_Facts],
    header: _Header,
    items: list[ItemDecision],
    errors: list[Reason],
    um: dict[str, str],
) -> PayerDecision:
    """`levels`: every level the decision draws on (ancestors first); `own`: those whose numbers it has."""
    references = [
        number
        for facts in own
        for number in [
            *([facts.hcr.number] if facts.hcr and facts.hcr.number else []),
            *facts.authorization_refs,
            *facts.administration_refs,
        ]
    ]
    correlation = Correlation(
        trace_numbers=tuple(_unique(t for facts in levels for t in facts.traces)),
        payer_references=tuple(_unique(references)),
    )
    return PayerDecision(
        source=SOURCE,
        correlation=correlation,
        items=tuple(items),
        errors=tuple(errors),
        decided_at=header.decided_at,
        extra=_extra(levels, header, um),
    )


def _extra(levels: list[_Facts], header: _Header, um: dict[str, str]) -> dict[str, Any]:
    extra: dict[str, Any] = dict(um)
    member = next((facts.member_id for facts in reversed(levels) if facts.member_id), None)
    follow_ups = _unique(code for facts in levels for code in facts.follow_ups)
    if member:
        extra["member_id"] = member
    if header.reference_id:
        extra["reference_id"] = header.reference_id
    if follow_ups:
        extra["follow_up_actions"] = follow_ups
    return extra


def _items(event: _Facts, services: list[_Facts]) -> list[ItemDecision]:
    if not services:
        return [_item(None, event, event)] if event.hcr else []
    return [
        _item(sequence, service, event)
        for sequence, service in enumerate(services, start=1)
        if service.hcr or event.hcr
    ]


def _item(sequence: int | None, own: _Facts, event: _Facts) -> ItemDecision:
    """A decision from `own` (the 2000F, or the 2000E itself), falling back on the event's facts."""
    hcr = own.hcr or event.hcr
    assert hcr is not None
    number = (hcr.number if own.hcr else None) or _first(own.authorization_refs)
    if number is None and (own.hcr is None or hcr.action in _CERTIFYING):
        # The event's decision, or a certification without its own number: the event's number covers it.
        number = (event.hcr.number if event.hcr else None) or _first(event.authorization_refs)
    start, end = own.period or event.period or (None, None)
    return ItemDecision(
        sequence=sequence,
        action=hcr.action,
        authorization_number=number,
        period_start=start,
        period_end=end,
        reasons=(Reason(code=hcr.reason, system=HCR_REASON_SYSTEM),) if hcr.reason else (),
        administration_reference=_first(own.administration_refs) or _first(event.administration_refs),
    )


def _first(values: list[str]) -> str | None:
    return values[0] if values else None


def _unique(values: Iterable[_T]) -> list[_T]:
    return list(dict.fromkeys(values))
