"""Hypothesis strategies that mutate real inputs: HL7 v2 messages of the shared corpus, JSON resources,
CSV status files and X12 278 responses.

Each strategy draws a seed and then a short list of mutations, so Hypothesis shrinks a failure towards
the seed with the fewest, smallest changes that still break something.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from hypothesis import strategies as st

from tests.conftest import CORPUS

Draw = Callable[[st.SearchStrategy[Any]], Any]

# ---------------------------------------------------------------------------------------------- seeds


def corpus_messages() -> list[str]:
    """The shared corpus's HL7 v2 messages, read in place (never copied into the project)."""
    paths = sorted((CORPUS / "hl7v2").glob("*/*.hl7"))
    assert len(paths) >= 40, f"no HL7 v2 corpus under {CORPUS} (set GATEWAY_CORPUS_DIR)"
    return [p.read_bytes().decode("utf-8") for p in paths]


def corpus_json(*dirs: str) -> list[dict[str, Any]]:
    """FHIR resources of the shared corpus (the PAS and CDex examples)."""
    found = []
    for directory in dirs:
        paths = sorted((CORPUS / directory).glob("*.json"))
        assert paths, f"no JSON under {CORPUS / directory} (set GATEWAY_CORPUS_DIR)"
        found += [json.loads(Path(p).read_text(encoding="utf-8")) for p in paths]
    return found


# ------------------------------------------------------------------------------------ text mutations

# Characters worth trying anywhere: delimiters, escapes, segment ends, NUL, BOM, MLLP framing bytes,
# a line separator, non-ASCII letters.
SPECIAL = [*list("|^~\\&#\r\n\x00\x0b\x1c\t \ufeff\u2028é漢\"',;*:"), "\r\n"]
ESCAPES = [
    "\\.sp\\",
    "\\.sp5\\",
    "\\.sp100\\",
    "\\.sp101\\",
    "\\.sp99999999999999999999\\",
    "\\.sp-3\\",
    "\\.sp 7\\",
    "\\.br\\",
    "\\.in+4\\",
    "\\.ti-2\\",
    "\\.ce\\",
    "\\H\\",
    "\\N\\",
    "\\F\\",
    "\\S\\",
    "\\T\\",
    "\\R\\",
    "\\E\\",
    "\\P\\",
    "\\X00\\",
    "\\X0000\\",
    "\\X41\\",
    "\\XZZ\\",
    "\\X4\\",
    "\\X414243\\",
    "\\XC3A9\\",
    "\\XFF\\",
    "\\X" + "41" * 2000 + "\\",
    "\\C2842\\",
    "\\M2442\\",
    "\\Z\\",
    "\\",
    "\\\\",
    "\\X",
]
NUMBERS = [
    "9" * 19,
    "9" * 25,
    "9" * 4300,
    "0" * 40 + "1",
    "-" + "9" * 30,
    "1." + "5" * 60,
    "1e999",
    "-0",
    "+1",
    "NaN",
    "Infinity",
    ".5",
    "5.",
    "1,5",
    "١٢٣",
    "",
]
SEPARATORS = ["\r", "\n", "\r\n", "\n\r", "\r\r", ""]


def _pos(draw: Draw, text: str) -> int:
    return int(draw(st.integers(0, max(len(text) - 1, 0))))


def _segments(text: str) -> tuple[list[str], str]:
    """Segments and the separator the message uses (the first found; CR when none)."""
    for separator in ("\r\n", "\r", "\n"):
        if separator in text:
            return text.split(separator), separator
    return [text], "\r"


def _field_sep(text: str) -> str:
    start = text.find("MSH")
    return text[start + 3] if start != -1 and len(text) > start + 3 else "|"


def flip(draw: Draw, text: str) -> str:
    """One character replaced by a special one, any one, or one with a bit flipped."""
    if not text:
        return text
    i = _pos(draw, text)
    choice = draw(st.integers(0, 2))
    if choice == 0:
        new = draw(st.sampled_from(SPECIAL))
    elif choice == 1:
        new = draw(st.characters(exclude_categories=("Cs",)))
    else:
        new = chr((ord(text[i]) ^ (1 << draw(st.integers(0, 7)))) or 1)
    return text[:i] + new + text[i + 1 :]


