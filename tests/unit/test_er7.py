"""The ER7 tokenizer: what real senders write."""

from __future__ import annotations

import pytest

from gateway.adapters.hl7v2.er7 import ER7Error, Message, Value, split_batch

MSH = "MSH|^~\\&|LAB|ACME|GW|HOSP|20240301083000-0500||ORU^R01^ORU_R01|CTRL1|P|2.5.1"
PID = "PID|1||12345^^^ACME&1.2.3&ISO^MR||Doe^Jane"


@pytest.mark.parametrize(
    "separator",
    ["\r", "\n", "\r\n", "\r\r\n"],  # CR (standard), LF, CRLF, and blank lines in between
)
def test_any_segment_separator(separator: str) -> None:
    message = Message(separator.join([MSH, PID, "OBX|1|NM|718-7^Hgb^LN||13.2|g/dL"]) + separator)
    assert message.names() == ["MSH", "PID", "OBX"]


def test_mixed_separators_and_bom() -> None:
    message = Message("\ufeff" + MSH + "\r\n" + PID + "\n" + "OBX|1|ST|x^y^L||a" + "\r")
    assert message.names() == ["MSH", "PID", "OBX"]
    assert message.control_id == "CTRL1"


def test_header_fields() -> None:
    message = Message(MSH + "\r" + PID)
    assert (message.message_code, message.trigger, message.structure) == ("ORU", "R01", "ORU_R01")
    assert message.version == "2.5.1"
    assert message.sender == "LAB|ACME"
    assert message.msh[9].c(1) == "ORU"  # MSH field numbers match HL7 (MSH-1 is the separator)


def test_components_subcomponents_and_repetitions() -> None:
    message = Message(MSH + "\r" + "PID|1||111^^^A&1.2&ISO^MR~222^^^B^SS||Doe^Jane")
    pid = message.segments[1]
    first, second = pid.repetitions(3)
    assert first.c(1) == "111"
    assert first.part(4).c(2) == "1.2"  # CX-4 is an HD: its parts are subcomponents
    assert first.c(4) == "A"  # a component read as text stops at the first subcomponent
    assert second.c(5) == "SS"


def test_escape_sequences_are_resolved() -> None:
    value = Value(r"a\F\b\S\c\T\d\R\e\E\f\X41\\.br\g\H\h\N\ ")
    assert value.text == "a|b^c&d~e\\fA\ngh "


def test_declared_encoding_characters_are_honoured() -> None:
    message = Message("MSH#$%@*#LAB#ACME#GW#HOSP#20240301##ORU$R01#C9#P#2.5\rPID#1##777$$$A*1.2*ISO")
    assert message.control_id == "C9"
    assert message.segments[1][3].part(4).c(2) == "1.2"


def test_explicit_null_is_empty() -> None:
    message = Message(MSH + '\rPID|1||""')
    assert not message.segments[1][3]
    assert message.segments[1][3].is_null


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("", "100"),  # nothing
        ("PID|1||123", "100"),  # no MSH
        ("MSH|^~|LAB", "102"),  # too few encoding characters
        ("MSHA^~\\&|LAB", "102"),  # alphanumeric field separator
        ("\x00\x01\x02garbage", "100"),  # binary junk
    ],
)
def test_malformed_input_raises_with_a_table_0357_code(text: str, code: str) -> None:
    with pytest.raises(ER7Error) as raised:
        Message(text)
    assert raised.value.code == code


def test_doubled_escape_in_msh2_is_read_as_standard() -> None:
    message = Message("MSH|^~\\\\&|A|B|C|D|2024||ORU^R01|X|P|2.6\rPID|1||1^^^A&1&ISO")
    assert message.encoding.subcomponent == "&"
    assert message.segments[1][3].part(4).c(1) == "A"


def test_batch_files_split_into_messages() -> None:
    text = "\r".join(
        ["FHS|^~\\&", "BHS|^~\\&", MSH, PID, MSH.replace("CTRL1", "CTRL2"), PID, "BTS|2", "FTS|1"]
    )
    messages = split_batch(text)
    assert [Message(m).control_id for m in messages] == ["CTRL1", "CTRL2"]
