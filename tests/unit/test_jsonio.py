"""JSON that keeps decimals as written: `gateway.fhir.jsonio`."""

from __future__ import annotations

import copy
import math
import pickle

import orjson
import pytest

from gateway.fhir import jsonio
from gateway.fhir.extract import extract
from gateway.fhir.json_types import shape_of
from gateway.fhir.jsonio import DecimalLiteral, decimal_literal
from gateway.fhir.validation import Validator, validate_structure
from tests.factories import lab_observation

# Documents that come back byte for byte after loads -> dumps (written compactly, as dumps writes).
ROUND_TRIPS = [
    b"7.20",
    b"[7.20,0.100,1.0E3,-0.0,1e-7,2.5E+10,1E-05,0.0,-12.500]",
    b'{"a":{"b":[1,2.50,{"c":3.000}]},"d":"7.20 in a string stays a string"}',
    b"[12345678901234567890123,-98765432109876543210,18446744073709551615,-9223372036854775808]",
    b'{"valueDecimal":123456789012345678901234567890.000}',
    '{"n":0,"t":true,"f":false,"z":null,"s":"é😀"}'.encode(),
]


@pytest.mark.parametrize("document", ROUND_TRIPS)
def test_loads_then_dumps_gives_back_the_same_bytes(document: bytes) -> None:
    assert jsonio.dumps(jsonio.loads(document)) == document


def test_literals_written_as_sent() -> None:
    assert jsonio.dumps(jsonio.loads(b"[7.20, 0.100, 1.0E3, -0.0]")) == b"[7.20,0.100,1.0E3,-0.0]"


def test_orjson_alone_loses_what_jsonio_keeps() -> None:
    # The reason for this module: the gateway used orjson.loads/dumps on resources.
    assert orjson.dumps(orjson.loads(b"[7.20,0.100,1.0E3,12345678901234567890123]")) != (
        b"[7.20,0.100,1.0E3,12345678901234567890123]"
    )
    assert jsonio.dumps(jsonio.loads(b"[7.20,0.100,1.0E3,12345678901234567890123]")) == (
        b"[7.20,0.100,1.0E3,12345678901234567890123]"
    )


def test_parsed_decimals_are_floats_that_remember_their_literal() -> None:
    value, count, big = jsonio.loads(b"[7.20, 3, 12345678901234567890123]")
    assert isinstance(value, float) and type(value) is DecimalLiteral
    assert value.literal == "7.20" and str(value) == "7.20" and f"{value}" == "7.20"
    assert value == 7.2 and hash(value) == hash(7.2) and value < 7.3
    assert type(value * 2) is float and value * 2 == 14.4  # computed values have no written precision
    assert type(count) is int and count == 3
    assert big == 12345678901234567890123  # exact, where orjson gives a float
    assert repr(value) == "DecimalLiteral('7.20')"


def test_literals_survive_copies_and_pickling() -> None:
    document = jsonio.loads(b'{"v":[7.20,1.0E3]}')
    for copied in (copy.copy(document), copy.deepcopy(document), pickle.loads(pickle.dumps(document))):
        assert jsonio.dumps(copied) == b'{"v":[7.20,1.0E3]}'


def test_dumps_passes_options_and_plain_values_through() -> None:
    assert jsonio.dumps({"b": 7.2, "a": jsonio.loads(b"0.10")}, option=orjson.OPT_SORT_KEYS) == (
        b'{"a":0.10,"b":7.2}'
    )
    assert (
        jsonio.dumps({"big": 2**70, "ok": 2**63})
        == b'{"big":1180591620717411303424,"ok":9223372036854775808}'
    )
    with pytest.raises(TypeError):
        jsonio.dumps({"x": object()})
    with pytest.raises(TypeError):
        jsonio.dumps({"x": object(), "big": 2**70})


@pytest.mark.parametrize(
    "document",
    [
        b"",
        b"NaN",  # not JSON, though Python's json module takes it
        b"[Infinity]",
        b"-Infinity",
        b"1e400",  # beyond a double: orjson refuses it too
        b'"\\ud800"',  # a lone surrogate is not text
        b"\xff",  # not UTF-8
        b'"\xed\xa0\x80"',  # an encoded surrogate is not UTF-8 either
        b"[01]",
        b"[1.]",
        b"[.5]",
        b"[+1]",
        b'{"a":1,}',
        b'"a\x01"',  # control characters must be escaped
        b"[" * 5000 + b"]" * 5000,
        b"1" * 5000,
        "\ud800",  # a str with a lone surrogate
    ],
)
def test_loads_refuses_what_orjson_refuses(document: bytes | str) -> None:
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(document)
    with pytest.raises(jsonio.JSONDecodeError):
        jsonio.loads(document)


def test_loads_takes_what_orjson_takes() -> None:
    for document in (b' {"a" : [ 1 , 2.5 ] } ', b'"\\ud83d\\ude00"', b'"\\\\ud800"', b"[1e-400]", "[7.20]"):
        assert jsonio.loads(document) == orjson.loads(document)