def insert(draw: Draw, text: str) -> str:
    i = _pos(draw, text)
    piece = draw(st.one_of(st.sampled_from(SPECIAL), st.sampled_from(ESCAPES), st.text(max_size=8)))
    return text[:i] + piece + text[i:]


def truncate(draw: Draw, text: str) -> str:
    return text[: _pos(draw, text)]


def segment_op(draw: Draw, text: str) -> str:
    """A segment duplicated (a few times or very many), deleted, moved or emptied."""
    segments, sep = _segments(text)
    i = _pos(draw, segments)  # type: ignore[arg-type]
    op = draw(st.sampled_from(["dup", "many", "delete", "move", "empty", "junk"]))
    if op == "dup":
        segments[i:i] = [segments[i]] * draw(st.integers(1, 3))
    elif op == "many":
        segments[i:i] = [segments[i]] * draw(st.sampled_from([150, 2100]))
    elif op == "delete":
        del segments[i]
    elif op == "move":
        segments.insert(_pos(draw, segments), segments.pop(i))  # type: ignore[arg-type]
    elif op == "empty":
        segments[i] = segments[i][:3]
    else:
        segments.insert(
            i, draw(st.sampled_from(["ZZZ|1", "zzz|1", "OB", "1234|x", "MSH|^~\\&", "FHS|^~\\&"]))
        )
    return sep.join(segments)


def field_op(draw: Draw, text: str) -> str:
    """A field duplicated, deleted, emptied, set to `""`, a number, or repeated very many times."""
    segments, sep = _segments(text)
    fs = _field_sep(text)
    i = _pos(draw, segments)  # type: ignore[arg-type]
    fields = segments[i].split(fs)
    j = _pos(draw, fields)  # type: ignore[arg-type]
    op = draw(st.sampled_from(["dup", "delete", "empty", "null", "number", "repeat", "components", "append"]))
    if op == "dup":
        fields.insert(j, fields[j])
    elif op == "delete" and j > 0:
        del fields[j]
    elif op == "empty" and j > 0:
        fields[j] = ""
    elif op == "null" and j > 0:
        fields[j] = '""'
    elif op == "number" and j > 0:
        fields[j] = draw(st.sampled_from(NUMBERS))
    elif op == "repeat" and j > 0:
        fields[j] = "~".join([fields[j]] * draw(st.sampled_from([2, 3, 40, 501])))
    elif op == "components" and j > 0:
        fields[j] = fields[j] + draw(st.sampled_from(["^", "&", "^&", "~"])) * draw(
            st.sampled_from([1, 5, 101])
        )
    elif op == "append":
        fields += [""] * draw(st.sampled_from([1, 10, 301]))
    segments[i] = fs.join(fields)
    return sep.join(segments)


def delimiter_op(draw: Draw, text: str) -> str:
    """Delimiters swapped throughout, MSH-1 or MSH-2 changed, or segment separators changed."""
    op = draw(st.sampled_from(["swap", "msh1", "msh2", "separators", "charset"]))
    if op == "swap":
        a, b = draw(st.lists(st.sampled_from(list("|^~\\&#$%*@!")), min_size=2, max_size=2, unique=True))
        return text.replace(a, "\x01").replace(b, a).replace("\x01", b)
    start = text.find("MSH")
    if start == -1 or len(text) < start + 8:
        return text
    if op == "msh1":
        return text[: start + 3] + draw(st.sampled_from(list("|#A1 \t^\r\x00é"))) + text[start + 4 :]
    if op == "msh2":
        fs = _field_sep(text)
        end = text.find(fs, start + 4)
        end = end if end != -1 else start + 8
        bad = draw(
            st.one_of(
                st.sampled_from(
                    [
                        "",
                        "^",
                        "^~",
                        "^~\\",
                        "^^^^",
                        "^~\\\\&",
                        "^~\\&#",
                        "^~|&",
                        "abcd",
                        "^~\\&\\",
                        "\x00~\\&",
                    ]
                ),
                st.text(min_size=0, max_size=6),
            )
        )
        return text[: start + 4] + bad + text[end:]
    if op == "separators":
        segments, _ = _segments(text)
        return draw(st.sampled_from(SEPARATORS)).join(segments)
    # MSH-18, the character set: decides how the bytes are decoded
    segments, sep = _segments(text)
    fs = _field_sep(text)
    fields = segments[0].split(fs)
    fields += [""] * max(0, 18 - len(fields))
    fields[17] = draw(
        st.sampled_from(["8859/1", "UNICODE UTF-8", "ASCII", "ISO IR100", "8859/15", "BOGUS", "\\X00\\"])
    )
    segments[0] = fs.join(fields)
    return sep.join(segments)


