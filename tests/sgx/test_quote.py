"""DCAP quote parsing over every real vector: round trips, known answers, signatures, framing."""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from enclave_kms.errors import FormatError, UnsupportedFormatError
from enclave_kms.sgx.pck import parse_pck_extension, pck_ca_kind
from enclave_kms.sgx.quote import (
    CertificationData,
    EcdsaSignatureData,
    Quote,
    QuoteHeader,
    parse_quote,
)
from enclave_kms.sgx.report import Attributes, Report, ReportBody, TargetInfo
from enclave_kms.sgx.tdx import TdReport10, TdReport15
from tests.sgx.vectors import QUOTE_IDS, QUOTE_VECTORS, QuoteVector, read_quote_file


def _verify_p256(public_xy: bytes | ec.EllipticCurvePublicKey, sig: bytes, msg: bytes) -> None:
    key = (
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + public_xy)
        if isinstance(public_xy, bytes)
        else public_xy
    )
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    key.verify(der, msg, ec.ECDSA(hashes.SHA256()))


def _load(sgx_testdata: Path, rel: str) -> bytes:
    return read_quote_file(sgx_testdata / rel)


# --------------------------------------------------------------------------- every vector


@pytest.mark.parametrize("vec", QUOTE_VECTORS, ids=QUOTE_IDS)
def test_every_vector_parses_and_round_trips(sgx_testdata: Path, vec: QuoteVector) -> None:
    raw = _load(sgx_testdata, vec.rel)
    assert len(raw) == vec.size
    quote = parse_quote(raw)
    assert quote.to_bytes() == raw
    assert quote.header.version == vec.version
    assert quote.header.att_key_type == 2
    assert quote.is_tdx is vec.tdx
    assert quote.is_sgx is not vec.tdx
    assert quote.header.tee_type == (0x81 if vec.tdx else 0)
    assert len(quote.trailing) == vec.trailing
    assert quote.without_trailing() + quote.trailing == raw
    assert quote.signature_data.certification_data.cert_type == vec.cert_type
    assert (quote.signature_data.qe_report_cert_type == 6) is (vec.version >= 4)
    # the parsed pieces rebuild the same quote
    rebuilt = Quote(
        QuoteHeader.parse(quote.header.to_bytes()),
        quote.body,
        quote.signature_data,
        quote.body_type,
        quote.trailing,
    )
    assert rebuilt.to_bytes() == raw
    assert rebuilt == quote


@pytest.mark.parametrize("vec", QUOTE_VECTORS, ids=QUOTE_IDS)
def test_every_vector_signatures_verify_over_parsed_fields(
    sgx_testdata: Path, vec: QuoteVector
) -> None:
    """The fields we expose are the ones Intel signs: signed_bytes, QE report, att-key binding."""
    quote = parse_quote(_load(sgx_testdata, vec.rel))
    sd = quote.signature_data
    _verify_p256(sd.attestation_key, sd.signature, quote.signed_bytes)
    digest = hashlib.sha256(sd.attestation_key + sd.qe_auth_data).digest()
    assert sd.qe_report.report_data[:32] == digest
    if vec.cert_type == 5:
        leaf = quote.pck_certificates()[0]
    else:
        pem = (sgx_testdata / "intel-qvl-sampledata-testpki/pckCert.pem").read_bytes()
        leaf = x509.load_pem_x509_certificate(pem)
    pub = leaf.public_key()
    assert isinstance(pub, ec.EllipticCurvePublicKey)
    _verify_p256(pub, sd.qe_report_signature, sd.qe_report.to_bytes())


@pytest.mark.parametrize("vec", [v for v in QUOTE_VECTORS if v.fmspc], ids=lambda v: v.rel)
def test_pck_chain_fmspc_and_ca_kind(sgx_testdata: Path, vec: QuoteVector) -> None:
    quote = parse_quote(_load(sgx_testdata, vec.rel))
    certs = quote.pck_certificates()
    assert len(certs) == 3
    assert certs[0].issuer == certs[1].subject
    assert certs[1].issuer == certs[2].subject == certs[2].issuer
    assert parse_pck_extension(certs[0]).fmspc.hex().upper() == vec.fmspc
    assert pck_ca_kind(certs[0]) == vec.ca
    pem = quote.signature_data.certification_data.pck_chain_pem()
    assert pem.count(b"-----BEGIN CERTIFICATE-----") == 3
    assert not pem.endswith(b"\x00")


# --------------------------------------------------------------------------- known answers


