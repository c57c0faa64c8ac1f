"""CSV status files from payers that only email spreadsheets, into `PayerDecision`s.

Pure: the caller passes the file's text; nothing here reads files or talks to anyone.

File format
-----------

UTF-8 text (a leading byte order mark is allowed), one header row, then one row per decision. Commas
separate the cells; a semicolon or a tab does instead when the header line uses it (the separator is
sniffed from the header line only: the most frequent of `,` `;` and tab there wins). Quoting follows the
usual spreadsheet rules (`"..."`, `""` inside); a stray quote makes the row a problem. Blank lines,
lines holding only separators and lines starting with `#` are ignored. Header names are
case-insensitive; spaces and hyphens in them count as underscores (`Task ID`, `task-id` and `task_id`
are one column). Empty header cells are ignored; a column named twice is an error.

| Column                 | Required | Content                                                            |
|------------------------|----------|--------------------------------------------------------------------|
| `task_id`              | id (1)   | the gateway's PA Task id                                           |
| `trace_number`         | id (1)   | the gateway's trace number (Claim identifier value), echoed back   |
| `authorization_number` | id (1)   | the payer's authorization number; also the item's number           |
| `payer_reference`      | id (1)   | the payer's case or reference number                               |
| `decision`             | yes      | see the decision table below (case-insensitive)                    |
| `item`                 | no       | item sequence, a positive integer; empty: the whole request        |
| `period_start`         | no       | first authorized day: YYYY-MM-DD, MM/DD/YYYY or YYYYMMDD           |
| `period_end`           | no       | last authorized day, same formats, not before `period_start`       |
| `reason_code`          | no       | the payer's reason code                                            |
| `reason`               | no       | the payer's reason text                                            |
| `authorized_quantity`  | no       | a decimal >= 0, the quantity authorized when it differs            |
| `decided_at`           | no       | a date (formats above) or an ISO 8601 date-time                    |
| `payer`                | no       | the payer's name, free text                                        |
| `note`                 | no       | free text, kept as the decision's disposition                      |

(1) The header must name `decision` and at least one identifying column ("id"), and every row must give
at least one identifying value. Other columns are allowed and reported in `CsvResult.unknown_columns`;
a header of more than `MAX_COLUMNS` (256) cells is refused. An `authorized_quantity` of more than 18
digits (or beyond 10^18) is a problem of its row.

| `decision` value                                | X12 306 review action                      |
|-------------------------------------------------|--------------------------------------------|
| `approved`                                      | A1 certified in total                      |
| `partially-approved`, `partial`                 | A2 certified, partial                      |
| `denied`                                        | A3 not certified                           |
| `pended`, `pending`                             | A4 pended                                  |
| `approved-modified`, `modified`                 | A6 modified                                |
| `cancelled`, `canceled`                         | C cancelled                                |
| `info-requested`, `more-info`                   | CT contact payer                           |
| `rejected`                                      | none: the payer refused to process it      |
| `A1` `A2` `A3` `A4` `A6` `C` `CT` `NA`          | the code itself                            |

In decision values spaces and underscores count as hyphens (`Approved Modified`). A `rejected` row gives
no item but an error (`PayerDecision.errors`) with its `reason_code`/`reason`; its period and quantity
are ignored.

How rows become decisions
-------------------------

Rows naming the same request form one `PayerDecision`, one `ItemDecision` per row. The request is
named by `task_id`, `trace_number` and `payer_reference` together, or by `authorization_number` alone
when a row gives none of those three (an authorization number may differ from item to item). Within a
request either every row gives an `item` or none does, an item appears once, and `payer` does not
change; a row breaking this is a problem. Correlation: `task_id` is `Correlation.task_id`,
`trace_number` goes to `trace_numbers`, `payer_reference` and every `authorization_number` to
`payer_references` (bare values). `decided_at` is the latest of the rows' values; a date-time without
a UTC offset keeps only its date (FHIR wants an offset on a time). Notes are joined into
`disposition`; `extra` holds `payer` when given and `lines`, the file lines the decision came from.

A row with a problem (no identifying value, unknown decision, bad item, date or quantity, a period
ending before it starts, more cells than the header) is left out and listed in `CsvResult.problems`
with its line number (1-based, physical line of the file where the row starts). Problem messages name
the column, and repeat the value only for the decision, date and item columns. A file without a
header line, a header without `decision` or without any identifying column, a column named twice or a
header that is not valid CSV raises `CsvStatusError` (no decisions at all).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from gateway.pa.decision import (
    CANCELLED,
    CERTIFIED,
    CONTACT_PAYER,
    MODIFIED,
    NOT_CERTIFIED,
    PARTIAL,
    PENDED,
    REVIEW_ACTIONS,
    Correlation,
    ItemDecision,
    PayerDecision,
    Reason,
)

SOURCE = "csv"

IDENTIFYING_COLUMNS = ("task_id", "trace_number", "authorization_number", "payer_reference")
DECISION_COLUMN = "decision"
OPTIONAL_COLUMNS = (
    "item",
    "period_start",
    "period_end",
    "reason_code",
    "reason",
    "authorized_quantity",
    "decided_at",
    "payer",
    "note",
)
KNOWN_COLUMNS = frozenset((*IDENTIFYING_COLUMNS, DECISION_COLUMN, *OPTIONAL_COLUMNS))
# Bounds on what one file may make the parser do: a header with more cells is refused (a status file
# needs 14), a quantity with more digits is a problem of its row.
MAX_COLUMNS = 256
MAX_QUANTITY_DIGITS = 18

REJECTED = "rejected"
DECISION_VALUES: dict[str, str] = {
    "approved": CERTIFIED,
    "partially-approved": PARTIAL,
    "partial": PARTIAL,
    "denied": NOT_CERTIFIED,
    "pended": PENDED,
    "pending": PENDED,
    "approved-modified": MODIFIED,
    "modified": MODIFIED,
    "cancelled": CANCELLED,
    "canceled": CANCELLED,
    "info-requested": CONTACT_PAYER,
    "more-info": CONTACT_PAYER,
    REJECTED: REJECTED,
    **{code.lower(): code for code in REVIEW_ACTIONS},
}

_DELIMITERS = (",", ";", "\t")
_DATE_FORMATS = "YYYY-MM-DD, MM/DD/YYYY or YYYYMMDD"
_DATE_PATTERNS = (
    (re.compile(r"(\d{4})-(\d{2})-(\d{2})"), (1, 2, 3)),
    (re.compile(r"(\d{1,2})/(\d{1,2})/(\d{4})"), (3, 1, 2)),
    (re.compile(r"(\d{4})(\d{2})(\d{2})"), (1, 2, 3)),
)
_REJECTED_TEXT = "Rejected by the payer"

T = TypeVar("T")


class CsvStatusError(ValueError):
    """The text is not a status file this parser can read (no header, a required column missing)."""


@dataclass(frozen=True, slots=True)
class CsvProblem:
    """Why one row was left out. `line` is the 1-based physical line where the row starts."""

    line: int
    column: str | None
    message: str


@dataclass(frozen=True, slots=True)
class CsvResult:
    decisions: list[PayerDecision]
    problems: list[CsvProblem]
    unknown_columns: list[str]


@dataclass(frozen=True, slots=True)
class _Row:
    """One good row: its request, and either an item or (rejected) an error."""

    line: int
    task_id: str
    trace_number: str
    authorization_number: str
    payer_reference: str
    item: ItemDecision | None
    error: Reason | None
    decided_at: str | None
    payer: str
    note: str

    def request_key(self) -> tuple[str, str, str, str]:
        if self.task_id or self.trace_number or self.payer_reference:
            return (self.task_id, self.trace_number, self.payer_reference, "")
        return ("", "", "", self.authorization_number)


class _Bad(ValueError):
    """A cell's value is unusable; the message is safe to show (see the module docstring)."""


