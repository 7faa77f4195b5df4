"""RA-TLS certificates: building ours, reading Gramine/Open Enclave forms, rejecting bad ones."""

from __future__ import annotations

import hashlib
import struct
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_kms.attestation.collateral import load_collateral
from enclave_kms.attestation.ratls import (
    GRAMINE_QUOTE_OID,
    OE_EVIDENCE_OID,
    OE_EVIDENCE_OID_LEGACY,
    OE_FORMAT_UUID_SGX_ECDSA,
    OE_REPORT_OID,
    OE_REPORT_OID_LEGACY,
    RaTlsCertificate,
    RaTlsForm,
    expected_report_data_for,
    extract_evidence,
    make_ratls_certificate,
    verify_ratls_certificate,
)
from enclave_kms.attestation.types import TrustRoot
from enclave_kms.attestation.verify import verify_quote
from enclave_kms.errors import (
    AttestationError,
    BindingError,
    CertificateChainError,
    EnclaveKMSError,
    FormatError,
    SignatureError,
    UnsupportedFormatError,
)
from enclave_kms.sgx.oe import build_oe_report

NOT_BEFORE = datetime(2025, 1, 1, tzinfo=UTC)
NOT_AFTER = datetime(2026, 1, 1, tzinfo=UTC)
INSIDE = NOT_BEFORE + timedelta(days=1)  # validity is always checked: a time inside it
REPORT_DATA_OFFSET = 48 + 320  # quote header + offset of report_data in the SGX report body


@pytest.fixture(scope="module")
def key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="module")
def quote(sgx_testdata: Path) -> bytes:
    return (sgx_testdata / "phala-dcap-qvl" / "sgx_quote").read_bytes()


def with_report_data(quote: bytes, first32: bytes) -> bytes:
    """The quote with report_data[0:32] replaced: binds what we want, but its signature breaks."""
    return quote[:REPORT_DATA_OFFSET] + first32 + quote[REPORT_DATA_OFFSET + 32 :]


def make(key: ec.EllipticCurvePrivateKey, quote: bytes) -> x509.Certificate:
    return make_ratls_certificate(
        key, quote, subject_cn="enclave-kms", not_before=NOT_BEFORE, not_after=NOT_AFTER
    )


def cert_with(
    key: ec.EllipticCurvePrivateKey, extensions: list[tuple[str, bytes]]
) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test")])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(7)
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
    )
    for oid, value in extensions:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(oid), value), critical=False
        )
    return builder.sign(key, hashes.SHA256())


def oe_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    """What Open Enclave hashes: the PEM public key with its NUL terminator."""
    return key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo) + b"\0"


def oe_attestation_header(data: bytes, *, version: int = 3, uuid: bytes | None = None) -> bytes:
    fmt = OE_FORMAT_UUID_SGX_ECDSA if uuid is None else uuid
    return struct.pack("<I16sQ", version, fmt, len(data)) + data


# ---------------------------------------------------------------------- building (Gramine form)


def test_built_certificate_shape(key: ec.EllipticCurvePrivateKey, quote: bytes) -> None:
    cert = make_ratls_certificate(
        key,
        quote,
        subject_cn="kms.example",
        not_before=NOT_BEFORE,
        not_after=NOT_AFTER,
        dns_names=["kms.example"],
    )
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "kms.example"
    assert cert.signature_algorithm_oid == x509.SignatureAlgorithmOID.ECDSA_WITH_SHA256
    ext = cert.extensions.get_extension_for_oid(x509.ObjectIdentifier(GRAMINE_QUOTE_OID))
    assert not ext.critical
    assert isinstance(ext.value, x509.UnrecognizedExtension)
    assert ext.value.value == quote
    cert.verify_directly_issued_by(cert)
    parsed = RaTlsCertificate.parse(cert)
    assert parsed.not_before == NOT_BEFORE
    assert parsed.not_after == NOT_AFTER
    assert parsed.extension(GRAMINE_QUOTE_OID) == quote


def test_expected_report_data_is_sha256_of_spki(
    key: ec.EllipticCurvePrivateKey, quote: bytes
) -> None:
    cert = make(key, quote)
    spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    digest = hashlib.sha256(spki).digest()
    assert expected_report_data_for(cert) == digest
    assert expected_report_data_for(key.public_key()) == digest
    assert expected_report_data_for(cert.public_bytes(Encoding.DER)) == digest
    assert len(digest) == 32


def test_real_quote_for_another_key_is_a_binding_error(
    key: ec.EllipticCurvePrivateKey, quote: bytes
) -> None:
    with pytest.raises(BindingError) as exc:
        verify_ratls_certificate(make(key, quote), now=INSIDE)
    assert exc.value.step == "ratls_binding"
    assert "another key" in exc.value.message


