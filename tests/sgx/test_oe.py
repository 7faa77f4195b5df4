"""Open Enclave report header, SGX_ECDSA evidence and custom claims, on OE's own test files."""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import replace
from pathlib import Path

import pytest

from enclave_kms.errors import BindingError, FormatError, UnsupportedFormatError
from enclave_kms.sgx.oe import (
    CustomClaim,
    OeEvidence,
    OeReportHeader,
    build_oe_report,
    custom_claims_hash,
    parse_custom_claims,
    parse_oe_evidence,
    parse_oe_report,
    serialize_custom_claims,
)
from enclave_kms.sgx.quote import Quote, parse_quote
from enclave_kms.sgx.report import ReportBody
from tests.sgx.vectors import strip_comment_lines

EMPTY_SHA256 = bytes.fromhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855")


@pytest.fixture
def evidence_bytes(sgx_testdata: Path) -> bytes:
    raw = (sgx_testdata / "openenclave-tests/evidence").read_bytes()
    assert raw.startswith(b"# Copyright")
    return strip_comment_lines(raw)


@pytest.fixture
def oe_report_bytes(sgx_testdata: Path) -> bytes:
    info = json.loads((sgx_testdata / "azure-maa-oe-sample/enclave.info.debug.json").read_bytes())
    return bytes.fromhex(info["QuoteHex"])


# --------------------------------------------------------------------------- evidence


def test_oe_test_evidence_is_a_bare_quote_with_empty_claims(evidence_bytes: bytes) -> None:
    # binary after the two comment lines: starts with quote v3, att key type 2
    assert evidence_bytes[:4] == b"\x03\x00\x02\x00"
    evidence = parse_oe_evidence(evidence_bytes)
    assert evidence.to_bytes() == evidence_bytes
    assert evidence.custom_claims_buffer == b""
    assert evidence.custom_claims() == ()
    body = evidence.quote.body
    assert isinstance(body, ReportBody)
    assert body.report_data[:32] == EMPTY_SHA256 == custom_claims_hash(b"")
    assert evidence.binds_custom_claims
    evidence.check_binding()
    assert body.mr_enclave.hex().startswith("91dd79e4")
    assert body.mr_enclave.hex().endswith("38ac")
    assert body.mr_signer.hex().startswith("bc71834f")
    assert body.mr_signer.hex().endswith("f37c")
    assert body.attributes.debug
    assert (body.isv_prod_id, body.isv_svn) == (1, 1)


def _with_report_data(quote: Quote, report_data: bytes) -> Quote:
    body = quote.body
    assert isinstance(body, ReportBody)
    return replace(quote, body=replace(body, report_data=report_data))


def test_evidence_with_claims_round_trips_and_binds(evidence_bytes: bytes) -> None:
    claims = (CustomClaim("Event", b"attested"), CustomClaim("Public key hash", b"\x01" * 32))
    buffer = serialize_custom_claims(claims)
    quote = _with_report_data(
        parse_quote(evidence_bytes), hashlib.sha256(buffer).digest() + bytes(32)
    )
    evidence = OeEvidence.build(quote, claims)
    raw = evidence.to_bytes()
    assert raw == quote.to_bytes() + buffer
    again = parse_oe_evidence(raw)
    assert again == evidence
    assert again.custom_claims() == claims
    again.check_binding()


def test_claims_appended_to_unrelated_quote_do_not_bind(evidence_bytes: bytes) -> None:
    buffer = serialize_custom_claims([CustomClaim("Event", b"x")])
    evidence = parse_oe_evidence(evidence_bytes + buffer)
    assert evidence.custom_claims() == (CustomClaim("Event", b"x"),)
    assert not evidence.binds_custom_claims
    with pytest.raises(BindingError, match="custom claims"):
        evidence.check_binding()


def test_evidence_quote_cannot_carry_trailing(evidence_bytes: bytes) -> None:
    quote = parse_quote(evidence_bytes + b"\x00")
    with pytest.raises(FormatError, match="trailing"):
        OeEvidence(quote, b"")


# --------------------------------------------------------------------------- custom claims


