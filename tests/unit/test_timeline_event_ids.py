"""Event ids of the live timeline: opaque, bound to their Patient, readable across a change of KEK."""

from __future__ import annotations

import os

import pytest

from gateway.auth.key_encryption import KeyEncryptionKey
from gateway.exceptions import BadRequest
from gateway.service.pharmacist.timeline_stream import EVENT_ID_LABEL, EventIds, stream_requested


def ids(*keys: bytes) -> EventIds:
    return EventIds(KeyEncryptionKey(list(keys)).derived(EVENT_ID_LABEL))


def test_an_id_names_its_number_for_its_patient_only() -> None:
    kek = os.urandom(32)
    made = ids(kek)
    for seq in (0, 1, 2, 41, 2**40):
        text = made.encode("p-1", seq)
        assert len(text) == 22
        assert ids(kek).decode("p-1", text) == seq  # another process with the same KEK agrees
        with pytest.raises(BadRequest):
            made.decode("p-2", text)
    # Consecutive numbers look unrelated: nothing tells how many were skipped between two ids.
    assert len({made.encode("p-1", n)[:4] for n in range(50)}) > 40


def test_malformed_and_foreign_ids_are_refused() -> None:
    made = ids(os.urandom(32))
    for text in ("", "nope", "1", "A" * 22, "A" * 23, "!" * 22, ids(os.urandom(32)).encode("p-1", 3)):
        with pytest.raises(BadRequest):
            made.decode("p-1", text)


def test_ids_stay_readable_while_the_old_kek_is_listed() -> None:
    old, new = os.urandom(32), os.urandom(32)
    before = ids(old).encode("p-1", 7)
    assert ids(new, old).decode("p-1", before) == 7
    assert ids(new, old).encode("p-1", 7) != before  # new ids under the new KEK
    with pytest.raises(BadRequest):
        ids(new).decode("p-1", before)


def test_derived_keys_differ_by_label_and_never_are_the_kek() -> None:
    kek = os.urandom(32)
    ring = KeyEncryptionKey([kek])
    assert ring.derived("a") == KeyEncryptionKey([kek]).derived("a")
    assert ring.derived("a") != ring.derived("b")
    assert kek not in ring.derived("a")


def test_stream_parameter() -> None:
    assert stream_requested([("_stream", "true")])
    assert not stream_requested([("_stream", "false")]) and not stream_requested([])
    for bad in ([("_stream", "yes")], [("_stream", "true"), ("_stream", "true")]):
        with pytest.raises(BadRequest):
            stream_requested(bad)