HL7_MUTATIONS = [flip, insert, truncate, segment_op, segment_op, field_op, field_op, field_op, delimiter_op]


@st.composite
def mutated_hl7(draw: Draw, seeds: Sequence[str], max_mutations: int = 4) -> str:
    """A corpus message with up to `max_mutations` mutations (none: the message as it is)."""
    text = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(0, max_mutations))):
        text = draw(st.sampled_from(HL7_MUTATIONS))(draw, text)
    return text


@st.composite
def mutated_bytes(draw: Draw, text: str) -> bytes:
    """A message's bytes with byte-level damage: invalid UTF-8, a BOM, a truncated multi-byte character."""
    data = text.encode("utf-8")
    for _ in range(draw(st.integers(0, 2))):
        i = draw(st.integers(0, max(len(data) - 1, 0)))
        piece = draw(
            st.sampled_from(
                [b"\xff", b"\xc3", b"\xe2\x80", b"\xef\xbb\xbf", b"\xed\xa0\x80", b"\x00", b"\x1c\r"]
            )
        )
        data = data[:i] + piece + data[i + draw(st.integers(0, 1)) :]
    return data


# ------------------------------------------------------------------------------------ JSON mutations

JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from(
            ["", " ", "x" * 300, "1e999", "2024-13-45", "urn:uuid:", "Patient/", "#", "\x00", "\ufeff", "é"]
        ),
        st.text(max_size=12),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
RESOURCE_TYPES = [
    "Patient",
    "Observation",
    "Bundle",
    "Task",
    "Claim",
    "OperationOutcome",
    "Nope",
    "",
    "patient",
]