def test_coco_occlum_quote_known_fields(sgx_testdata: Path) -> None:
    quote = parse_quote(_load(sgx_testdata, "coco-trustee/occlum_quote.dat"))
    h = quote.header
    assert (h.version, h.att_key_type, h.qe_svn, h.pce_svn) == (3, 2, 8, 13)
    assert h.user_data.hex().startswith("dccde9b3")
    body = quote.body
    assert isinstance(body, ReportBody)
    assert body.mr_enclave.hex() == (
        "8f173e4613ff05c52aaf04162d234edae8c9977eae47eb2299ae16a553011c68"
    )
    assert body.mr_signer.hex() == (
        "83d719e77deaca1470f6baf62a4d774303c899db69020f9c70ee1dfc08c7ce9e"
    )
    assert (body.isv_prod_id, body.isv_svn) == (0, 0)
    assert body.attributes.to_bytes().hex() == "0700000000000000" + "e700000000000000"
    assert body.attributes.debug
    assert body.report_data == b"test" + bytes(60)
    ext = parse_pck_extension(quote.pck_certificates()[0])
    # coco-trustee prints this id byte-reversed; the DER OCTET STRING holds c8c0...3a7a
    assert ext.platform_instance_id == bytes.fromhex("7a3a6941065cd5060bd93d3db2cfc0c8")[::-1]


def test_cosmian_quote_mr_signer(sgx_testdata: Path) -> None:
    quote = parse_quote(_load(sgx_testdata, "cosmian-intel-sgx-ra/quote.dat"))
    assert isinstance(quote.body, ReportBody)
    assert quote.body.mr_signer.hex() == (
        "ac2c9fa87e4c91768b1d0c47169466c50d5a98c790639fbaefe7352a59919980"
    )
    assert len(quote.pck_certificates()) == 3


def test_mobilecoin_quote_fields(sgx_testdata: Path) -> None:
    quote = parse_quote(_load(sgx_testdata, "mobilecoin-attestation/hw_quote.dat"))
    assert isinstance(quote.body, ReportBody)
    assert quote.body.mr_enclave.hex().startswith("840d61b0")
    assert quote.body.mr_enclave.hex().endswith("23f4")
    qe = quote.signature_data.qe_report
    assert qe.mr_signer.hex().startswith("8c4f5775")
    assert qe.mr_signer.hex().endswith("7bff")
    assert qe.isv_prod_id == 1
    assert (quote.header.qe_svn, quote.header.pce_svn) == (9, 14)


def test_phala_sgx_quote_svns_and_pck(sgx_testdata: Path) -> None:
    quote = parse_quote(_load(sgx_testdata, "phala-dcap-qvl/sgx_quote"))
    assert (quote.header.qe_svn, quote.header.pce_svn) == (10, 15)
    assert parse_pck_extension(quote.pck_certificates()[0]).pce_svn == 13


def test_tdx_v4_body_fields(sgx_testdata: Path) -> None:
    quote = parse_quote(_load(sgx_testdata, "phala-dcap-qvl/tdx_quote"))
    body = quote.body
    assert type(body) is TdReport10
    assert body.tee_tcb_svn[:3] == bytes.fromhex("060103")
    assert quote.body_type is None
    assert quote.trailing == bytes(70)
    assert len(quote.signed_bytes) == 48 + 584


def test_tdx_v5_body_descriptor(sgx_testdata: Path) -> None:
    raw = _load(sgx_testdata, "phala-dcap-qvl/tdx_quote_outdated")
    assert struct.unpack_from("<HI", raw, 48) == (3, 648)
    quote = parse_quote(raw)
    assert quote.header.version == 5
    assert quote.body_type == 3
    assert type(quote.body) is TdReport15
    assert quote.signed_bytes == raw[: 48 + 6 + 648]
    assert quote.is_tdx


def test_trailing_bytes_kept_verbatim(sgx_testdata: Path) -> None:
    go = parse_quote(_load(sgx_testdata, "google-go-tdx-guest/tdx_prod_quote_SPR_E4.dat"))
    assert go.trailing == b"\nextra bytes(only for testing purpose)\n"
    automata = parse_quote(_load(sgx_testdata, "automata-dcap-rs/quote_tdx_00806f050000.dat"))
    assert automata.trailing == bytes(3065)
    assert automata.header.version == 4


def test_intel_test_quote_type1_parses_but_has_no_chain(sgx_testdata: Path) -> None:
    quote = parse_quote(_load(sgx_testdata, "intel-qvl-sampledata-testpki/quote.dat"))
    cert = quote.signature_data.certification_data
    assert cert.cert_type == 1
    assert len(cert.data) == 34
    assert isinstance(quote.body, ReportBody)
    assert quote.body.mr_enclave == bytes(32)
    assert quote.body.mr_signer == bytes(32)
    assert quote.body.report_data == bytes(64)
    with pytest.raises(UnsupportedFormatError, match="type 1"):
        quote.pck_certificates()
    with pytest.raises(UnsupportedFormatError, match="type 1"):
        cert.pck_chain_pem()


