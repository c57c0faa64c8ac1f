"""Caps on what one HL7 v2 message may make the tokenizer hold, applied after unescaping.

Each cap refuses the message with a `LimitExceeded` naming the segment (and its occurrence) and the
field, with the HL7 table 0357 code for the ERR segment; nothing over a cap is ever expanded.
"""

from __future__ import annotations

import dataclasses

import pytest

from gateway.adapters.hl7v2 import datatypes
from gateway.adapters.hl7v2.datatypes import Context
from gateway.adapters.hl7v2.er7 import ER7Error, LimitExceeded, Limits, Message, Value, limits_in_force
from tests.unit.hl7_tables import YamlTables

MSH = "MSH|^~\\&|LAB|ACME|GW|HOSP|20240301083000-0500||ORU^R01^ORU_R01|CTRL1|P|2.5.1"
PID = "PID|1||12345^^^ACME&1.2.3&ISO^MR||Doe^Jane"
SMALL = Limits(
    segments=5,
    fields=30,
    repetitions=3,
    components=25,
    line_skip=10,
    number_digits=12,
    decoded_bytes=2000,
)


def refused(text: str, limits: Limits = SMALL) -> LimitExceeded:
    with pytest.raises(LimitExceeded) as caught:
        Message(text, limits)
    return caught.value


def test_a_message_within_every_cap_is_read() -> None:
    message = Message("\r".join([MSH, PID, "NTE|1||line\\.sp5\\next"]), SMALL)
    assert message.segments[2][3].text == "line" + "\n" * 5 + "next"


def test_line_skip_over_the_cap_is_refused_not_expanded() -> None:
    error = refused("\r".join([MSH, PID, "OBX|1|TX|x^y^L||a", "NTE|1||before\\.sp100000000\\after"]))
    assert (error.segment, error.sequence, error.field, error.code) == ("NTE", 1, 3, "104")
    assert "100000000" in str(error) and "10" in str(error)


def test_line_skip_is_checked_with_the_declared_escape_character() -> None:
    msh = MSH.replace("^~\\&", "^~#&", 1)
    error = refused("\r".join([msh, "NTE|1||x#.sp 999#y"]))
    assert (error.segment, error.field) == ("NTE", 3)


def test_line_skip_in_a_value_read_lazily_is_capped_too() -> None:
    """A Value made without a Message (no eager check) still never expands past the cap in force."""
    with limits_in_force(SMALL), pytest.raises(LimitExceeded):
        _ = Value("a\\.sp50000000\\b").text


def test_too_many_segments() -> None:
    error = refused("\r".join([MSH, PID, *[f"OBX|{n}|NM|x^y^L||1" for n in range(1, 5)]]))
    assert (error.segment, error.sequence, error.code) == ("OBX", 4, "104")


def test_too_many_fields_in_a_segment() -> None:
    error = refused("\r".join([MSH, PID, "ZZZ" + "|x" * 31]))
    assert (error.segment, error.sequence, error.field, error.code) == ("ZZZ", 1, 31, "104")


def test_too_many_repetitions_in_a_field() -> None:
    error = refused("\r".join([MSH, "PID|1||" + "~".join(f"{n}^^^A^MR" for n in range(4))]))
    assert (error.segment, error.field, error.code) == ("PID", 3, "104")


def test_too_many_components_or_subcomponents() -> None:
    assert refused("\r".join([MSH, "PID|1||" + "^" * 25])).field == 3
    assert refused("\r".join([MSH, "PID|1||1^^^" + "&" * 25])).field == 3


def test_decoded_size_counts_what_escapes_expand_to() -> None:
    lines = [MSH, *[f"NTE|{n}||x\\.sp90\\" + "y" * 200 for n in range(1, 5)]]
    limits = dataclasses.replace(SMALL, segments=50, line_skip=100, decoded_bytes=1200)
    assert len("\r".join(lines)) < 1200  # the text alone is under the cap...
    error = refused("\r".join(lines), limits)
    assert error.code == "104" and error.segment == "NTE"  # ...what it decodes to is not


def test_nul_inside_a_field_is_refused_naming_the_field() -> None:
    error = refused("\r".join([MSH, PID, "OBX|1|ST|x^y^L||a\x00b"]))
    assert (error.segment, error.sequence, error.field, error.code) == ("OBX", 1, 5, "102")


def test_hex_escape_of_a_nul_is_refused_too() -> None:
    error = refused("\r".join([MSH, PID, "NTE|1||a\\X00\\b"]))
    assert (error.segment, error.field, error.code) == ("NTE", 3, "102")


@pytest.mark.parametrize(
    ("header", "field"),
    [
        (MSH.replace("|", "\x00"), 1),  # NUL as the field separator
        (MSH.replace("^~\\&", "^~\\&\x00", 1), 2),  # NUL as MSH-2's fifth (truncation) character
    ],
)
def test_nul_as_a_delimiter_in_msh_1_or_2_is_refused(header: str, field: int) -> None:
    with pytest.raises(ER7Error) as raised:
        Message("\r".join([header, PID]))
    assert (raised.value.segment, raised.value.field, raised.value.code) == ("MSH", field, "102")


def test_nul_padding_after_the_last_segment_is_dropped() -> None:
    message = Message("\r".join([MSH, PID]) + "\r\x00\x00\x00", SMALL)
    assert message.names() == ["MSH", "PID"]


def test_limit_errors_are_tokenizer_errors() -> None:
    """The pipeline answers every ER7Error with an AR: a cap is one more reason."""
    assert issubclass(LimitExceeded, ER7Error)


# --- numbers --------------------------------------------------------------------------------------


def number(raw: str, limits: Limits = SMALL) -> object:
    with limits_in_force(limits):
        return datatypes.number(raw, Context(YamlTables()))


def test_number_within_the_digit_cap() -> None:
    assert number("123456789012") == 123456789012
    assert str(number("+0001234.5600")) == "1234.5600"  # leading zeros are not digits of the value


@pytest.mark.parametrize("raw", ["9" * 13, "1" * 4300, "0." + "1" * 13, "9" * 5000 + ".5"])
def test_number_over_the_digit_cap_is_refused(raw: str) -> None:
    with pytest.raises(LimitExceeded) as caught:
        number(raw)
    assert caught.value.code == "104"
    assert caught.value.value == raw  # what the pipeline looks for to name the field


def test_an_integer_beyond_64_bits_keeps_its_digits_as_a_decimal_literal() -> None:
    """With a cap raised past 18 digits, big integers must still serialize (orjson stops at 64 bits)."""
    found = number("123456789012345678901234", Limits(number_digits=30))
    assert str(found) == "123456789012345678901234"
    assert isinstance(found, float)
