"""TCG DICE tagged evidence (2.23.133.5.4.9) in RA-TLS certificates, Gramine >= 1.8's layout:
accepted beside the legacy OID, refused when any binding is off, typed errors on garbage."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from pathlib import Path

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from enclave_kms.attestation import dice
from enclave_kms.attestation.evidence import EvidenceForm, load_evidence
from enclave_kms.attestation.ratls import (
    RaTlsForm,
    make_ratls_certificate,
    verify_ratls_certificate,
)
from enclave_kms.errors import BindingError, FormatError

NOT_BEFORE = datetime(2025, 1, 1, tzinfo=UTC)
NOW = NOT_BEFORE + timedelta(days=1)
REPORT_DATA_OFFSET = 48 + 320


def _spki(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)


def _bind(quote: bytes, first32: bytes) -> bytes:
    return quote[:REPORT_DATA_OFFSET] + first32 + quote[REPORT_DATA_OFFSET + 32 :]


def _cert(key: ec.EllipticCurvePrivateKey, legacy: bytes, tagged: bytes | None) -> bytes:
    return make_ratls_certificate(
        key,
        legacy,
        subject_cn="dice",
        not_before=NOT_BEFORE,
        not_after=NOT_BEFORE + timedelta(days=30),
        tagged_evidence=tagged,
    ).public_bytes(Encoding.DER)


@pytest.fixture
def quote(sgx_testdata: Path) -> bytes:
    return (sgx_testdata / "phala-dcap-qvl" / "sgx_quote").read_bytes()


def test_gramine_layout_is_accepted_and_the_dice_quote_is_appraised(quote: bytes) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    claims = dice.claims_for(_spki(key))
    dice_quote = _bind(quote, hashlib.sha256(claims).digest())
    legacy = _bind(quote, hashlib.sha256(_spki(key)).digest())
    der = _cert(key, legacy, dice.build_tagged_evidence(dice_quote, claims))
    got, form = verify_ratls_certificate(der, now=NOW)
    assert (got, form) == (dice_quote, RaTlsForm.DICE)
    evidence = load_evidence(der, form=EvidenceForm.RATLS_CERTIFICATE)
    assert evidence.extra["extension_oid"] == dice.DICE_TAGGED_EVIDENCE_OID
    evidence.check_bindings(now=NOW)


@pytest.mark.parametrize(
    "case", ["claims-other-key", "quote-not-binding-claims", "legacy-other-key"]
)
def test_every_binding_is_checked(quote: bytes, case: str) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    claims = dice.claims_for(_spki(other if case == "claims-other-key" else key))
    dice_quote = _bind(
        quote, bytes(32) if case == "quote-not-binding-claims" else hashlib.sha256(claims).digest()
    )
    legacy_key = other if case == "legacy-other-key" else key
    legacy = _bind(quote, hashlib.sha256(_spki(legacy_key)).digest())
    der = _cert(key, legacy, dice.build_tagged_evidence(dice_quote, claims))
    with pytest.raises(BindingError):
        verify_ratls_certificate(der, now=NOW)


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"\xff",
        cbor2.dumps([b"q", b"c"]),  # untagged
        cbor2.dumps(cbor2.CBORTag(60001, [b"q", b"c"])),
        cbor2.dumps(cbor2.CBORTag(60000, [b"q"])),
        cbor2.dumps(cbor2.CBORTag(60000, [b"q", cbor2.dumps({"other": b"x"})])),
        cbor2.dumps(
            cbor2.CBORTag(60000, [b"q", cbor2.dumps({"pubkey-hash": cbor2.dumps([2, b"x" * 32])})])
        ),
        cbor2.dumps(
            cbor2.CBORTag(60000, [b"q", cbor2.dumps({"pubkey-hash": cbor2.dumps([1, b"x" * 31])})])
        ),
    ],
)
def test_malformed_tagged_evidence_is_a_format_error(value: bytes) -> None:
    with pytest.raises(FormatError):
        dice.parse_tagged_evidence(value)