# --- public API ---------------------------------------------------------------------------------------------


def looks_like_status_csv(text: str) -> bool:
    """True when the first meaningful line is a header naming `decision` and an identifying column."""
    header = _header_line(_strip_bom(text))
    if header is None:
        return False
    # Past MAX_COLUMNS cells the parser refuses the header anyway: naming the rest would be wasted work.
    cells = _split_line(header, _sniff_delimiter(header))[: MAX_COLUMNS + 1]
    names = {_column_name(cell) for cell in cells}
    return DECISION_COLUMN in names and any(name in names for name in IDENTIFYING_COLUMNS)


def parse_status_csv(text: str) -> CsvResult:
    """Parse a status file; see the module docstring for the format. Raises CsvStatusError on a bad header."""
    text = _strip_bom(text)
    header_line = _header_line(text)
    if header_line is None:
        raise CsvStatusError("the status file has no header line")
    records = _read_records(text, _sniff_delimiter(header_line))
    _, header_cells = next(records)
    if isinstance(header_cells, CsvProblem):
        raise CsvStatusError(f"the status file's header line is not valid CSV ({header_cells.message})")
    columns, unknown = _columns(header_cells)
    rows: list[_Row] = []
    problems: list[CsvProblem] = []
    for line, cells in records:
        parsed = cells if isinstance(cells, CsvProblem) else _parse_record(line, columns, cells)
        if isinstance(parsed, _Row):
            rows.append(parsed)
        elif isinstance(parsed, CsvProblem):
            problems.append(parsed)
        elif parsed is not None:
            problems += parsed
    decisions, clashes = _assemble(rows)
    problems = sorted([*problems, *clashes], key=lambda p: p.line)
    return CsvResult(decisions=decisions, problems=problems, unknown_columns=unknown)


