"""ACKs and NAKs: addressing, the two ERR layouts, escaping, foreign encoding characters, salvaged headers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message

from gateway.adapters.hl7v2.ack import AckCode, AckError, build_ack, build_nak, hl7_timestamp
from gateway.adapters.hl7v2.er7 import ER7Error, Message, Segment

ORU_251 = (
    "MSH|^~\\&|LAB^1.2.3^ISO|HOSP|GW|CLINIC|20240101120000||ORU^R01^ORU_R01|MSG001|P|2.5.1\r"
    "PID|1||MRN123^^^HOSP^MR||DOE^JANE\r"
    "OBR|1||ORD1|GLU^Glucose\r"
    "OBX|1|NM|GLU^Glucose||5.4|mmol/L\r"
)
ADT_23 = "MSH|^~\\&|ADT|HOSP|GW|CLINIC|20240101120000||ADT^A01|A23-1|T|2.3\rPID|1||MRN1\r"
TWO_ERRORS = [
    AckError("101", "OBX-5 is required", segment="OBX", sequence=1, field=5),
    AckError("103", "Unknown unit", severity="W", segment="OBX", sequence=1, field=6, component=1),
]


def ack_of(text: str, code: AckCode = "AA", errors: list[AckError] | None = None) -> Message:
    ack = build_ack(Message(text), code, errors=errors or [], control_id="ACK-1", timestamp="20240102030405")
    assert ack.endswith("\r") and "\n" not in ack
    return Message(ack)


def segments(message: Message, name: str) -> list[Segment]:
    return [s for s in message.segments if s.name == name]


def test_aa_swaps_addressing_and_acknowledges_the_original_control_id() -> None:
    ack = ack_of(ORU_251)

    assert ack.names() == ["MSH", "MSA"]
    msh = ack.msh
    assert [msh.raw(n) for n in (3, 4, 5, 6)] == ["GW", "CLINIC", "LAB^1.2.3^ISO", "HOSP"]
    assert msh.raw(7) == "20240102030405"
    assert msh.raw(9) == "ACK^R01^ACK"
    assert (ack.control_id, msh.raw(11), msh.raw(12)) == ("ACK-1", "P", "2.5.1")
    msa = segments(ack, "MSA")[0]
    assert (msa.raw(1), msa.raw(2)) == ("AA", "MSG001")


def test_aa_is_a_valid_ack_for_hl7apy_at_strict_level() -> None:
    ack = build_ack(Message(ORU_251), "AA", control_id="ACK-1", timestamp="20240102030405")

    parsed = parse_message(ack, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    parsed.validate()
    assert parsed.name == "ACK"
    assert (parsed.msa.msa_1.value, parsed.msa.msa_2.value) == ("AA", "MSG001")
    assert parsed.msh.msh_5.to_er7() == "LAB^1.2.3^ISO"


def test_from_2_5_each_error_is_its_own_err_with_location_code_severity_and_message() -> None:
    ack = ack_of(ORU_251, "AE", TWO_ERRORS)

    assert ack.names() == ["MSH", "MSA", "ERR", "ERR"]
    assert segments(ack, "MSA")[0].raw(3) == ""  # MSA-3 is deprecated from 2.5: the text is in ERR-8
    first, second = segments(ack, "ERR")
    assert first.raw(2) == "OBX^1^5"
    assert first.raw(3) == "101^Required field missing^HL70357"
    assert (first.raw(4), first[8].text) == ("E", "OBX-5 is required")
    assert second.raw(2) == "OBX^1^6^^1"
    assert (second[3].c(1), second.raw(4), second[8].text) == ("103", "W", "Unknown unit")


def test_err_segments_validate_in_hl7apy() -> None:
    ack = build_ack(Message(ORU_251), "AE", errors=TWO_ERRORS, control_id="A", timestamp="20240102030405")

    parsed = parse_message(ack, validation_level=VALIDATION_LEVEL.STRICT, find_groups=True)
    parsed.validate()
    codes = [err.err_3.cwe_1.value for err in parsed.children if err.name == "ERR"]
    assert codes == ["101", "103"]


def test_before_2_5_errors_are_repetitions_of_err_1_and_msa_3_has_the_first_text() -> None:
    ack = ack_of(ADT_23, "AE", TWO_ERRORS)

    assert ack.names() == ["MSH", "MSA", "ERR"]  # ERR does not repeat in a 2.3 ACK
    assert ack.msh.raw(9) == "ACK^A01"  # no MSH-9.3 before 2.3.1
    assert ack.msh.raw(11) == "T"
    msa = segments(ack, "MSA")[0]
    assert (msa.raw(1), msa.raw(2), msa[3].text) == ("AE", "A23-1", "OBX-5 is required")
    eld = segments(ack, "ERR")[0].repetitions(1)
    assert [e.raw for e in eld] == [
        "OBX^1^5^101&OBX-5 is required&HL70357",
        "OBX^1^6^103&Unknown unit&HL70357",
    ]
    parsed = parse_message(
        build_ack(Message(ADT_23), "AE", errors=TWO_ERRORS, control_id="A", timestamp="2024")
    )
    assert len(parsed.err.err_1) == 2


@pytest.mark.parametrize(
    "text",
    [
        "field | component ^ sub & rep ~ escape \\ end",
        "line one\rline two\nline three",  # CR/LF would split the segment
        "frame \x1c\r end",  # an MLLP end block inside a text must not end the frame
        "\\F\\ already looks escaped",
    ],
)
@pytest.mark.parametrize("message", [ORU_251, ADT_23], ids=["err-segment", "err-1"])
def test_error_text_is_escaped_and_reads_back_unchanged(message: str, text: str) -> None:
    raw = build_ack(Message(message), "AE", errors=[AckError("207", text)], control_id="A", timestamp="2024")

    assert "\x1c" not in raw and "\n" not in raw
    ack = Message(raw)
    assert len(ack.segments) == 3
    err = segments(ack, "ERR")[0]
    read_back = err[8].text if message is ORU_251 else err.get(1).part(4).c(2)
    assert read_back == text


def test_escaped_text_reads_back_through_hl7apy() -> None:
    text = "a|b^c&d~e"
    raw = build_ack(Message(ORU_251), "AE", errors=[AckError("207", text)], control_id="A", timestamp="2024")

    parsed = parse_message(raw, validation_level=VALIDATION_LEVEL.STRICT)
    assert parsed.err.err_8.to_er7() == "a\\F\\b\\S\\c\\T\\d\\R\\e"
    assert len(parsed.err.children) == 3  # ERR-3, ERR-4, ERR-8: the delimiters did not split anything


def test_v2_7_truncation_character_is_kept_in_msh_2_and_escaped_in_text() -> None:
    message = ORU_251.replace("^~\\&", "^~\\&#", 1).replace("|2.5.1", "|2.7", 1)

    raw = build_ack(
        Message(message), "AE", errors=[AckError("104", "Lot #5 too long")], control_id="A", timestamp="2024"
    )

    assert raw.startswith("MSH|^~\\&#|GW|")
    assert "Lot \\P\\5 too long" in raw
    parsed = parse_message(raw, validation_level=VALIDATION_LEVEL.STRICT)
    parsed.validate()
    assert parsed.msh.msh_12.to_er7() == "2.7"


@pytest.mark.parametrize("control", ["\x0b", "\x1c", "\x01"])
def test_a_control_character_after_msh_2s_delimiters_is_not_echoed_as_a_truncation_character(
    control: str,
) -> None:
    """Found by fuzzing: MSH-2 `^~\\&<VT>` came back verbatim, putting an MLLP start block in the ACK."""
    message = ORU_251.replace("^~\\&", "^~\\&" + control, 1)

    raw = build_ack(Message(message), "AA", control_id="A", timestamp="2024")

    assert raw.startswith("MSH|^~\\&|GW|") and control not in raw


def test_dollar_component_separator_is_used_throughout_the_ack() -> None:
    message = "MSH|$~\\&|LAB|HOSP|GW|CLINIC|20240101||ADT$A08$ADT_A01|C1|P|2.5.1\rPID|1||MRN1$$$HOSP\r"
    error = AckError("102", "cost $5 ^ not a component", segment="PID", sequence=1, field=3, component=4)

    raw = build_ack(Message(message), "AE", errors=[error], control_id="A", timestamp="2024")

    assert "MSH|$~\\&|GW|CLINIC|LAB|HOSP|2024||ACK$A08$ACK|A|P|2.5.1\r" in raw
    assert "MSA|AE|C1\r" in raw
    ack = Message(raw)
    err = segments(ack, "ERR")[0]
    assert err.raw(2) == "PID$1$3$$4"
    assert err[3].c(1) == "102"
    assert err[8].text == "cost $5 ^ not a component"
    parsed = parse_message(raw, validation_level=VALIDATION_LEVEL.STRICT)
    assert parsed.err.err_2.erl_5.value == "4"


def test_every_delimiter_replaced_still_round_trips() -> None:
    message = "MSH#$*/%#LAB#HOSP#GW#CLINIC#2024##ORU$R01$ORU_R01#X1#P#2.6\rPID#1\r"
    text = "all of # $ * / % and ^ ~ \\ & |"

    raw = build_ack(Message(message), "AE", errors=[AckError("207", text)], control_id="A", timestamp="2024")

    assert raw.startswith("MSH#$*/%#GW#CLINIC#LAB#HOSP#2024##ACK$R01$ACK#A#P#2.6\r")
    assert segments(Message(raw), "ERR")[0][8].text == text


def test_nak_for_binary_junk_uses_standard_encoding_and_version_2_5() -> None:
    junk = bytes(range(256)).decode("latin-1") * 3

    raw = build_nak(junk, "Not an HL7 v2 message", control_id="N-1", timestamp="20240102030405")

    ack = Message(raw)
    assert ack.msh.raw(2) == "^~\\&"
    assert [ack.msh.raw(n) for n in (3, 4, 5, 6)] == ["", "", "", ""]
    assert (ack.control_id, ack.version, ack.msh.raw(9)) == ("N-1", "2.5", "ACK^^ACK")
    msa = segments(ack, "MSA")[0]
    assert (msa.raw(1), msa.raw(2)) == ("AR", "")
    err = segments(ack, "ERR")[0]
    assert (err.raw(2), err[3].c(1), err[8].text) == ("MSH^1", "100", "Not an HL7 v2 message")
    parse_message(raw)  # well-formed enough for another parser


def test_nak_for_broken_msh_2_is_addressed_from_the_rest_of_the_header() -> None:
    raw_input = "MSH|^~|LAB|HOSP|GW|CLINIC|20240101||ADT^A01|CTL9|P|2.4\rPID|1\r"
    with pytest.raises(ER7Error) as rejected:
        Message(raw_input)
    error = rejected.value

    raw = build_nak(
        raw_input,
        str(error),
        code=error.code,
        segment=error.segment,
        field=error.field,
        control_id="N",
        timestamp="2024",
    )

    ack = Message(raw)
    assert [ack.msh.raw(n) for n in (3, 4, 5, 6)] == ["GW", "CLINIC", "LAB", "HOSP"]
    assert (ack.version, ack.msh.raw(9)) == ("2.4", "ACK^A01^ACK")
    msa = segments(ack, "MSA")[0]
    assert (msa.raw(1), msa.raw(2)) == ("AR", "CTL9")
    # 2.4 layout: ELD in ERR-1, pointing at MSH-2 with the tokenizer's code (102, data type error)
    assert segments(ack, "ERR")[0].raw(1).startswith("MSH^1^2^102&Invalid encoding characters")


def test_nak_finds_the_header_after_leading_junk_and_keeps_its_encoding() -> None:
    raw_input = "\x00\x0bjunk\rMSH|$~\\&|LAB|HOSP|GW|CLINIC|2024||ORU$R01|C7|P|2.6\rbad segment\r"

    raw = build_nak(
        raw_input, "Segment 2 has an invalid name", control_id="N", timestamp="2024", segment="bad"
    )

    assert raw.startswith("MSH|$~\\&|GW|CLINIC|LAB|HOSP|2024||ACK$R01$ACK|N|P|2.6\r")
    err = segments(Message(raw), "ERR")[0]
    assert err.raw(2) == "bad"  # segment known, occurrence not
    assert err[3].c(1) == "100"


def test_ack_error_from_tokenizer_error_points_at_the_field() -> None:
    with pytest.raises(ER7Error) as rejected:
        Message("MSH|^^^^|X\r")

    error = AckError.from_er7(rejected.value)

    assert (error.code, error.segment, error.sequence, error.field) == ("102", "MSH", 1, 2)


def test_hl7_timestamp_carries_the_utc_offset() -> None:
    moment = datetime(2024, 3, 4, 5, 6, 7, tzinfo=UTC)

    assert hl7_timestamp(moment) == "20240304050607+0000"
    assert hl7_timestamp(moment.astimezone(timezone(timedelta(hours=-5)))) == "20240304000607-0500"