def test_hex_vectors_decode_to_distinct_tdx_quotes(sgx_testdata: Path) -> None:
    """tdx-quote.hex has a 0x prefix, quote-from-tappd.hex none; both are different TDs."""
    assert (sgx_testdata / "phala-dcap-qvl/tdx-quote.hex").read_bytes().startswith(b"0x")
    hexq = parse_quote(_load(sgx_testdata, "phala-dcap-qvl/tdx-quote.hex"))
    tappd = parse_quote(_load(sgx_testdata, "phala-dcap-qvl/quote-from-tappd.hex"))
    assert isinstance(hexq.body, TdReport10)
    assert isinstance(tappd.body, TdReport10)
    assert hexq.header == tappd.header
    assert hexq.body.mr_td != tappd.body.mr_td
    assert hexq.body.mr_td.hex().startswith("7ba9e262ce697908")


# --------------------------------------------------------------------------- framing errors


@pytest.fixture
def sgx_v3(sgx_testdata: Path) -> bytes:
    return _load(sgx_testdata, "phala-dcap-qvl/sgx_quote")


@pytest.fixture
def tdx_v4(sgx_testdata: Path) -> bytes:
    return _load(sgx_testdata, "phala-dcap-qvl/tdx_quote")


def _patch(raw: bytes, offset: int, fmt: str, value: int) -> bytes:
    buf = bytearray(raw)
    struct.pack_into(fmt, buf, offset, value)
    return bytes(buf)


def test_unsupported_header_values(sgx_v3: bytes) -> None:
    with pytest.raises(UnsupportedFormatError, match="att_key_type 3"):
        parse_quote(_patch(sgx_v3, 2, "<H", 3))
    with pytest.raises(UnsupportedFormatError, match="version 2"):
        parse_quote(_patch(sgx_v3, 0, "<H", 2))
    with pytest.raises(UnsupportedFormatError, match="v3 tee_type"):
        parse_quote(_patch(sgx_v3, 4, "<I", 0x81))


def test_unknown_tee_type_in_v4(tdx_v4: bytes) -> None:
    with pytest.raises(UnsupportedFormatError, match="tee_type 0x00000042"):
        parse_quote(_patch(tdx_v4, 4, "<I", 0x42))


def test_v5_bad_descriptor(sgx_testdata: Path) -> None:
    raw = _load(sgx_testdata, "phala-dcap-qvl/tdx_quote_outdated")
    with pytest.raises(FormatError, match="body size"):
        parse_quote(_patch(raw, 50, "<I", 584))
    with pytest.raises(UnsupportedFormatError, match="body type 9"):
        parse_quote(_patch(raw, 48, "<H", 9))
    with pytest.raises(FormatError, match="disagree"):
        parse_quote(_patch(_patch(raw, 48, "<H", 1), 50, "<I", 384))


def test_signature_length_too_long_or_short(sgx_v3: bytes) -> None:
    off = 48 + 384
    (sig_len,) = struct.unpack_from("<I", sgx_v3, off)
    with pytest.raises(FormatError, match="signature data"):
        parse_quote(_patch(sgx_v3, off, "<I", sig_len + 1))
    with pytest.raises(FormatError, match="certification data"):
        parse_quote(_patch(sgx_v3, off, "<I", sig_len - 1))


def test_bytes_inside_signature_data_must_be_accounted(sgx_v3: bytes) -> None:
    """Growing the declared signature length over appended bytes is not 'trailing'."""
    off = 48 + 384
    (sig_len,) = struct.unpack_from("<I", sgx_v3, off)
    grown = _patch(sgx_v3, off, "<I", sig_len + 4) + bytes(4)
    with pytest.raises(FormatError, match="unaccounted"):
        parse_quote(grown)
    assert parse_quote(sgx_v3 + bytes(4)).trailing == bytes(4)


def test_type6_wrapper_size_and_type(tdx_v4: bytes) -> None:
    off = 48 + 584 + 4 + 128
    assert struct.unpack_from("<H", tdx_v4, off) == (6,)
    with pytest.raises(UnsupportedFormatError, match="type 5"):
        parse_quote(_patch(tdx_v4, off, "<H", 5))
    (size,) = struct.unpack_from("<I", tdx_v4, off + 2)
    with pytest.raises(FormatError, match="unaccounted"):
        parse_quote(_patch(tdx_v4, off + 2, "<I", size - 1))


@pytest.mark.parametrize("cut", [0, 1, 47, 48, 100, 432, 436, 500, 1000, 4599])
def test_truncations_are_format_errors(sgx_v3: bytes, cut: int) -> None:
    with pytest.raises(FormatError):
        parse_quote(sgx_v3[:cut])


def test_non_bytes_rejected() -> None:
    with pytest.raises(FormatError, match="expected bytes"):
        parse_quote("0300")  # type: ignore[arg-type]


