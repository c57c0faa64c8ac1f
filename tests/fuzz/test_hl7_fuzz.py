"""Fuzzing the HL7 v2 path with mutated corpus messages: the ER7 tokenizer, translation and validation
(pure), and the whole pipeline on both backends (through its commit and ACK).

Properties: nothing but the tokenizer's own `ER7Error` (or `LimitExceeded`, on the lazy paths) escapes;
every message gets an ACK that reads as HL7 with MSA-1 AA, AE or AR; an AA names stored versions.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from hypothesis import event, given
from hypothesis import strategies as st

from gateway.adapters.hl7v2.ack import build_ack, build_nak
from gateway.adapters.hl7v2.er7 import (
    DEFAULT_LIMITS,
    Encoding,
    ER7Error,
    LimitExceeded,
    Message,
    limits_in_force,
    split_batch,
    split_segments,
)
from gateway.adapters.hl7v2.translate import Translator
from gateway.fhir.profiles import ProfileSet
from gateway.fhir.validation import Validator
from gateway.mapping import files as mapping_files
from gateway.service.gateway import Gateway
from gateway.service.hl7.pipeline import Pipeline, Source, content_hash, decode, header_of
from gateway.store import resources as store
from tests.fuzz.conftest import HANG_SECONDS, fuzz
from tests.fuzz.mutations import corpus_messages, mutated_bytes, mutated_hl7

SEEDS = corpus_messages()
ROOT = Path(__file__).resolve().parents[2]
ACK_CODES = {"AA", "AE", "AR"}


@pytest.fixture(scope="module")
def preparer() -> Pipeline:
    """A pipeline that only prepares (no database), built like the gateway's from the shipped files."""
    translator = Translator(mapping_files.load(ROOT / "mappings"))
    return Pipeline.preparer(translator, Validator(ProfileSet.load(ROOT / "profiles")), DEFAULT_LIMITS)


def read_everything(message: Message) -> None:
    """Every header property and every field, repetition and component, as the mappings would read them."""
    for name in ("message_code", "trigger", "structure", "control_id", "version", "sender"):
        getattr(message, name)
    for segment in message.segments:
        for number in range(1, segment.field_count + 1):
            for value in segment.repetitions(number):
                value.text  # noqa: B018
                for component in range(1, min(value.components, 12) + 1):
                    value.c(component)
                    value.part(component).text  # noqa: B018
    list(message.segments[0].unread())


def assert_ack(ack: str, code: str) -> None:
    """The ACK is HL7 a sender can read: segments ended by CR, no NUL, LF or MLLP framing character
    (unless the sender declared it a delimiter: the ACK is written in the sender's own delimiters), an
    MSH declaring valid delimiters and one MSA whose MSA-1 is `code`. Header values the sender wrote are
    echoed as written (escapes such as \\X00\\ included), so the ACK is not run through the tokenizer's
    limits, which refuse those in what it receives."""
    assert code in ACK_CODES
    lines = split_segments(ack)
    assert ack.endswith("\r") and lines[0].startswith("MSH"), repr(ack[:200])
    encoding = Encoding.from_msh(lines[0])
    declared = {
        encoding.field,
        encoding.component,
        encoding.repetition,
        encoding.escape,
        encoding.subcomponent,
    }
    assert not (set(ack) & ({"\x00", "\n", "\x0b", "\x1c"} - declared)), repr(ack[:200])
    msa = [line.split(encoding.field) for line in lines if line.startswith("MSA")]
    assert len(msa) == 1 and msa[0][1] == code, repr(ack[:200])


@fuzz(small=150, long=10000)
@given(text=mutated_hl7(SEEDS))
def test_the_tokenizer_refuses_or_reads_anything(text: str) -> None:
    header_of(text)
    content_hash(text)
    split_batch(text)
    try:
        message = Message(text)
    except ER7Error:
        return
    try:
        with limits_in_force(DEFAULT_LIMITS):
            read_everything(message)
    except LimitExceeded:
        pass


@fuzz(small=40)
@given(data=st.data())
def test_bytes_decode_to_text_whatever_they_hold(data: st.DataObject) -> None:
    raw = data.draw(mutated_bytes(data.draw(mutated_hl7(SEEDS, max_mutations=2))))
    assert isinstance(decode(raw), str)


@fuzz(small=60, long=3000)
@given(text=mutated_hl7(SEEDS))
def test_translation_and_validation_answer_every_message(preparer: Pipeline, text: str) -> None:
    """`prepare` (tokenize, translate, validate) returns a job or raises LimitExceeded; its ACK reads."""
    try:
        with limits_in_force(DEFAULT_LIMITS):
            job = preparer.prepare(text, Source("file", "fuzz"))
    except LimitExceeded:
        event("over a limit")
        return  # answered by guarded_prepare (AE 104 naming the field); tested in tests/api
    event(f"ACK {job.code}")
    assert job.code in ACK_CODES
    if job.code == "AA":
        assert job.translation is not None and not job.errors
    if job.message is None:
        first = job.errors[0]
        ack = build_nak(job.raw, first.text, code=first.code, control_id="A1", timestamp="20240101000000")
    else:
        ack = build_ack(job.message, job.code, errors=job.errors, control_id="A1", timestamp="20240101000000")
    assert_ack(ack, job.code)


@fuzz(small=25)
@given(data=st.data())
async def test_the_pipeline_answers_every_message_and_stores_what_it_accepts(
    gateway: Gateway, data: st.DataObject
) -> None:
    raw = data.draw(mutated_bytes(data.draw(mutated_hl7(SEEDS))))
    result = await asyncio.wait_for(gateway.pipeline.submit(raw, Source("http", "fuzz")), HANG_SECONDS)
    event(f"ACK {result.code}")
    assert_ack(result.ack, result.code)
    if result.code != "AA":
        return
    async with gateway.db.read() as conn:
        for ref in result.resources:
            resource_type, resource_id, _, version = ref.split("/")
            assert await store.version(conn, resource_type, resource_id, int(version)) is not None, ref
