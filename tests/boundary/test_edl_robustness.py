"""Issue 17 defect 9 (EDL): the fuzzer's crash frame, the reader deadlock, error details.

The enclave logs through the `log` OCALL, whose reply only the endpoint's reader thread can
read. A reader that reported a bad frame through logging *before* closing waited on itself:
ECALLs and HTTP requests then timed out. These tests run the real endpoint over real pipes
with the real `OcallLogHandler` attached, as in the enclave process.
"""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from typing import Any

import cbor2
import pytest

from enclave_kms import edl
from enclave_kms.edl_endpoint import Endpoint, error_detail, error_from_frame
from enclave_kms.enclave.host_calls import OcallLogHandler
from enclave_kms.errors import (
    BoundaryError,
    CollateralNotYetValidError,
    PolicyError,
    SignatureError,
)

# Minimal crash frame from coverage-guided fuzzing: {"id": 1, "t": {"a": 1}} (unhashable `t`).
CRASH_FRAME = bytes.fromhex("a2626964016174a1616101")


def _noop(**_: Any) -> dict[str, Any]:
    return {}


def _frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


@pytest.fixture
def enclave_side() -> Iterator[tuple[Endpoint, Any]]:
    """An ECALL-serving endpoint whose logging goes through its own `log` OCALL."""
    host_to_enclave_r, host_to_enclave_w = os.pipe()
    enclave_to_host_r, enclave_to_host_w = os.pipe()
    endpoint = Endpoint(
        os.fdopen(host_to_enclave_r, "rb", buffering=0),
        os.fdopen(enclave_to_host_w, "wb", buffering=0),
        serves="ecall",
        handlers={c.name: _noop for c in edl.ECALLS},
    )
    handler = OcallLogHandler(endpoint.call)
    logger = logging.getLogger("enclave_kms.edl_endpoint")
    logger.addHandler(handler)
    host_writer = os.fdopen(host_to_enclave_w, "wb", buffering=0)
    host_reader = os.fdopen(enclave_to_host_r, "rb", buffering=0)
    endpoint.start()
    try:
        yield endpoint, host_writer
    finally:
        logger.removeHandler(handler)
        endpoint.close()
        host_writer.close()
        host_reader.close()


def test_the_fuzzers_crash_frame_is_a_boundary_error() -> None:
    with pytest.raises(BoundaryError, match="unknown frame type"):
        edl.decode_frame(CRASH_FRAME)


@pytest.mark.parametrize(
    "payload",
    [
        CRASH_FRAME,
        cbor2.dumps({"id": 1, "t": "bogus"}),  # already a typed BoundaryError before the fix
        cbor2.dumps({"id": 1, "t": "err", "code": "x", "message": "y", "detail": [1]}),
        b"\xff\xfe",
    ],
)
def test_a_bad_frame_closes_the_channel_instead_of_deadlocking(
    enclave_side: tuple[Endpoint, Any], payload: bytes
) -> None:
    endpoint, host_writer = enclave_side
    host_writer.write(_frame(payload))
    # The reader closes (and its log OCALL fails fast) instead of waiting on itself forever.
    assert endpoint.wait_closed(30), "the EDL reader deadlocked reporting a bad frame"
    with pytest.raises(BoundaryError, match="closed"):
        endpoint.call("log", level="info", message="after close")


@pytest.mark.parametrize(
    "exc",
    [
        SignatureError("PCK CRL: signature BIT STRING declares 1 unused bits", step="pck_crl"),
        CollateralNotYetValidError("root CA CRL is not yet valid", step="root_ca_crl"),
        PolicyError(["mr_enclave 00 is not one of the accepted values", "debug: the enclave"]),
    ],
)
def test_errors_keep_their_step_and_violations_across_the_boundary(exc: Any) -> None:
    frame = edl.Frame(7, "err", code=exc.code, message=exc.message, detail=error_detail(exc))
    decoded = edl.decode_frame(edl.encode_frame(frame)[4:])
    rebuilt = error_from_frame(decoded.code, decoded.message, decoded.detail)
    assert type(rebuilt) is type(exc)
    if isinstance(exc, PolicyError):
        assert isinstance(rebuilt, PolicyError)
        assert rebuilt.violations == exc.violations
    else:
        assert rebuilt.step == exc.step  # type: ignore[attr-defined]


def test_err_frame_detail_is_bounded() -> None:
    for detail in ({"step": 1}, {"violations": ["x" * 2000]}, {"other": "x"}, {"violations": "x"}):
        payload = cbor2.dumps({"id": 1, "t": "err", "code": "c", "message": "m", "detail": detail})
        with pytest.raises(BoundaryError, match="detail"):
            edl.decode_frame(payload)
