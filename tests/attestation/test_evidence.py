"""Evidence auto-detection over every real evidence file, plus crafted OE evidence and certs."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_kms.attestation.evidence import Evidence, EvidenceForm, load_evidence
from enclave_kms.attestation.ratls import expected_report_data_for, make_ratls_certificate
from enclave_kms.errors import (
    AttestationError,
    BindingError,
    CertificateChainError,
    EnclaveKMSError,
    FormatError,
    SignatureError,
)
from enclave_kms.sgx.oe import CustomClaim, build_oe_report, serialize_custom_claims
from enclave_kms.sgx.quote import parse_quote

REPORT_DATA_OFFSET = 48 + 320
AZURE_MRSIGNER = "62ba6bcab59700c340bdbcd36bf74c6e0d6892cdf91671dca93bcbfff81ef9f2"
ANY_TIME = datetime(2025, 6, 1, tzinfo=UTC)  # `now` is required; only RA-TLS forms read it
OE_MRENCLAVE = "91dd79e47cae70787883e617838c7c981cc9744ebac9756c8ce03f09057538ac"


def load(sgx_testdata: Path, rel: str) -> Evidence:
    return load_evidence((sgx_testdata / rel).read_bytes())


# (file, form, quote version, hex text, binds held data)
FILES = [
    ("phala-dcap-qvl/sgx_quote", EvidenceForm.RAW_QUOTE, 3, False, None),
    ("phala-dcap-qvl/tdx_quote", EvidenceForm.RAW_QUOTE, 4, False, None),
    ("phala-dcap-qvl/tdx_quote_outdated", EvidenceForm.RAW_QUOTE, 5, False, None),
    ("phala-dcap-qvl/tdx-quote.hex", EvidenceForm.RAW_QUOTE, 4, True, None),
    ("phala-dcap-qvl/quote-from-tappd.hex", EvidenceForm.RAW_QUOTE, 4, True, None),
    ("automata-dcap-rs/quote_v3_sgx_test_verifyv3.hex", EvidenceForm.RAW_QUOTE, 3, True, None),
    ("automata-dcap-rs/quote_tdx_00806f050000.dat", EvidenceForm.RAW_QUOTE, 4, False, None),
    ("mobilecoin-attestation/hw_quote.dat", EvidenceForm.RAW_QUOTE, 3, False, None),
    ("google-go-tdx-guest/tdx_prod_quote_SPR_E4.dat", EvidenceForm.RAW_QUOTE, 4, False, None),
    ("cosmian-intel-sgx-ra/quote.dat", EvidenceForm.RAW_QUOTE, 3, False, None),
    ("coco-trustee/occlum_quote.dat", EvidenceForm.RAW_QUOTE, 3, False, None),
    ("intel-qvl-sampledata-testpki/quote.dat", EvidenceForm.RAW_QUOTE, 3, False, None),
    ("openenclave-tests/evidence", EvidenceForm.OE_EVIDENCE, 3, False, True),
    ("openenclave-tests/sgx_report_bad.bin", EvidenceForm.OE_REPORT, 3, False, None),
    ("openenclave-tests/sgx_cert_ec_bad.der", EvidenceForm.RATLS_CERTIFICATE, 3, False, True),
    ("openenclave-tests/sgx_cert_rsa_bad.der", EvidenceForm.RATLS_CERTIFICATE, 3, False, True),
    ("azure-maa-oe-sample/enclave.info.debug.json", EvidenceForm.TUTORIAL_JSON, 3, False, True),
    ("azure-maa-oe-sample/enclave.info.release.json", EvidenceForm.TUTORIAL_JSON, 3, False, True),
    ("azure-maa-oe-sample/enclave.info.prodid.json", EvidenceForm.TUTORIAL_JSON, 3, False, True),
    (
        "azure-maa-oe-sample/enclave.info.securityversion.json",
        EvidenceForm.TUTORIAL_JSON,
        3,
        False,
        True,
    ),
]


@pytest.mark.parametrize(("rel", "form", "version", "hexed", "binds"), FILES)
def test_every_evidence_file_is_detected(
    sgx_testdata: Path,
    rel: str,
    form: EvidenceForm,
    version: int,
    hexed: bool,
    binds: bool | None,
) -> None:
    ev = load(sgx_testdata, rel)
    assert (ev.form, ev.quote.version, ev.hex_encoded, ev.binds_held_data) == (
        form,
        version,
        hexed,
        binds,
    )
    assert parse_quote(ev.quote_bytes) == ev.quote
    assert ev.quote.to_bytes() == ev.quote_bytes
    assert (ev.held_data is None) == (binds is None)


def test_raw_quote_bytes_are_the_file(sgx_testdata: Path) -> None:
    raw = (sgx_testdata / "phala-dcap-qvl" / "tdx_quote").read_bytes()
    ev = load_evidence(raw)
    assert ev.quote_bytes == raw  # padding kept: nothing is dropped silently
    assert len(ev.quote.trailing) == 70


def test_junk_after_quote_stays_a_raw_quote(sgx_testdata: Path) -> None:
    ev = load(sgx_testdata, "google-go-tdx-guest/tdx_prod_quote_SPR_E4.dat")
    assert ev.quote.trailing == b"\nextra bytes(only for testing purpose)\n"
    assert ev.form is EvidenceForm.RAW_QUOTE


@pytest.mark.parametrize(
    ("name", "prod_id", "svn", "debug"),
    [
        ("debug", 1, 1, True),
        ("release", 1, 1, False),
        ("prodid", 9999, 1, False),
        ("securityversion", 1, 8888, False),
    ],
)
def test_tutorial_json(sgx_testdata: Path, name: str, prod_id: int, svn: int, debug: bool) -> None:
    ev = load(sgx_testdata, f"azure-maa-oe-sample/enclave.info.{name}.json")
    body = ev.quote.body
    assert body.mr_signer.hex() == AZURE_MRSIGNER  # type: ignore[union-attr]
    assert (body.isv_prod_id, body.isv_svn) == (prod_id, svn)  # type: ignore[union-attr]
    assert body.attributes.debug is debug  # type: ignore[union-attr]
    assert ev.held_data is not None
    assert len(ev.held_data) == 512
    assert ev.held_data.startswith(b"-----BEGIN PUBLIC KEY-----")
    assert ev.binds_held_data is True
    assert ev.extra["json_fields_match_quote"] == "yes"
    ev.check_bindings(now=ANY_TIME)


def test_tutorial_json_with_other_held_data_does_not_bind(sgx_testdata: Path) -> None:
    text = (sgx_testdata / "azure-maa-oe-sample" / "enclave.info.release.json").read_text()
    tampered = text.replace('"EnclaveHeldDataHex": "2D', '"EnclaveHeldDataHex": "2E')
    assert tampered != text
    ev = load_evidence(tampered.encode())
    assert ev.binds_held_data is False
    with pytest.raises(BindingError) as exc:
        ev.check_bindings(now=ANY_TIME)
    assert exc.value.step == "held_data_binding"


def test_tutorial_json_copies_that_disagree_are_reported(sgx_testdata: Path) -> None:
    text = (sgx_testdata / "azure-maa-oe-sample" / "enclave.info.release.json").read_text()
    ev = load_evidence(text.replace('"SecurityVersion": 1', '"SecurityVersion": 2').encode())
    assert ev.extra["json_fields_match_quote"] == "NO"
    assert "SecurityVersion" in ev.extra["mismatch_0"]


def test_open_enclave_evidence_with_no_claims(sgx_testdata: Path) -> None:
    ev = load(sgx_testdata, "openenclave-tests/evidence")
    assert ev.quote.body.mr_enclave.hex() == OE_MRENCLAVE  # type: ignore[union-attr]
    assert ev.held_data == b""
    assert ev.quote.body.report_data[:32] == hashlib.sha256(b"").digest()


def test_open_enclave_evidence_with_claims(sgx_testdata: Path) -> None:
    raw = (sgx_testdata / "phala-dcap-qvl" / "sgx_quote").read_bytes()
    claims = serialize_custom_claims(
        [CustomClaim("Event", b"startup"), CustomClaim("Public key hash", b"\x01" * 32)]
    )
    unbound = load_evidence(raw + claims)
    assert unbound.form is EvidenceForm.OE_EVIDENCE
    assert unbound.binds_held_data is False
    assert unbound.held_data == claims
    assert unbound.quote_bytes == raw
    assert unbound.extra["claim:Event"] == "startup"
    assert unbound.extra["claim:Public key hash"] == "01" * 32

    bound_quote = (
        raw[:REPORT_DATA_OFFSET] + hashlib.sha256(claims).digest() + raw[REPORT_DATA_OFFSET + 32 :]
    )
    bound = load_evidence(bound_quote + claims)
    assert (bound.form, bound.binds_held_data) == (EvidenceForm.OE_EVIDENCE, True)


def test_bound_opaque_buffer_is_oe_evidence(sgx_testdata: Path) -> None:
    raw = (sgx_testdata / "phala-dcap-qvl" / "sgx_quote").read_bytes()
    held = b"an opaque buffer, not OE claims"
    bound_quote = (
        raw[:REPORT_DATA_OFFSET] + hashlib.sha256(held).digest() + raw[REPORT_DATA_OFFSET + 32 :]
    )
    ev = load_evidence(bound_quote + held)
    assert (ev.form, ev.held_data, ev.binds_held_data) == (EvidenceForm.OE_EVIDENCE, held, True)


def test_oe_report_built_from_a_quote(sgx_testdata: Path) -> None:
    raw = (sgx_testdata / "coco-trustee" / "occlum_quote.dat").read_bytes()
    ev = load_evidence(build_oe_report(raw))
    assert (ev.form, ev.quote_bytes) == (EvidenceForm.OE_REPORT, raw)
    ev_hex = load_evidence(b"0x" + build_oe_report(raw).hex().upper().encode() + b"\r\n")
    assert (ev_hex.form, ev_hex.hex_encoded) == (EvidenceForm.OE_REPORT, True)


def test_our_ratls_certificate_pem_and_der(sgx_testdata: Path) -> None:
    raw = (sgx_testdata / "phala-dcap-qvl" / "sgx_quote").read_bytes()
    key = ec.generate_private_key(ec.SECP256R1())
    bound = (
        raw[:REPORT_DATA_OFFSET]
        + expected_report_data_for(key.public_key())
        + raw[REPORT_DATA_OFFSET + 32 :]
    )
    when = datetime(2025, 1, 1, tzinfo=UTC)
    for quote, binds in ((raw, False), (bound, True)):
        cert = make_ratls_certificate(
            key, quote, subject_cn="kms", not_before=when, not_after=when.replace(year=2026)
        )
        for data in (cert.public_bytes(Encoding.PEM), cert.public_bytes(Encoding.DER)):
            ev = load_evidence(data)
            assert (ev.form, ev.quote_bytes, ev.binds_held_data) == (
                EvidenceForm.RATLS_CERTIFICATE,
                quote,
                binds,
            )
            assert ev.extra["self_signature"] == "valid"
            assert ev.extra["ratls_form"] == "gramine"
            if binds:
                ev.check_bindings(now=when)
            else:
                with pytest.raises(BindingError):
                    ev.check_bindings(now=when)
        hexed = load_evidence(cert.public_bytes(Encoding.DER).hex().encode() + b"\n")
        assert hexed.hex_encoded
        assert hexed.source == cert.public_bytes(Encoding.DER)
        if binds:
            hexed.check_bindings(now=when)
            with pytest.raises(CertificateChainError):
                hexed.check_bindings(now=when.replace(year=2027))


def test_bad_oe_certificate_loads_for_inspection_but_says_so(sgx_testdata: Path) -> None:
    ev = load(sgx_testdata, "openenclave-tests/sgx_cert_ec_bad.der")
    assert ev.extra["self_signature"].startswith("INVALID")
    assert ev.extra["extension_oid"] == "1.2.840.113556.10.1.1"
    with pytest.raises(SignatureError):
        ev.check_bindings(now=ANY_TIME)


@pytest.mark.parametrize(
    ("rel", "error", "needle"),
    [
        ("openenclave-tests/endorsements", FormatError, "endorsements"),
        ("phala-dcap-qvl/sgx_quote_collateral.json", FormatError, "enclave info"),
        ("phala-dcap-qvl/TrustedRootCA.der", AttestationError, "no attestation evidence"),
        ("mobilecoin-attestation/root_ca.pem", AttestationError, "no attestation evidence"),
        ("mobilecoin-attestation/root_crl.der", FormatError, "certificate"),
        ("azure-maa-oe-sample/signing_public.pem", FormatError, "certificate"),
    ],
)
def test_things_that_are_not_evidence(
    sgx_testdata: Path, rel: str, error: type[Exception], needle: str
) -> None:
    with pytest.raises(error, match=needle):
        load(sgx_testdata, rel)


@pytest.mark.parametrize(
    "data", [b"", b" \n", b"# only a comment\n", b"0x", b"abc", b"{}", b"{not json", b"\x03\x00"]
)
def test_garbage_is_a_format_error(data: bytes) -> None:
    with pytest.raises(FormatError):
        load_evidence(data)


def test_truncated_quote_names_the_field(sgx_testdata: Path) -> None:
    raw = (sgx_testdata / "phala-dcap-qvl" / "sgx_quote").read_bytes()
    with pytest.raises(FormatError, match="signature data"):
        load_evidence(raw[:1000])


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=600),
        st.binary(max_size=300).map(lambda b: b"{" + b),
        st.binary(max_size=300).map(lambda b: b"\x30\x82" + b),
        st.binary(max_size=300).map(lambda b: b"0x" + b.hex().encode()),
        st.binary(max_size=300).map(lambda b: b"\x01\x00\x00\x00\x02\x00\x00\x00" + b),
        st.binary(max_size=300).map(lambda b: b"-----BEGIN CERTIFICATE-----\n" + b),
    )
)
def test_arbitrary_bytes_give_typed_errors(data: bytes) -> None:
    try:
        load_evidence(data)
    except EnclaveKMSError:
        pass


@settings(max_examples=100, deadline=None)
@given(cut=st.integers(min_value=0, max_value=4679), tail=st.binary(max_size=40))
def test_cut_and_extended_real_evidence_gives_evidence_or_typed_error(
    sgx_testdata: Path, cut: int, tail: bytes
) -> None:
    raw = (sgx_testdata / "openenclave-tests" / "evidence").read_bytes()
    try:
        load_evidence(raw[: 82 + cut] + tail)
    except EnclaveKMSError:
        pass