# decimal_literal: what senders write -> the JSON number that keeps the written precision.
NORMALISED = [
    ("7.20", "7.20"),  # trailing zeros are precision: kept
    ("0.100", "0.100"),  # likewise
    ("+007.20", "7.20"),  # HL7 NM: a leading '+' and leading zeros are not JSON; the value is the same
    ("-007.20", "-7.20"),  # a minus sign stays
    (".5", "0.5"),  # JSON needs a digit before the point
    ("-.5", "-0.5"),  # and with a sign
    ("5.", "5"),  # a point without digits adds no precision: the integer 5
    ("007", "7"),  # an integer with leading zeros
    ("00", "0"),
    ("-0", "0"),  # an integer zero has no sign in JSON's integers as Python reads them
    ("-0.0", "-0.0"),  # a decimal negative zero stays as written
    ("0.000", "0.000"),  # three decimals of zero
    ("1.0E3", "1.0E3"),  # exponents stay as written (two significant figures)
    ("1e-7", "1e-7"),
    ("2.5E+10", "2.5E+10"),  # JSON allows the '+' in an exponent
    ("5.e3", "5e3"),  # "5." then an exponent: the point goes, the exponent keeps it a decimal
    ("+.5E-3", "0.5E-3"),
    (" 7.20 ", "7.20"),  # surrounding whitespace (fixed-width feeds) is not part of the number
    ("123456789012345678901234567890", "123456789012345678901234567890"),  # an exact big integer
    ("1e-400", "1e-400"),  # underflows to 0.0 but is finite: the literal is kept
]


@pytest.mark.parametrize(("written", "expected"), NORMALISED)
def test_decimal_literal_normalises_to_json(written: str, expected: str) -> None:
    value = decimal_literal(written)
    assert value is not None
    assert jsonio.dumps(value).decode() == expected
    is_integer = not any(c in expected for c in ".eE")
    assert type(value) is (int if is_integer else DecimalLiteral)
    assert value == float(expected) or math.isclose(value, float(expected))


@pytest.mark.parametrize(
    "written",
    [
        "",  # nothing
        " ",
        "+",  # a sign alone
        "-",
        ".",  # a point alone
        "-.",
        "e5",  # an exponent without a number
        ".e5",
        "1e",  # an exponent without digits
        "1.2.3",  # two points
        "1,5",  # a decimal comma is not a number here
        "1 000",  # nor a grouped number
        "1_000",  # Python's float() takes this; JSON does not
        "0x1F",
        "\u0661",  # an Arabic-Indic digit: Python's float() takes it too
        "NaN",
        "Infinity",
        "inf",
        "1e400",  # beyond the range of a double
        "7.2 mg",
        "<5",  # a comparator belongs in Quantity.comparator, not the number
    ],
)
def test_decimal_literal_refuses_what_is_not_a_number(written: str) -> None:
    assert decimal_literal(written) is None


@pytest.mark.parametrize("literal", ["+7.2", ".5", "5.", "07", "1_0", " 7", "NaN", "1e400", "x"])
def test_decimal_literal_type_only_takes_json_numbers(literal: str) -> None:
    with pytest.raises(ValueError):
        DecimalLiteral(literal)


def _observation_with_literals() -> dict[str, object]:
    obs = lab_observation("p1")
    text = orjson.dumps(obs).replace(b'"value":', b'"value":7.20,"x":', 1)
    parsed = jsonio.loads(text)
    parsed["valueQuantity"].pop("x")
    parsed["extension"] = [{"url": "http://example.org/precision", "valueDecimal": jsonio.loads(b"1.0E3")}]
    return dict(parsed)


def test_validation_takes_decimal_literals() -> None:
    obs = _observation_with_literals()
    assert type(obs["valueQuantity"]["value"]) is DecimalLiteral  # type: ignore[index]
    assert [i for i in Validator().validate(obs) if i.is_error] == []  # (dom-6 warns: no narrative)
    assert validate_structure(obs) == []


def test_a_decimal_literal_where_a_string_belongs_is_named_a_json_number() -> None:
    obs = lab_observation("p1")
    obs["status"] = jsonio.loads(b"1.50")
    (issue,) = [i for i in Validator().validate(obs) if i.is_error]
    assert issue.diagnostics == "Expected a JSON string, got a JSON number"
    assert issue.expression == ("Observation.status",)


def test_literal_and_plain_floats_share_a_shape() -> None:
    obs = _observation_with_literals()
    plain = orjson.loads(orjson.dumps(obs, default=float))
    assert shape_of(obs) == shape_of(plain)


def test_index_rows_do_not_depend_on_literals() -> None:
    obs = _observation_with_literals()
    assert extract(obs) == extract(orjson.loads(orjson.dumps(obs, default=float)))
