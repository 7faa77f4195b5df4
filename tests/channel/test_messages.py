"""Wire format of the channel: exact round trips, one encoding per message, strict bounds."""

from __future__ import annotations

from typing import Any

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_kms.channel import (
    MAX_FRAME,
    MAX_PLAINTEXT,
    KeyAck,
    KeyEstablish,
    Record,
    ReportWithPubkey,
    decode_message,
)
from enclave_kms.channel.messages import MAX_EVIDENCE, record_aad
from enclave_kms.errors import ChannelError

SPKI = bytes(294)
SAMPLES = [
    ReportWithPubkey(SPKI, b"evidence bytes"),
    KeyEstablish(b"\x01" * 256, b"\x02" * 256),
    KeyAck(b"\x03" * 32),
    Record(1, 0, b"\x04" * 12, b"\x05" * 16),
    Record(2, 2**64 - 1, b"\x06" * 12, b"\x07" * (MAX_PLAINTEXT + 16)),
]


@pytest.mark.parametrize("message", SAMPLES, ids=lambda m: type(m).__name__)
def test_round_trip_and_cbor_shape(message: Any) -> None:
    data = message.to_bytes()
    assert len(data) <= MAX_FRAME
    assert decode_message(data) == message
    assert type(message).parse(data) == message
    assert decode_message(data).to_bytes() == data
    decoded = cbor2.loads(data)  # plain CBOR any tool can read
    assert decoded[:2] == [1, message.TYPE]


def test_largest_evidence_fits_the_frame() -> None:
    data = ReportWithPubkey(SPKI, b"e" * MAX_EVIDENCE).to_bytes()
    assert len(data) <= MAX_FRAME
    with pytest.raises(ChannelError, match="evidence"):
        ReportWithPubkey(SPKI, b"e" * (MAX_EVIDENCE + 1))


def test_parse_insists_on_the_expected_type() -> None:
    with pytest.raises(ChannelError, match="expected KeyAck, got KeyEstablish"):
        KeyAck.parse(SAMPLES[1].to_bytes())


BAD_FRAMES = {
    "empty": b"",
    "not an array": cbor2.dumps({"v": 1}),
    "trailing byte": SAMPLES[2].to_bytes() + b"\x00",
    "indefinite array": b"\x9f\x01\x03\x58\x20" + b"\x03" * 32 + b"\xff",
    "non-shortest int": b"\x83\x18\x01\x03\x58\x20" + b"\x03" * 32,
    "non-shortest length": b"\x83\x01\x03\x59\x00\x20" + b"\x03" * 32,
    "tagged field": b"\x83\x01\x03\xc2\x58\x20" + b"\x03" * 32,
    "nested array": cbor2.dumps([1, 3, [b"\x03" * 32]]),
    "text field": cbor2.dumps([1, 3, "x" * 32]),
    "bool field": cbor2.dumps([1, 4, True, 0, b"\x00" * 12, b"\x00" * 16]),
    "negative int": cbor2.dumps([1, 4, 1, -1, b"\x00" * 12, b"\x00" * 16]),
    "wrong version": cbor2.dumps([2, 3, b"\x03" * 32]),
    "bytes version": cbor2.dumps([b"\x01", 3, b"\x03" * 32]),
    "unknown type": cbor2.dumps([1, 9, b"\x03" * 32]),
    "missing type": cbor2.dumps([1]),
    "extra field": cbor2.dumps([1, 3, b"\x03" * 32, b""]),
    "short confirmation": cbor2.dumps([1, 3, b"\x03" * 31]),
    "bad direction": cbor2.dumps([1, 4, 3, 0, b"\x00" * 12, b"\x00" * 16]),
    "short iv": cbor2.dumps([1, 4, 1, 0, b"\x00" * 11, b"\x00" * 16]),
    "no tag": cbor2.dumps([1, 4, 1, 0, b"\x00" * 12, b"\x00" * 15]),
    "sequence over 64 bits": b"\x86\x01\x04\x01\x1b" + b"\xff" * 8 + b"\x00",
    "truncated byte string": b"\x83\x01\x03\x58\x20" + b"\x03" * 31,
    "oversized frame": b"\x83\x01\x01" + b"\x5a\x00\x01\x00\x00" + bytes(MAX_FRAME),
    "reserved info": b"\x83\x01\x03\x5c",
    "too many items": b"\x98\x20" + b"\x00" * 32,
}


@pytest.mark.parametrize("name", sorted(BAD_FRAMES))
def test_malformed_frames_rejected(name: str) -> None:
    with pytest.raises(ChannelError):
        decode_message(BAD_FRAMES[name])


def test_constructors_check_types() -> None:
    with pytest.raises(ChannelError, match="direction"):
        Record(True, 0, bytes(12), bytes(16))
    with pytest.raises(ChannelError, match="iv"):
        Record(1, 0, bytearray(12), bytes(16))  # type: ignore[arg-type]
    with pytest.raises(ChannelError, match="expected bytes"):
        decode_message("text")  # type: ignore[arg-type]


def test_reprs_summarise_sizes() -> None:
    assert repr(SAMPLES[0]) == "ReportWithPubkey(public_key_der=<294 B>, evidence=<14 B>)"
    assert "\\x05" not in repr(SAMPLES[3])


def test_aad_layout() -> None:
    assert record_aad(b"L", 2, 258) == b"L\x02" + (258).to_bytes(8, "big")


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400))
def test_arbitrary_bytes_decode_or_fail_typed(data: bytes) -> None:
    try:
        message = decode_message(data)
    except ChannelError:
        return
    assert message.to_bytes() == data


@settings(max_examples=200, deadline=None)
@given(index=st.integers(min_value=0), bit=st.integers(min_value=0, max_value=7))
def test_bit_flips_never_escape_the_error_tree(index: int, bit: int) -> None:
    for sample in SAMPLES[:4]:
        data = bytearray(sample.to_bytes())
        data[index % len(data)] ^= 1 << bit
        try:
            message = decode_message(bytes(data))
        except ChannelError:
            continue
        assert message.to_bytes() == bytes(data)
