"""Grouping segments by message structure with hl7apy's definitions."""

from __future__ import annotations

from gateway.adapters.hl7v2.er7 import Message
from gateway.adapters.hl7v2.structure import Group, group_message, nearest_version

MSH = "MSH|^~\\&|LAB|ACME|GW|HOSP|20240301||ORU^R01^ORU_R01|C1|P|2.5.1"


def grouped(*segments: str) -> Group:
    message = Message("\r".join([MSH, *segments]))
    root = group_message(message.segments, message.version, "ORU_R01")
    assert root is not None
    return root


def test_notes_belong_to_the_result_they_follow() -> None:
    root = grouped("PID|1||1", "OBR|1|P1", "NTE|1||order note", "OBX|1|NM|a", "NTE|1||about a", "OBX|2|NM|b")
    (order,) = root.find("ORDER_OBSERVATION")
    assert [n[3].text for n in order.segments("NTE")] == ["order note"]
    first, second = order.groups("OBSERVATION")
    assert [s.name for s in first.all_segments()] == ["OBX", "NTE"]
    assert [s.name for s in second.all_segments()] == ["OBX"]


def test_results_after_a_specimen_belong_to_the_specimen() -> None:
    root = grouped("PID|1||1", "OBR|1|P1", "OBX|1|NM|a", "SPM|1|S1", "OBX|2|CWE|specimen-quality")
    (order,) = root.find("ORDER_OBSERVATION")
    (specimen,) = order.groups("SPECIMEN")
    assert [s.name for s in specimen.all_segments()] == ["SPM", "OBX"]


def test_repeating_orders_start_new_groups() -> None:
    root = grouped("PID|1||1", "OBR|1|P1", "OBX|1|NM|a", "OBR|2|P2", "OBX|1|NM|b", "OBX|2|NM|c")
    orders = list(root.find("ORDER_OBSERVATION"))
    assert [len(o.groups("OBSERVATION")) for o in orders] == [1, 2]


def test_unknown_segments_are_kept_where_they_stand() -> None:
    root = grouped("PID|1||1", "ZPI|1|custom", "OBR|1|P1")
    assert [s.name for s in root.all_unexpected()] == ["ZPI"]
    assert [s.name for s in root.all_segments()] == ["MSH", "PID", "ZPI", "OBR"]


def test_later_version_segments_use_the_newer_structure() -> None:
    # PRT exists from 2.7 on; a 2.5.1 message that uses it is read with the newest definitions.
    root = grouped("PID|1||1", "PRT|1|AD", "OBR|1|P1", "OBX|1|NM|a")
    assert list(root.all_unexpected()) == []


def test_version_fallback() -> None:
    assert nearest_version("2.5.1") == "2.5.1"
    assert nearest_version("2.9") == "2.8.2"
    assert nearest_version("") == "2.5"