def test_bound_quote_is_extracted(key: ec.EllipticCurvePrivateKey, quote: bytes) -> None:
    bound = with_report_data(quote, expected_report_data_for(key.public_key()))
    cert = make(key, bound)
    for form in (cert, cert.public_bytes(Encoding.DER), cert.public_bytes(Encoding.PEM)):
        assert verify_ratls_certificate(form, now=NOT_BEFORE + timedelta(days=1)) == (
            bound,
            RaTlsForm.GRAMINE,
        )


def test_binding_is_not_authenticity(
    key: ec.EllipticCurvePrivateKey, quote: bytes, sgx_testdata: Path
) -> None:
    """A forged binding passes the certificate checks; the quote verification then fails."""
    bound = with_report_data(quote, expected_report_data_for(key.public_key()))
    quote_bytes, _form = verify_ratls_certificate(make(key, bound), now=INSIDE)
    collateral = (sgx_testdata / "phala-dcap-qvl" / "sgx_quote_collateral.json").read_bytes()
    with pytest.raises(SignatureError) as exc:
        verify_quote(
            quote_bytes,
            load_collateral(collateral),
            trust_root=TrustRoot.intel_production(),
            now=datetime(2025, 7, 19, 10, 1, 17, tzinfo=UTC),
            second_opinion=False,
        )
    assert exc.value.step == "quote_signature"


def test_only_p256_keys_build_certificates(quote: bytes) -> None:
    for other in (ec.generate_private_key(ec.SECP384R1()), rsa.generate_private_key(65537, 2048)):
        with pytest.raises(TypeError, match="P-256"):
            make(other, quote)  # type: ignore[arg-type]


def test_validity_window_is_checked_when_now_is_given(
    key: ec.EllipticCurvePrivateKey, quote: bytes
) -> None:
    cert = make(key, with_report_data(quote, expected_report_data_for(key.public_key())))
    verify_ratls_certificate(cert, now=NOT_AFTER)
    with pytest.raises(CertificateChainError) as exc:
        verify_ratls_certificate(cert, now=NOT_AFTER + timedelta(seconds=1))
    assert exc.value.step == "ratls_validity"


# ---------------------------------------------------------------------- tampering


def test_altered_certificate_fails_its_self_signature(
    key: ec.EllipticCurvePrivateKey, quote: bytes
) -> None:
    der = bytearray(make(key, quote).public_bytes(Encoding.DER))
    at = bytes(der).find(quote[:64]) + 100  # a byte of the embedded quote, inside the TBS
    der[at] ^= 0x01
    with pytest.raises(SignatureError) as exc:
        verify_ratls_certificate(bytes(der), now=INSIDE)
    assert exc.value.step == "ratls_self_signature"


def test_certificate_signed_by_another_key_fails(
    key: ec.EllipticCurvePrivateKey, quote: bytes
) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOT_BEFORE)
        .not_valid_after(NOT_AFTER)
        .add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier(GRAMINE_QUOTE_OID),
                with_report_data(quote, expected_report_data_for(key.public_key())),
            ),
            critical=False,
        )
        .sign(other, hashes.SHA256())
    )
    with pytest.raises(SignatureError, match="self-signature"):
        verify_ratls_certificate(cert, now=INSIDE)


@pytest.mark.parametrize("name", ["sgx_cert_ec_bad.der", "sgx_cert_rsa_bad.der"])
def test_open_enclave_bad_certificates_are_rejected(sgx_testdata: Path, name: str) -> None:
    data = (sgx_testdata / "openenclave-tests" / name).read_bytes()
    with pytest.raises(SignatureError) as exc:
        verify_ratls_certificate(data, now=INSIDE)
    assert exc.value.step == "ratls_self_signature"
    # The evidence itself is well formed and follows OE's binding rule (SHA-256 of the PEM
    # public key with its NUL): what is broken is the signature (and the quote's PCK chain).
    cert = RaTlsCertificate.parse(data)
    evidence = extract_evidence(cert)
    assert evidence.form is RaTlsForm.OE_REPORT
    assert evidence.oid == OE_REPORT_OID_LEGACY
    assert evidence.held_data == cert.spki_pem() + b"\0"
    report_data = evidence.quote_bytes[REPORT_DATA_OFFSET : REPORT_DATA_OFFSET + 32]
    assert report_data == hashlib.sha256(evidence.held_data).digest()


# ---------------------------------------------------------------------- no / odd evidence


def test_certificate_without_evidence(sgx_testdata: Path) -> None:
    root = (sgx_testdata / "phala-dcap-qvl" / "TrustedRootCA.der").read_bytes()
    RaTlsCertificate.parse(root).verify_self_signature()  # Intel's root is validly self-signed
    with pytest.raises(AttestationError) as exc:
        verify_ratls_certificate(root, now=INSIDE)
    assert exc.value.step == "ratls_evidence"
    assert "no attestation evidence" in exc.value.message


