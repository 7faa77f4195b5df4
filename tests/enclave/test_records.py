"""Sealed records: the host can neither read, alter, swap nor re-version a record."""

from __future__ import annotations

import os

import pytest

from enclave_kms.enclave.state.records import RecordCipher
from enclave_kms.errors import IntegrityError

SECRET = b"\x13\x37" * 16


@pytest.fixture
def cipher() -> RecordCipher:
    return RecordCipher(os.urandom(32))


def test_round_trip_and_no_plaintext_in_blob(cipher: RecordCipher) -> None:
    value = {"material": SECRET, "name": "payments"}
    blob = cipher.seal("key", "payments", 3, value)
    assert SECRET not in blob
    assert b"payments" not in blob
    assert cipher.open("key", "payments", 3, blob) == value


@pytest.mark.parametrize(
    ("kind", "id", "version"),
    [("key", "other", 3), ("key", "payments", 4), ("token", "payments", 3)],
)
def test_swapped_or_reversioned_record_fails(
    cipher: RecordCipher, kind: str, id: str, version: int
) -> None:
    blob = cipher.seal("key", "payments", 3, {"material": SECRET})
    with pytest.raises(IntegrityError, match="failed authentication"):
        cipher.open(kind, id, version, blob)


def test_every_altered_byte_fails(cipher: RecordCipher) -> None:
    blob = cipher.seal("key", "k", 1, {"material": SECRET})
    for i in range(len(blob)):
        altered = bytearray(blob)
        altered[i] ^= 0x01
        with pytest.raises(IntegrityError):
            cipher.open("key", "k", 1, bytes(altered))


def test_truncated_and_foreign_blobs_fail(cipher: RecordCipher) -> None:
    blob = cipher.seal("key", "k", 1, {"x": 1})
    with pytest.raises(IntegrityError, match="not a sealed record"):
        cipher.open("key", "k", 1, blob[:20])
    other = RecordCipher(os.urandom(32))
    with pytest.raises(IntegrityError, match="failed authentication"):
        other.open("key", "k", 1, blob)


def test_error_messages_carry_no_secret(cipher: RecordCipher) -> None:
    blob = cipher.seal("key", "k", 1, {"material": SECRET})
    with pytest.raises(IntegrityError) as info:
        cipher.open("key", "k", 2, blob)
    assert SECRET.hex() not in str(info.value)