def _paths(node: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every place in a document, the deepest first and the root last (Hypothesis favours early choices:
    most mutations should leave a resource that still reaches validation)."""
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*path, index))
    return [*found, path]


def _get(node: Any, path: tuple[Any, ...]) -> Any:
    for step in path:
        node = node[step]
    return node


@st.composite
def mutated_json(draw: Draw, seeds: Sequence[dict[str, Any]], max_mutations: int = 4) -> Any:
    """A resource with values replaced, removed, duplicated or retyped at random places."""
    document = json.loads(json.dumps(draw(st.sampled_from(seeds))))
    for _ in range(draw(st.integers(1, max_mutations))):
        path = draw(st.sampled_from(_paths(document)))
        op = draw(st.sampled_from(["replace", "delete", "add", "wrap", "unwrap", "type", "duplicate"]))
        if not path:
            if op == "replace":
                document = draw(JSON_VALUES)
            elif op == "wrap":
                document = [document]
            elif isinstance(document, dict):
                document["resourceType"] = draw(st.sampled_from(RESOURCE_TYPES))
            continue
        parent, key = _get(document, path[:-1]), path[-1]
        if op == "replace":
            parent[key] = draw(JSON_VALUES)
        elif op == "delete":
            del parent[key]
        elif op == "add" and isinstance(parent, dict):
            parent[
                draw(st.sampled_from(["id", "meta", "extension", "text", "contained", "_status", "x"]))
            ] = draw(JSON_VALUES)
        elif op == "add" and isinstance(parent, list):
            parent.append(draw(JSON_VALUES))
        elif op == "wrap":
            parent[key] = [parent[key]]
        elif op == "unwrap" and isinstance(parent[key], list):
            parent[key] = parent[key][0] if parent[key] else {}
        elif op == "type" and isinstance(parent[key], dict):
            parent[key]["resourceType"] = draw(st.sampled_from(RESOURCE_TYPES))
        elif op == "duplicate" and isinstance(parent, list):
            parent.insert(key, json.loads(json.dumps(parent[key])))
    return document


@st.composite
def json_text(draw: Draw, document: Any) -> bytes:
    """A document as bytes, sometimes damaged at the text level (truncated, a byte changed, duplicated key,
    an overlong number, nesting far too deep)."""
    data = json.dumps(document).encode()
    op = draw(st.sampled_from(["none", "none", "truncate", "flip", "number", "deep", "bom", "dupkey"]))
    if op == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif op == "flip" and data:
        i = draw(st.integers(0, len(data) - 1))
        data = (
            data[:i]
            + draw(st.sampled_from([b"\x00", b"\xff", b"{", b"]", b'"', b"\\", b"1e99999"]))
            + data[i + 1 :]
        )
    elif op == "number":
        data = data.replace(
            b"}", b', "valueDecimal": ' + b"9" * draw(st.sampled_from([20, 400, 5000])) + b".5}", 1
        )
    elif op == "deep":
        depth = draw(st.sampled_from([64, 1000, 100000]))
        data = data[:-1] + b', "extension": ' + b"[" * depth + b"]" * depth + b"}"
    elif op == "bom":
        data = b"\xef\xbb\xbf" + data
    elif op == "dupkey":
        data = data.replace(b"{", b'{"resourceType": "Patient", ', 1)
    return data


# ------------------------------------------------------------------------- payer files (X12, CSV)

PAYER_SPECIAL = ["*", ":", "^", "~", ",", ";", "\t", '"', "\n", "\r\n", "\r", "\x00", "\ufeff", "#", " ", "é"]
PAYER_VALUES = [
    "9" * 19,
    "9" * 400,
    "-1",
    "0",
    "1e999",
    "NaN",
    "20251399",
    "2025-02-30",
    "02/30/2025",
    "99999999",
    "20250301-20240101",
    "RD8",
    "D8",
    "",
    "x" * 5000,
    '"',
    '""',
]


def _lines(text: str, terminator: str) -> list[str]:
    return text.split(terminator)


@st.composite
def mutated_records(draw: Draw, seeds: Sequence[str], terminator: str, element: str) -> str:
    """A delimited text (X12 segments, CSV rows) with records and elements duplicated, deleted, replaced by
    odd values, characters flipped and inserted, the whole cut short or a record repeated very often."""
    text = draw(st.sampled_from(seeds))
    for _ in range(draw(st.integers(1, 4))):
        records = _lines(text, terminator)
        i = draw(st.integers(0, max(len(records) - 1, 0)))
        op = draw(
            st.sampled_from(["dup", "many", "delete", "value", "element", "flip", "insert", "truncate"])
        )
        if op == "dup":
            records.insert(i, records[i])
        elif op == "many":
            records[i:i] = [records[i]] * draw(st.sampled_from([50, 3000]))
        elif op == "delete":
            del records[i]
        elif op in ("value", "element"):
            elements = records[i].split(element)
            j = draw(st.integers(0, max(len(elements) - 1, 0)))
            if op == "value":
                elements[j] = draw(st.one_of(st.sampled_from(PAYER_VALUES), st.text(max_size=6)))
            elif draw(st.booleans()):
                elements.insert(j, elements[j])
            elif len(elements) > 1:
                del elements[j]
            records[i] = element.join(elements)
        elif op in ("flip", "insert") and text:
            k = draw(st.integers(0, len(text) - 1))
            piece = draw(st.one_of(st.sampled_from(PAYER_SPECIAL), st.characters(exclude_categories=("Cs",))))
            text = text[:k] + piece + text[k + (op == "flip") :]
            continue
        elif op == "truncate":
            text = text[: draw(st.integers(0, len(text)))]
            continue
        text = terminator.join(records)
    return text