def test_two_evidence_extensions_are_ambiguous(
    key: ec.EllipticCurvePrivateKey, quote: bytes
) -> None:
    cert = cert_with(key, [(GRAMINE_QUOTE_OID, quote), (OE_REPORT_OID, build_oe_report(quote))])
    with pytest.raises(FormatError, match="several evidence extensions"):
        verify_ratls_certificate(cert, now=INSIDE)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x30\x03\x02\x01\x00",
        b"-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
    ],
)
def test_not_a_certificate(data: bytes) -> None:
    with pytest.raises(FormatError) as exc:
        verify_ratls_certificate(data, now=INSIDE)
    assert exc.value.step == "ratls_certificate"


# ---------------------------------------------------------------------- Open Enclave forms


def test_oe_report_form_binds_the_pem_key(key: ec.EllipticCurvePrivateKey, quote: bytes) -> None:
    bound = with_report_data(quote, hashlib.sha256(oe_pem(key)).digest())
    for oid in (OE_REPORT_OID, OE_REPORT_OID_LEGACY):
        cert = cert_with(key, [(oid, build_oe_report(bound))])
        assert verify_ratls_certificate(cert, now=INSIDE) == (bound, RaTlsForm.OE_REPORT)
    # The Gramine rule (DER SPKI) is not the OE rule: the same quote in a Gramine extension fails.
    with pytest.raises(BindingError):
        verify_ratls_certificate(cert_with(key, [(GRAMINE_QUOTE_OID, bound)]), now=INSIDE)


def test_oe_evidence_form(key: ec.EllipticCurvePrivateKey, quote: bytes) -> None:
    claims = oe_pem(key)
    bound = with_report_data(quote, hashlib.sha256(claims).digest())
    for oid in (OE_EVIDENCE_OID, OE_EVIDENCE_OID_LEGACY):
        cert = cert_with(key, [(oid, oe_attestation_header(bound + claims))])
        assert verify_ratls_certificate(cert, now=INSIDE) == (bound, RaTlsForm.OE_EVIDENCE)
        evidence = extract_evidence(cert)
        assert evidence.claims == claims
    # Claims that are not this key, even when report_data binds them.
    other = oe_pem(ec.generate_private_key(ec.SECP256R1()))
    forged = with_report_data(quote, hashlib.sha256(other).digest())
    with pytest.raises(BindingError, match="custom claims"):
        verify_ratls_certificate(
            cert_with(key, [(OE_EVIDENCE_OID, oe_attestation_header(forged + other))]), now=INSIDE
        )
    # The right claims but a report_data that does not bind them.
    with pytest.raises(BindingError, match="report_data"):
        verify_ratls_certificate(
            cert_with(key, [(OE_EVIDENCE_OID, oe_attestation_header(quote + claims))]), now=INSIDE
        )


@pytest.mark.parametrize(
    ("payload_kind", "error"),
    [
        ("version", UnsupportedFormatError),
        ("uuid", UnsupportedFormatError),
        ("size", FormatError),
        ("short", FormatError),
    ],
)
def test_oe_attestation_header_is_checked(
    key: ec.EllipticCurvePrivateKey, quote: bytes, payload_kind: str, error: type[Exception]
) -> None:
    payload = {
        "version": oe_attestation_header(quote, version=2),
        "uuid": oe_attestation_header(quote, uuid=bytes(16)),
        "size": oe_attestation_header(quote)[:-1],
        "short": b"\x03\x00\x00\x00",
    }[payload_kind]
    with pytest.raises(error):
        verify_ratls_certificate(cert_with(key, [(OE_EVIDENCE_OID, payload)]), now=INSIDE)


# ---------------------------------------------------------------------- fuzzing


@settings(max_examples=150, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_as_certificate_give_typed_errors(data: bytes) -> None:
    with pytest.raises(EnclaveKMSError):
        verify_ratls_certificate(data, now=INSIDE)


@settings(max_examples=60, deadline=None)
@given(
    oid=st.sampled_from([GRAMINE_QUOTE_OID, OE_REPORT_OID, OE_EVIDENCE_OID, OE_REPORT_OID_LEGACY]),
    payload=st.binary(max_size=300),
)
def test_arbitrary_extension_payload_gives_typed_errors(
    key: ec.EllipticCurvePrivateKey, oid: str, payload: bytes
) -> None:
    cert = cert_with(key, [(oid, payload)])
    with pytest.raises(EnclaveKMSError):
        verify_ratls_certificate(cert, now=INSIDE)
