"""Every sgx parser, fed arbitrary or mutated real bytes, fails only with EnclaveKMSError.

A successful parse must also round-trip: whatever we accept, we re-serialise byte for byte.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave_kms.errors import EnclaveKMSError
from enclave_kms.sgx.oe import (
    OeReportHeader,
    parse_custom_claims,
    parse_oe_evidence,
    parse_oe_report,
    serialize_custom_claims,
)
from enclave_kms.sgx.pck import (
    build_pck_extension,
    parse_pck_extension,
    parse_pck_extension_der,
    pck_ca_kind,
)
from enclave_kms.sgx.quote import QuoteHeader, parse_quote
from enclave_kms.sgx.report import Report, ReportBody, TargetInfo
from enclave_kms.sgx.tdx import TdReport10, TdReport15
from enclave_kms.sgx.tutorial import EnclaveInfo
from tests.conftest import SGX_TESTDATA
from tests.sgx.vectors import read_quote_file

SETTINGS = settings(
    max_examples=100,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

TESTDATA = SGX_TESTDATA  # the self-contained vectors (tests/vectors/sgx)


def _quote(rel: str) -> bytes:
    return read_quote_file(TESTDATA / rel)


SGX_V3 = _quote("phala-dcap-qvl/sgx_quote")
TDX_V4 = _quote("phala-dcap-qvl/tdx_quote")
TDX_V5 = _quote("phala-dcap-qvl/tdx_quote_outdated")
TYPE1 = _quote("intel-qvl-sampledata-testpki/quote.dat")
SEEDS = [SGX_V3, TDX_V4, TDX_V5, TYPE1]


def _fixed_size(
    parse: Callable[[bytes], object], *, round_trip: bool = True
) -> Callable[[bytes], object]:
    def run(data: bytes) -> object:
        obj = parse(data)
        if round_trip:
            assert obj.to_bytes() == data  # type: ignore[attr-defined]
        return obj

    return run


def _quote_round_trip(data: bytes) -> object:
    quote = parse_quote(data)
    assert quote.to_bytes() == data
    try:
        certs = quote.pck_certificates()
    except EnclaveKMSError:
        return quote
    if certs:
        parse_pck_extension(certs[0])
        pck_ca_kind(certs[0])
    return quote


def _oe_report(data: bytes) -> object:
    header, quote = parse_oe_report(data)
    assert header.to_bytes() + quote.to_bytes() == data
    return quote


def _oe_evidence(data: bytes) -> object:
    evidence = parse_oe_evidence(data)
    assert evidence.to_bytes() == data
    if evidence.custom_claims_buffer:
        evidence.custom_claims()
    return evidence


def _claims(data: bytes) -> object:
    claims = parse_custom_claims(data)
    assert serialize_custom_claims(claims) == data
    return claims


def _pck_der(data: bytes) -> object:
    ext = parse_pck_extension_der(data)
    build_pck_extension(ext)
    return ext


def _enclave_info(data: bytes) -> object:
    info = EnclaveInfo.parse(data)
    info.inconsistencies()
    info.binds_held_data()
    return info


PARSERS: dict[str, Callable[[bytes], object]] = {
    "quote": _quote_round_trip,
    "quote_header": _fixed_size(QuoteHeader.parse),
    "report_body": _fixed_size(ReportBody.parse),
    "target_info": _fixed_size(TargetInfo.parse),
    "report": _fixed_size(Report.parse),
    "td_report10": _fixed_size(TdReport10.parse),
    "td_report15": _fixed_size(TdReport15.parse),
    "oe_report_header": _fixed_size(OeReportHeader.parse),
    "oe_report": _oe_report,
    "oe_evidence": _oe_evidence,
    "custom_claims": _claims,
    "pck_extension": _pck_der,
    "enclave_info": _enclave_info,
}
SIZES = {
    "quote_header": 48,
    "report_body": 384,
    "target_info": 512,
    "report": 432,
    "td_report10": 584,
    "td_report15": 648,
    "oe_report_header": 16,
}


def _only_typed_errors(parse: Callable[[bytes], object], data: bytes) -> None:
    try:
        parse(data)
    except EnclaveKMSError:
        pass


@pytest.mark.parametrize("name", sorted(PARSERS))
@SETTINGS
@given(data=st.data())
def test_arbitrary_bytes(name: str, data: st.DataObject) -> None:
    size = SIZES.get(name)
    if size is not None:
        blob = data.draw(st.one_of(st.binary(max_size=64), st.binary(min_size=size, max_size=size)))
    else:
        blob = data.draw(st.binary(max_size=2048))
    _only_typed_errors(PARSERS[name], blob)


@st.composite
def _mutated_quote(draw: st.DrawFn) -> bytes:
    buf = bytearray(draw(st.sampled_from(SEEDS)))
    hot = [0, 1, 2, 3, 4, 48, 49, 50, 432, 433, 434, 435, 632, 633, 634, 635, 1020, 1100]
    for _ in range(draw(st.integers(1, 4))):
        index = draw(st.one_of(st.sampled_from(hot), st.integers(0, len(buf) - 1)))
        if index < len(buf):
            buf[index] = draw(st.integers(0, 255))
    cut = draw(st.one_of(st.just(len(buf)), st.integers(0, len(buf))))
    return bytes(buf[:cut]) + draw(st.binary(max_size=8))


@SETTINGS
@given(blob=_mutated_quote())
def test_mutated_real_quotes(blob: bytes) -> None:
    _only_typed_errors(_quote_round_trip, blob)
    _only_typed_errors(_oe_evidence, blob)
    header = OeReportHeader(1, 2, len(blob)).to_bytes()
    _only_typed_errors(_oe_report, header + blob)


@SETTINGS
@given(blob=_mutated_quote())
def test_mutated_quotes_in_enclave_info(blob: bytes) -> None:
    doc = json.loads((TESTDATA / "azure-maa-oe-sample/enclave.info.debug.json").read_bytes())
    doc["QuoteHex"] = (OeReportHeader(1, 2, len(blob)).to_bytes() + blob).hex()
    _only_typed_errors(_enclave_info, json.dumps(doc).encode())


@st.composite
def _mutated_der(draw: st.DrawFn) -> bytes:
    quote = parse_quote(draw(st.sampled_from([SGX_V3, TDX_V4])))
    der = bytearray(build_pck_extension(parse_pck_extension(quote.pck_certificates()[0])))
    for _ in range(draw(st.integers(1, 3))):
        der[draw(st.integers(0, len(der) - 1))] = draw(st.integers(0, 255))
    return bytes(der[: draw(st.integers(0, len(der)))])


@SETTINGS
@given(der=_mutated_der())
def test_mutated_pck_extensions(der: bytes) -> None:
    _only_typed_errors(_pck_der, der)


@SETTINGS
@given(
    claims=st.lists(
        st.tuples(st.text(max_size=8).filter(lambda s: "\x00" not in s), st.binary(max_size=16)),
        max_size=4,
    ),
    flip=st.integers(0, 10_000),
    value=st.integers(0, 255),
)
def test_mutated_custom_claims(claims: list[tuple[str, bytes]], flip: int, value: int) -> None:
    from enclave_kms.sgx.oe import CustomClaim

    buf = bytearray(serialize_custom_claims([CustomClaim(n, v) for n, v in claims]))
    assert parse_custom_claims(bytes(buf)) == tuple(CustomClaim(n, v) for n, v in claims)
    buf[flip % len(buf)] = value
    _only_typed_errors(_claims, bytes(buf))