# --- reading lines and records ------------------------------------------------------------------------------


def _strip_bom(text: str) -> str:
    return text[1:] if text.startswith("\ufeff") else text


def _skippable(line: str) -> bool:
    return not line.strip() or line.startswith("#")


def _header_line(text: str) -> str | None:
    return next((line for line in io.StringIO(text, newline="") if not _skippable(line)), None)


def _sniff_delimiter(header_line: str) -> str:
    counts = [header_line.count(d) for d in _DELIMITERS]
    return _DELIMITERS[counts.index(max(counts))]


def _split_line(line: str, delimiter: str) -> list[str]:
    try:
        return next(csv.reader([line], delimiter=delimiter), [])
    except csv.Error:
        return []


class _Lines(Iterator[str]):
    """Physical lines for csv.reader, skipping blank and comment lines between records (never inside a
    quoted cell) and remembering where the current record started."""

    def __init__(self, text: str) -> None:
        self._lines = iter(io.StringIO(text, newline=""))
        self._number = 0
        self._between_records = True
        self.record_start = 0

    def __next__(self) -> str:
        while True:
            line = next(self._lines)
            self._number += 1
            if not self._between_records:
                return line
            if not _skippable(line):
                self._between_records = False
                self.record_start = self._number
                return line

    def next_record(self) -> None:
        self._between_records = True


def _read_records(text: str, delimiter: str) -> Iterator[tuple[int, list[str] | CsvProblem]]:
    """(line, cells) for the header and every row, or (line, problem) for a record that is not valid CSV
    (strict quoting: a stray quote is reported, not guessed at); reading goes on with the next line."""
    lines = _Lines(text)
    reader = csv.reader(lines, delimiter=delimiter, strict=True)
    while True:
        lines.next_record()
        try:
            cells = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            yield lines.record_start, CsvProblem(lines.record_start, None, f"row is not valid CSV: {exc}")
        else:
            yield lines.record_start, cells


# --- header -------------------------------------------------------------------------------------------------


def _column_name(cell: str) -> str:
    return re.sub(r"[\s\-]+", "_", cell.strip().lower())


