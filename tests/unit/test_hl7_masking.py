"""Masking an HL7 v2 message for a reader without clinical values: structure and codes stay, patient and
clinical content goes, whatever the message does with its delimiters."""

from __future__ import annotations

import pytest

from gateway.adapters.hl7v2.masking import MASK, field_separator, mask_segment, masked_message
from tests.hl7_messages import anc_oru

PHI = ("Testperson", "Alex", "19800203", "MRN-77", "1.2")


def test_an_oru_keeps_header_segment_names_and_codes_and_loses_patient_and_value() -> None:
    lines = masked_message(anc_oru("C9", "MRN-77"))
    body = "\r".join(lines[1:])  # everything after the header
    assert [line[:3] for line in lines] == ["MSH", "PID", "ORC", "OBR", "OBX"]
    assert lines[0].startswith("MSH|^~\\&|LABSYS|CITY LAB|") and "ORU^R01^ORU_R01|C9|P|2.5.1" in lines[0]
    assert lines[1] == f"PID|1||{MASK}||{MASK}||{MASK}|{MASK}"
    obx = lines[4].split("|")
    assert obx[2] == "NM" and obx[3] == "751-8^Neutrophils^LN" and obx[6] == "10*3/uL^^UCUM"
    assert obx[5] == MASK and obx[8] == MASK  # the value and its abnormal flag
    assert not [value for value in PHI if value in body]


@pytest.mark.parametrize(
    ("segment", "expected"),
    [
        # An escaped field separator is text inside the field: the field is masked whole.
        ("NTE|1|L|Patient says \\F\\ call Alex at home", f"NTE|1|L|{MASK}"),
        # Repeats and components of a masked field leave no shape behind.
        ("PID|1||A1^^^H^MR~B2^^^H^SS||Doe^Jane~Roe^Janie", f"PID|1||{MASK}||{MASK}"),
        # NK1: a relative's name, address and phone.
        ("NK1|1|Doe^John|SPO|1 Main St^^Town|555-0100", f"NK1|1|{MASK}|{MASK}|{MASK}|{MASK}"),
        # A segment the list does not know (a Z-segment) is masked but for its name.
        ("ZPI|secret|more", f"ZPI|{MASK}|{MASK}"),
        # The HL7 null is kept (it says delete, not who); empty fields keep their positions.
        ('PID|1||""||||', 'PID|1||""||||'),
        # Not a segment: no name, a lower-case name, a name not followed by the separator.
        ("Doe^Jane was here", MASK),
        ("pid|1||x", MASK),
        ("PIDX|1|Doe", MASK),
    ],
)
def test_segments_are_masked_field_by_field(segment: str, expected: str) -> None:
    assert mask_segment(segment, "|") == expected


def test_a_very_long_field_is_replaced_not_kept_in_part() -> None:
    name = "A" * 200_000
    (_, pid) = masked_message(f"MSH|^~\\&|S|F|R|F|20240101||ADT^A01|C1|P|2.5\rPID|1||M1||{name}^B")
    assert pid == f"PID|1||{MASK}||{MASK}" and len(pid) < 40


def test_the_separator_is_the_one_msh_declares() -> None:
    raw = "MSH#^~\\&#S#F#R#F#20240101##ORU^R01#C1#P#2.5\nPID#1##M1##Doe^Jane\r\nOBX#1#NM#751-8^^LN##9.9"
    assert field_separator(raw) == "#"
    lines = masked_message(raw)
    assert lines[1] == f"PID#1##{MASK}##{MASK}"
    assert lines[2] == f"OBX#1#NM#751-8^^LN##{MASK}"
    # A segment written with another separator than the header's is not trusted to split.
    assert masked_message(raw.replace("PID#1", "PID|1"))[1] == MASK


def test_odd_encoding_characters_and_no_header() -> None:
    raw = "MSH§^~\\&§S§F§R§F§20240101§§ORU^R01§C1§P§2.5\rOBX§1§ST§X^^L§§Jane Doe is fine"
    assert masked_message(raw)[1] == f"OBX§1§ST§X^^L§§{MASK}"
    # Without an MSH the separator is taken as `|`, and nothing else is trusted.
    assert masked_message("PID|1||M1||Doe\rjunk") == [f"PID|1||{MASK}||{MASK}", MASK]
    assert masked_message("") == []