def test_certification_data_bad_pem_is_format_error() -> None:
    bad_der = CertificationData(
        5, b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    with pytest.raises(FormatError, match="PEM"):
        bad_der.certificates()
    with pytest.raises(FormatError, match="PEM"):
        CertificationData(5, b"not pem\x00\x00").certificates()
    with pytest.raises(FormatError, match="u16"):
        CertificationData(70000, b"")


def test_constructors_validate_sizes(sgx_v3: bytes) -> None:
    quote = parse_quote(sgx_v3)
    with pytest.raises(FormatError, match="user_data"):
        QuoteHeader(3, 2, 0, 1, 1, bytes(16), bytes(19))
    with pytest.raises(FormatError, match="reserved"):
        QuoteHeader(3, 2, 0, 1, 1, bytes(16), bytes(20), bytes(4))
    sd = quote.signature_data
    with pytest.raises(FormatError, match="quote signature"):
        EcdsaSignatureData(
            bytes(63),
            sd.attestation_key,
            sd.qe_report,
            sd.qe_report_signature,
            sd.qe_auth_data,
            sd.certification_data,
        )
    with pytest.raises(FormatError, match="body"):
        Quote(quote.header, TdReport10.parse(bytes(584)), sd)
    with pytest.raises(FormatError, match="body_type"):
        Quote(quote.header, quote.body, sd, body_type=1)


def test_built_v3_quote_round_trips(sgx_v3: bytes) -> None:
    """A quote assembled from parts (as the simulator does) parses back to equal parts."""
    q = parse_quote(sgx_v3)
    sd = EcdsaSignatureData(
        signature=bytes(range(64)),
        attestation_key=bytes(64),
        qe_report=q.signature_data.qe_report,
        qe_report_signature=bytes(64),
        qe_auth_data=b"auth",
        certification_data=CertificationData(5, b"pem\x00"),
    )
    built = Quote(q.header, q.body, sd)
    again = parse_quote(built.to_bytes())
    assert again == built
    v4 = Quote(
        QuoteHeader(4, 2, 0, 1, 2, bytes(16), bytes(20)),
        q.body,
        EcdsaSignatureData(
            sd.signature,
            sd.attestation_key,
            sd.qe_report,
            sd.qe_report_signature,
            sd.qe_auth_data,
            sd.certification_data,
            qe_report_cert_type=6,
        ),
    )
    assert parse_quote(v4.to_bytes()) == v4
    assert v4.is_sgx


# --------------------------------------------------------------------------- report.py


def test_report_body_round_trip_on_real_bytes(sgx_v3: bytes) -> None:
    raw = sgx_v3[48 : 48 + 384]
    body = ReportBody.parse(raw)
    assert body.to_bytes() == raw
    assert len(body.to_bytes()) == ReportBody.SIZE
    # the QE report, embedded further on, round-trips too
    qe_raw = sgx_v3[48 + 384 + 4 + 128 : 48 + 384 + 4 + 128 + 384]
    assert ReportBody.parse(qe_raw).to_bytes() == qe_raw
    assert parse_quote(sgx_v3).body.report_data == raw[320:384]


def test_report_body_default_reserved_builds_384_bytes() -> None:
    body = ReportBody(
        cpu_svn=bytes(16),
        misc_select=0,
        isv_ext_prod_id=bytes(16),
        attributes=Attributes(0x7, 0xE7),
        mr_enclave=b"\x11" * 32,
        mr_signer=b"\x22" * 32,
        config_id=bytes(64),
        isv_prod_id=1,
        isv_svn=2,
        config_svn=0,
        isv_family_id=bytes(16),
        report_data=b"\x33" * 64,
    )
    raw = body.to_bytes()
    assert len(raw) == 384
    assert raw[64:96] == b"\x11" * 32
    assert raw[128:160] == b"\x22" * 32
    assert raw[256:260] == b"\x01\x00\x02\x00"
    assert raw[320:] == b"\x33" * 64
    assert ReportBody.parse(raw) == body


def test_target_info_and_report_round_trip(sgx_v3: bytes) -> None:
    body = ReportBody.parse(sgx_v3[48 : 48 + 384])
    ti = TargetInfo(body.mr_enclave, body.attributes, config_svn=3, misc_select=1)
    raw_ti = ti.to_bytes()
    assert len(raw_ti) == 512
    assert TargetInfo.parse(raw_ti) == ti
    assert raw_ti[:32] == body.mr_enclave
    report = Report(body, b"\x44" * 32, b"\x55" * 16)
    raw_report = report.to_bytes()
    assert len(raw_report) == 432
    assert Report.parse(raw_report) == report
    with pytest.raises(FormatError):
        Report.parse(raw_report[:-1])
    with pytest.raises(FormatError):
        TargetInfo.parse(raw_ti + b"\x00")