def _columns(cells: list[str]) -> tuple[list[str | None], list[str]]:
    """Each header cell's known column name (None: ignored) and the unknown columns as written."""
    if len(cells) > MAX_COLUMNS:
        raise CsvStatusError(f"the status file's header has {len(cells)} columns; at most {MAX_COLUMNS}")
    columns: list[str | None] = []
    unknown: dict[str, None] = {}  # insertion-ordered set: each unknown column listed once, in order
    for cell in cells:
        name = _column_name(cell)
        if name in KNOWN_COLUMNS and name in columns:  # at most len(KNOWN_COLUMNS) known names
            raise CsvStatusError(f"the status file's header names column {name!r} twice")
        if name and name not in KNOWN_COLUMNS:
            unknown.setdefault(cell.strip())
        columns.append(name if name in KNOWN_COLUMNS else None)
    if DECISION_COLUMN not in columns:
        raise CsvStatusError("the status file's header has no 'decision' column")
    if not any(name in columns for name in IDENTIFYING_COLUMNS):
        wanted = ", ".join(IDENTIFYING_COLUMNS)
        raise CsvStatusError(f"the status file's header has no identifying column (one of {wanted})")
    return columns, list(unknown)


# --- one row ------------------------------------------------------------------------------------------------


def _parse_record(line: int, columns: list[str | None], cells: list[str]) -> _Row | list[CsvProblem] | None:
    """A row, its problems, or None for a row of empty cells (a spreadsheet's blank line)."""
    if not any(cell.strip() for cell in cells):
        return None
    extra_cells = cells[len(columns) :]
    if any(cell.strip() for cell in extra_cells):
        return [CsvProblem(line, None, f"row has {len(cells)} cells, the header {len(columns)}")]
    values = {name: cell.strip() for name, cell in zip(columns, cells, strict=False) if name}
    return _parse_row(line, values)


def _parse_row(line: int, values: dict[str, str]) -> _Row | list[CsvProblem]:
    get = values.get
    problems: list[CsvProblem] = []

    def cell(column: str, parse: Callable[[str], T]) -> T | None:
        raw = get(column, "")
        if not raw:
            return None
        try:
            return parse(raw)
        except _Bad as exc:
            problems.append(CsvProblem(line, column, str(exc)))
            return None

    if not any(get(column) for column in IDENTIFYING_COLUMNS):
        problems.append(CsvProblem(line, None, "row has no " + ", ".join(IDENTIFYING_COLUMNS)))
    action = cell(DECISION_COLUMN, _parse_decision)
    if not get(DECISION_COLUMN):
        problems.append(CsvProblem(line, DECISION_COLUMN, "decision is empty"))
    sequence = cell("item", _parse_item)
    start = cell("period_start", lambda raw: _parse_date("period_start", raw))
    end = cell("period_end", lambda raw: _parse_date("period_end", raw))
    if start and end and end < start:
        problems.append(CsvProblem(line, "period_end", "period_end is before period_start"))
    quantity = cell("authorized_quantity", _parse_quantity)
    decided_at = cell("decided_at", _parse_decided_at)
    if problems or action is None:
        return problems
    reason = _reason(get("reason_code", ""), get("reason", ""))
    return _Row(
        line=line,
        task_id=get("task_id", ""),
        trace_number=get("trace_number", ""),
        authorization_number=get("authorization_number", ""),
        payer_reference=get("payer_reference", ""),
        item=None if action == REJECTED else _item(action, sequence, values, (start, end), reason, quantity),
        error=(reason or Reason(code=None, display=_REJECTED_TEXT)) if action == REJECTED else None,
        decided_at=decided_at,
        payer=get("payer", ""),
        note=get("note", ""),
    )


def _item(
    action: str,
    sequence: int | None,
    values: dict[str, str],
    period: tuple[date | None, date | None],
    reason: Reason | None,
    quantity: int | float | None,
) -> ItemDecision:
    start, end = period
    return ItemDecision(
        sequence=sequence,
        action=action,
        authorization_number=values.get("authorization_number") or None,
        period_start=start.isoformat() if start else None,
        period_end=end.isoformat() if end else None,
        reasons=(reason,) if reason else (),
        authorized_detail={"quantity": {"value": quantity}} if quantity is not None else None,
    )


def _reason(code: str, text: str) -> Reason | None:
    if not code and not text:
        return None
    return Reason(code=code or None, display=text or None)


def _parse_decision(raw: str) -> str:
    key = re.sub(r"[\s_]+", "-", raw.strip().lower())
    if key not in DECISION_VALUES:
        raise _Bad(f"unknown decision {raw!r}")
    return DECISION_VALUES[key]


