"""What a hostile server sends never escapes as anything but a typed error."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_kms import wire
from enclave_kms.client import core
from enclave_kms.client.attest import AttestationAnswer, begin
from enclave_kms.client.errors import error_for_response
from enclave_kms.errors import EnclaveKMSError

NOW = datetime(2025, 6, 1, tzinfo=UTC)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=12,
)


@given(st.binary(max_size=600))
@settings(max_examples=200, deadline=None)
def test_any_certificate_bytes_are_refused_with_a_typed_error(data: bytes) -> None:
    try:
        begin(data, now=NOW)
    except EnclaveKMSError:
        return
    raise AssertionError("random bytes were accepted as an RA-TLS certificate")


@given(st.integers(400, 599), st.binary(max_size=300))
@settings(max_examples=200, deadline=None)
def test_any_error_body_becomes_a_typed_error(status: int, body: bytes) -> None:
    assert isinstance(error_for_response(status, body), EnclaveKMSError)


@given(json_values)
@settings(max_examples=200, deadline=None)
def test_any_attestation_answer_shape_is_a_typed_error(doc: Any) -> None:
    try:
        AttestationAnswer.parse(doc)
    except EnclaveKMSError:
        return
    raise AssertionError("a malformed attestation answer was accepted")


@given(json_values)
@settings(max_examples=200, deadline=None)
def test_any_answer_to_a_call_is_typed_or_an_error(doc: Any) -> None:
    body = json.dumps(doc).encode()
    shapes = (
        wire.KeyInfo,
        wire.KeyPage,
        wire.TokenPage,
        wire.IssuedToken,
        wire.Health,
        wire.AuditHead,
        wire.ExportedKey,
        wire.DataKey,
        wire.DecryptBatch,
    )
    for shape in shapes:
        try:
            wire.decode(shape, doc)
        except EnclaveKMSError:
            pass
    try:
        core.read_answer(core.encrypt("k", b"x", None), 200, body)
    except EnclaveKMSError:
        pass
