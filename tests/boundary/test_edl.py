"""The EDL declaration refuses anything undeclared or out of bounds, before any handler runs."""

from __future__ import annotations

import struct

import cbor2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_kms import edl
from enclave_kms.errors import BoundaryError, EnclaveKMSError


def test_tutorial_and_channel_ecalls_are_declared() -> None:
    names = {c.name for c in edl.ECALLS}
    assert {
        "set_up_server",
        "get_report",
        "get_evidence_with_pub_key",
        "get_remote_report_with_pubkey",
        "verify_report_and_set_pubkey",
        "establish_secure_channel",
        "acknowledge_secure_channel",
        "generate_encrypted_message",
        "process_encrypted_msg",
        "initialize",
        "shutdown",
    } <= names
    ocalls = {c.name for c in edl.OCALLS}
    assert {"get_quote", "get_collateral", "store_get", "store_put", "store_list"} <= ocalls
    assert {"store_delete", "audit_append", "log"} <= ocalls


def test_every_declaration_has_unique_param_names_per_direction() -> None:
    for call in edl.ECALLS + edl.OCALLS:
        for direction in ("in", "out"):
            names = [p.name for p in call.params if p.direction == direction]
            assert len(names) == len(set(names)), call.name


def test_undeclared_call_is_refused() -> None:
    with pytest.raises(BoundaryError, match="undeclared ocall"):
        edl.declared("ocall", "read_file")
    with pytest.raises(BoundaryError, match="undeclared ecall"):
        edl.declared("ecall", "get_quote")  # an OCALL name is not an ECALL


def test_arguments_are_checked_for_names_types_and_bounds() -> None:
    put = edl.declared("ocall", "store_put")
    good = {"kind": "key", "id": "k1", "expected_version": 0, "blob": b"x"}
    assert put.check(good, "in") == good
    with pytest.raises(BoundaryError, match="undeclared parameter"):
        put.check({**good, "path": "/etc/passwd"}, "in")
    with pytest.raises(BoundaryError, match="blob is required"):
        put.check({k: v for k, v in good.items() if k != "blob"}, "in")
    with pytest.raises(BoundaryError, match="must be bytes"):
        put.check({**good, "blob": "text"}, "in")
    with pytest.raises(BoundaryError, match="out of range"):
        put.check({**good, "expected_version": -1}, "in")
    with pytest.raises(BoundaryError, match="must be an int"):
        put.check({**good, "expected_version": True}, "in")
    with pytest.raises(BoundaryError, match="exceeds its bound"):
        put.check({**good, "id": "x" * 257}, "in")
    quote = edl.declared("ocall", "get_quote")
    with pytest.raises(BoundaryError, match="exceeds its bound"):
        quote.check({"quote": bytes(64 * 1024 + 1)}, "out")


def test_results_are_checked_like_arguments() -> None:
    lst = edl.declared("ocall", "store_list")
    assert lst.check({"ids": ["a", "b"]}, "out") == {"ids": ["a", "b"]}
    with pytest.raises(BoundaryError, match=r"ids\[1\] must be str"):
        lst.check({"ids": ["a", b"b"]}, "out")
    get = edl.declared("ocall", "store_get")
    assert get.check({"version": 0}, "out") == {"version": 0, "blob": None}


@pytest.mark.parametrize(
    "frame",
    [
        edl.Frame(1, "call", fn="get_quote", body={"report": b"\x01" * 432}),
        edl.Frame(2, "ret", body={"quote": b"q"}),
        edl.Frame(3, "err", code="boundary_violation", message="nope"),
    ],
)
def test_frames_round_trip(frame: edl.Frame) -> None:
    wire = edl.encode_frame(frame)
    assert edl.frame_length(wire[:4]) == len(wire) - 4
    assert edl.decode_frame(wire[4:]) == frame


def test_oversized_frame_header_is_refused_before_reading() -> None:
    with pytest.raises(BoundaryError, match="exceeds"):
        edl.frame_length(struct.pack(">I", edl.MAX_FRAME + 1))


def test_frame_with_extra_fields_is_refused() -> None:
    payload = cbor2.dumps({"id": 1, "t": "ret", "res": {}, "smuggled": b"x"})
    with pytest.raises(BoundaryError, match="fields"):
        edl.decode_frame(payload)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=256))
def test_arbitrary_bytes_decode_only_to_boundary_errors(data: bytes) -> None:
    try:
        edl.decode_frame(data)
    except EnclaveKMSError:
        pass


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=8),
        st.one_of(st.none(), st.booleans(), st.integers(), st.binary(max_size=8), st.text()),
        max_size=4,
    )
)
def test_arbitrary_arguments_are_only_refused_with_boundary_errors(args: dict[str, object]) -> None:
    for call in edl.ECALLS + edl.OCALLS:
        try:
            call.check(args, "in")
        except BoundaryError:
            pass