def test_custom_claims_layout_matches_open_enclave() -> None:
    buffer = serialize_custom_claims([CustomClaim("Event", b"ab"), CustomClaim("k", b"")])
    expected = (
        struct.pack("<QQ", 1, 2)
        + struct.pack("<QQ", 6, 2)
        + b"Event\x00ab"
        + struct.pack("<QQ", 2, 0)
        + b"k\x00"
    )
    assert buffer == expected
    assert parse_custom_claims(buffer) == (CustomClaim("Event", b"ab"), CustomClaim("k", b""))
    assert serialize_custom_claims([]) == struct.pack("<QQ", 1, 0)
    assert parse_custom_claims(struct.pack("<QQ", 1, 0)) == ()


@pytest.mark.parametrize(
    ("buffer", "error", "match"),
    [
        (b"", FormatError, "header"),
        (struct.pack("<QQ", 2, 0), UnsupportedFormatError, "version 2"),
        (struct.pack("<QQ", 1, 1), FormatError, "truncated"),
        (
            struct.pack("<QQ", 1, 2**63) + struct.pack("<QQ", 2, 0) + b"k\x00",
            FormatError,
            "claim 1",
        ),
        (struct.pack("<QQ", 1, 1) + struct.pack("<QQ", 2, 5) + b"k\x00", FormatError, "past"),
        (
            struct.pack("<QQ", 1, 1) + struct.pack("<QQ", 2**64 - 1, 1) + b"k\x00",
            FormatError,
            "past",
        ),
        (struct.pack("<QQ", 1, 1) + struct.pack("<QQ", 0, 0), FormatError, "past"),
        (struct.pack("<QQ", 1, 1) + struct.pack("<QQ", 2, 0) + b"kk", FormatError, "NUL"),
        (struct.pack("<QQ", 1, 1) + struct.pack("<QQ", 3, 0) + b"k\x00\x00", FormatError, "NUL"),
        (struct.pack("<QQ", 1, 1) + struct.pack("<QQ", 2, 0) + b"\xff\x00", FormatError, "UTF-8"),
        (struct.pack("<QQ", 1, 0) + b"x", FormatError, "after the last"),
    ],
)
def test_custom_claims_errors(buffer: bytes, error: type[Exception], match: str) -> None:
    with pytest.raises(error, match=match):
        parse_custom_claims(buffer)


def test_claim_names_must_be_text_without_nul() -> None:
    with pytest.raises(FormatError, match="NUL"):
        CustomClaim("a\x00b", b"")
    with pytest.raises(FormatError, match="value"):
        CustomClaim("a", "text")  # type: ignore[arg-type]


# --------------------------------------------------------------------------- OE report


def test_oe_report_header_and_quote(oe_report_bytes: bytes) -> None:
    header, quote = parse_oe_report(oe_report_bytes)
    assert header == OeReportHeader(version=1, report_type=2, report_size=4584)
    assert header.to_bytes() == oe_report_bytes[:16]
    assert quote.to_bytes() == oe_report_bytes[16:]
    assert quote.trailing == b""
    assert build_oe_report(quote) == oe_report_bytes
    assert build_oe_report(oe_report_bytes[16:]) == oe_report_bytes


def test_tampered_oe_report_still_parses(sgx_testdata: Path) -> None:
    """sgx_report_bad.bin is well-formed; its intermediate's subject was altered (2.5.68.10)."""
    raw = (sgx_testdata / "openenclave-tests/sgx_report_bad.bin").read_bytes()
    header, quote = parse_oe_report(raw)
    assert header.report_size == len(raw) - 16 == 4580
    assert build_oe_report(quote) == raw
    leaf, intermediate, _root = quote.pck_certificates()
    assert leaf.issuer != intermediate.subject


def test_oe_report_errors(oe_report_bytes: bytes) -> None:
    with pytest.raises(FormatError, match="shorter"):
        parse_oe_report(oe_report_bytes[:15])
    with pytest.raises(UnsupportedFormatError, match="version 2"):
        parse_oe_report(struct.pack("<I", 2) + oe_report_bytes[4:])
    with pytest.raises(UnsupportedFormatError, match="type 1"):
        parse_oe_report(oe_report_bytes[:4] + struct.pack("<I", 1) + oe_report_bytes[8:])
    with pytest.raises(FormatError, match="size"):
        parse_oe_report(oe_report_bytes + b"\x00")
    with pytest.raises(FormatError, match="size"):
        parse_oe_report(oe_report_bytes[:-1])
    with pytest.raises(FormatError, match="expected bytes"):
        parse_oe_report(None)  # type: ignore[arg-type]
    with pytest.raises(FormatError, match="report_size"):
        OeReportHeader(1, 2, -1)