def _parse_item(raw: str) -> int:
    if not (raw.isascii() and raw.isdigit()) or int(raw) < 1:
        raise _Bad(f"item {raw!r} is not a positive integer")
    return int(raw)


def _parse_date(column: str, raw: str) -> date:
    for pattern, (y, m, d) in _DATE_PATTERNS:
        match = pattern.fullmatch(raw)
        if match:
            try:
                return date(int(match.group(y)), int(match.group(m)), int(match.group(d)))
            except ValueError:
                break
    raise _Bad(f"{column} {raw!r} is not a date ({_DATE_FORMATS})")


def _parse_decided_at(raw: str) -> str:
    try:
        return _parse_date("decided_at", raw).isoformat()
    except _Bad:
        pass
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise _Bad(f"decided_at {raw!r} is not a date ({_DATE_FORMATS}) or an ISO 8601 date-time") from None
    if moment.tzinfo is None:
        return moment.date().isoformat()
    text = moment.isoformat()
    return text[: -len("+00:00")] + "Z" if text.endswith("+00:00") else text


def _parse_quantity(raw: str) -> int | float:
    try:
        value = Decimal(raw)
    except InvalidOperation:
        raise _Bad("authorized_quantity is not a number") from None
    if not value.is_finite() or value < 0:
        raise _Bad("authorized_quantity is not a number >= 0")
    if value.adjusted() >= MAX_QUANTITY_DIGITS or len(value.as_tuple().digits) > MAX_QUANTITY_DIGITS:
        # checked before any conversion: int(Decimal("1e1000000")) alone takes most of a minute
        raise _Bad(f"authorized_quantity has more than {MAX_QUANTITY_DIGITS} digits")
    return int(value) if value == value.to_integral_value() else float(value)


# --- rows into decisions ------------------------------------------------------------------------------------


def _assemble(rows: list[_Row]) -> tuple[list[PayerDecision], list[CsvProblem]]:
    groups: dict[tuple[str, str, str, str], list[_Row]] = {}
    problems: list[CsvProblem] = []
    for row in rows:
        members = groups.setdefault(row.request_key(), [])
        clash = _clash(row, members)
        if clash is None:
            members.append(row)
        else:
            problems.append(clash)
    return [_decision(members) for members in groups.values() if members], problems


def _clash(row: _Row, members: list[_Row]) -> CsvProblem | None:
    """Why `row` cannot join the rows already taken for its request, if it cannot."""
    for other in members:
        if row.payer and other.payer and row.payer != other.payer:
            return CsvProblem(row.line, "payer", f"payer differs from line {other.line} for the same request")
        if row.item is None or other.item is None:
            continue
        mine, theirs = row.item.sequence, other.item.sequence
        if mine == theirs:
            what = "the whole request" if mine is None else f"item {mine}"
            return CsvProblem(row.line, "item", f"{what} already decided on line {other.line}")
        if (mine is None) != (theirs is None):
            return CsvProblem(
                row.line, "item", f"rows for one request must all give an item or none (line {other.line})"
            )
    return None


def _decision(members: list[_Row]) -> PayerDecision:
    first = members[0]
    references = _unique([first.payer_reference, *(m.authorization_number for m in members)])
    extra: dict[str, Any] = {"lines": [m.line for m in members]}
    payer = next((m.payer for m in members if m.payer), "")
    if payer:
        extra["payer"] = payer
    notes = _unique(m.note for m in members)
    return PayerDecision(
        source=SOURCE,
        correlation=Correlation(
            trace_numbers=(first.trace_number,) if first.trace_number else (),
            payer_references=tuple(references),
            task_id=first.task_id or None,
        ),
        items=tuple(m.item for m in members if m.item is not None),
        errors=tuple(m.error for m in members if m.error is not None),
        disposition="; ".join(notes) or None,
        decided_at=max((m.decided_at for m in members if m.decided_at), default=None),
        extra=extra,
    )


def _unique(values: Iterable[str]) -> list[str]:
    """Non-empty values, first occurrence order."""
    return list(dict.fromkeys(v for v in values if v))
