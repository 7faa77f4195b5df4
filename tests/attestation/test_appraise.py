"""`appraise`, the one entry point, and issue 17's defects as regression tests on real bytes."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from enclave_kms.attestation import x509chain
from enclave_kms.attestation.appraise import appraise, collateral_request
from enclave_kms.attestation.cache import VerificationCache
from enclave_kms.attestation.evidence import EvidenceForm, load_evidence
from enclave_kms.attestation.policy import DEFAULT_POLICY, Policy
from enclave_kms.attestation.sources import StaticCollateralSource
from enclave_kms.attestation.types import TcbStatus
from enclave_kms.attestation.verify import verify_quote
from enclave_kms.errors import (
    AttestationError,
    BindingError,
    ConfigError,
    FormatError,
    PolicyError,
    SignatureError,
    UsageError,
)
from enclave_kms.sgx.oe import CustomClaim, serialize_custom_claims
from enclave_kms.sgx.quote import parse_quote
from tests.attestation.test_verify_vectors import (
    INTEL,
    automata_sgx,
    oe_evidence,
    phala_sgx,
    phala_tdx,
)

ALL_STATUSES = Policy(accepted_tcb_statuses=tuple(TcbStatus))


def _pinned(quote: bytes, **overrides: Any) -> Policy:
    body = parse_quote(quote).body
    return dataclasses.replace(ALL_STATUSES, mr_enclave=(body.mr_enclave,), **overrides)  # type: ignore[union-attr]


# ---------------------------------------------------------------------- the entry point


def test_appraise_a_real_quote_with_an_explicit_collateral_source(sgx_testdata: Path) -> None:
    v = phala_sgx(sgx_testdata)
    cache = VerificationCache()
    result = appraise(
        v.quote,
        _pinned(v.quote),
        expected_report_data=b"Hello, world!",
        now=v.now,
        collateral=StaticCollateralSource(v.collateral),
        cache=cache,
    )
    assert result.form is EvidenceForm.RAW_QUOTE
    assert result.verified.tcb_status is TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED
    assert result.verified.second_opinion == "ConfigurationAndSWHardeningNeeded"
    assert collateral_request(v.quote) == ("sgx", result.verified.fmspc, "processor")
    # A second appraisal of the same platform is served from the cache (hits are measured).
    misses = cache.misses
    appraise(
        v.quote,
        _pinned(v.quote),
        expected_report_data=None,
        now=v.now,
        collateral=v.collateral,
        cache=cache,
    )
    assert cache.misses == misses
    assert cache.hits >= 10


def test_appraise_reports_policy_violations_with_the_verified_result(sgx_testdata: Path) -> None:
    v = phala_sgx(sgx_testdata)
    with pytest.raises(PolicyError) as info:
        appraise(
            v.quote,
            Policy(mr_enclave=(bytes(32),)),
            expected_report_data=b"Goodbye",
            now=v.now,
            collateral=v.collateral,
            cache=VerificationCache.disabled(),
        )
    assert len(info.value.violations) == 3  # mr_enclave, tcb_status, the caller's report_data
    assert info.value.subject is not None


def test_appraise_requires_an_identity_a_cache_and_an_aware_time(sgx_testdata: Path) -> None:
    v = phala_sgx(sgx_testdata)
    args = {"expected_report_data": None, "now": v.now, "collateral": v.collateral}
    with pytest.raises(ConfigError, match="pins no enclave identity"):
        appraise(v.quote, DEFAULT_POLICY, cache=VerificationCache(), **args)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="VerificationCache"):
        appraise(v.quote, _pinned(v.quote), cache=None, **args)  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="timezone"):
        appraise(
            v.quote,
            _pinned(v.quote),
            expected_report_data=None,
            now=v.now.replace(tzinfo=None),
            collateral=v.collateral,
            cache=VerificationCache(),
        )


def test_a_genuine_tdx_quote_of_a_third_party_is_not_trusted_by_default(
    sgx_testdata: Path,
) -> None:
    """Issue 17 defect 1: it passed `validate` with the default policy."""
    v = phala_tdx(sgx_testdata)
    for policy in (DEFAULT_POLICY, Policy(accepted_tcb_statuses=tuple(TcbStatus))):
        with pytest.raises(ConfigError, match="pins no enclave identity"):
            appraise(
                v.quote,
                policy,
                expected_report_data=None,
                now=v.now,
                collateral=v.collateral,
                cache=VerificationCache(),
            )


# ---------------------------------------------------------------------- declared form, OE


REPORT_DATA_OFFSET = 48 + 320


def _oe_evidence_with_claims(quote: bytes) -> bytes:
    """A real quote followed by OE custom claims its report_data binds (the shape OE's
    SGX_ECDSA attester emits; the quote signature no longer covers the changed report_data,
    which is irrelevant here: the downgrade happened before any signature was checked)."""
    claims = serialize_custom_claims(
        [CustomClaim("Event", b"enclave-kms start"), CustomClaim("Public key hash", bytes(32))]
    )
    digest = hashlib.sha256(claims).digest()
    bound = quote[:REPORT_DATA_OFFSET] + digest + quote[REPORT_DATA_OFFSET + 32 :]
    return bound + claims


@pytest.mark.parametrize(
    "source",
    [
        "phala-dcap-qvl/sgx_quote",
        "mobilecoin-attestation/hw_quote.dat",
        "cosmian-intel-sgx-ra/quote.dat",
    ],
)
def test_tampered_oe_evidence_is_never_downgraded_to_a_raw_quote(
    sgx_testdata: Path, source: str
) -> None:
    """Issue 17 defect 3: a flipped byte in the claims structure made the evidence a 'raw
    quote' with unsigned trailing bytes (claims and binding dropped); now every single-byte
    flip of the claims buffer is refused, undeclared or declared."""
    evidence = _oe_evidence_with_claims((sgx_testdata / source).read_bytes())
    loaded = load_evidence(evidence)
    assert loaded.form is EvidenceForm.OE_EVIDENCE
    assert loaded.binds_held_data is True
    start = len(evidence) - len(loaded.held_data or b"")
    for i in range(start, len(evidence)):
        for mask in (0x01, 0x80):
            bad = evidence[:i] + bytes([evidence[i] ^ mask]) + evidence[i + 1 :]
            for form in (None, EvidenceForm.OE_EVIDENCE):
                with pytest.raises(AttestationError) as info:
                    _load_and_bind(bad, form)
                assert isinstance(info.value, FormatError | BindingError), (i, info.value)


def _load_and_bind(data: bytes, form: EvidenceForm | None) -> None:
    load_evidence(data, form=form).check_bindings(now=datetime.now(UTC))


def test_oe_evidence_appraises_only_in_its_declared_form(sgx_testdata: Path) -> None:
    v = oe_evidence(sgx_testdata)
    ok = appraise(
        v.quote,
        _pinned(v.quote, allow_debug=True),
        expected_report_data=None,
        now=v.now,
        collateral=v.collateral,
        cache=VerificationCache(),
        form=EvidenceForm.OE_EVIDENCE,
        second_opinion=False,
    )
    assert ok.evidence.binds_held_data is True
    with pytest.raises(FormatError, match="declared"):
        load_evidence(v.quote, form=EvidenceForm.RATLS_CERTIFICATE)


def test_declared_raw_quote_ignores_trailing_bytes_and_binds_nothing(sgx_testdata: Path) -> None:
    v = oe_evidence(sgx_testdata)
    raw = load_evidence(v.quote, form=EvidenceForm.RAW_QUOTE)
    assert raw.form is EvidenceForm.RAW_QUOTE
    assert raw.held_data is None


# ---------------------------------------------------------------------- strict DER


def _with_unused_bits(der: bytes) -> bytes | None:
    """The same signed object, its signature BIT STRING declaring as many unused bits as the
    last byte has trailing zeros (so it is still a valid BIT STRING that `cryptography`
    parses, with the same signature bytes); None when the last byte is odd."""
    _tag, start, _end = x509chain._der_header(der, 0, what="t")
    pos = start
    for _ in range(2):
        _t, _s, pos = x509chain._der_header(der, pos, what="t")
    _t, sig_start, sig_end = x509chain._der_header(der, pos, what="t")
    assert der[sig_start] == 0
    last = der[sig_end - 1]
    if last & 1:
        return None
    unused = min(7, (last & -last).bit_length() - 1)
    return der[:sig_start] + bytes([unused]) + der[sig_start + 1 :]


def test_every_real_certificate_and_crl_is_strict_der(sgx_testdata: Path) -> None:
    seen = 0
    for v in (phala_sgx(sgx_testdata), phala_tdx(sgx_testdata), automata_sgx(sgx_testdata)):
        c = v.collateral
        for der in (c.root_ca_crl, c.pck_crl):
            x509chain.require_strict_signature(der, what="crl", step="s")
            seen += 1
        for pem in (c.tcb_info_issuer_chain, c.pck_crl_issuer_chain):
            for cert in x509.load_pem_x509_certificates(pem):
                x509chain.require_strict_signature(
                    cert.public_bytes(Encoding.DER), what="c", step="s"
                )
                seen += 1
    assert seen >= 12


def test_a_crl_whose_signature_declares_unused_bits_is_refused(sgx_testdata: Path) -> None:
    """Issue 17 defect 4: `cryptography` verifies it, OpenSSL/QVL/dcap-qvl refuse it (every
    real CRL whose signature ends in a 0 bit can be re-encoded so)."""
    tried = 0
    for v in (phala_sgx(sgx_testdata), phala_tdx(sgx_testdata), automata_sgx(sgx_testdata)):
        for field in ("root_ca_crl", "pck_crl"):
            bad_der = _with_unused_bits(getattr(v.collateral, field))
            if bad_der is None:
                continue
            tried += 1
            crl = x509.load_der_x509_crl(bad_der)  # still parses, same signature bytes
            assert crl.signature == x509.load_der_x509_crl(getattr(v.collateral, field)).signature
            bad = dataclasses.replace(v.collateral, **{field: bad_der})
            with pytest.raises(SignatureError, match="unused bits"):
                verify_quote(v.quote, bad, trust_root=INTEL, now=v.now, second_opinion=False)
    assert tried >= 1


def _reencode_certificate(quote: bytes, index: int) -> bytes | None:
    """The quote with PEM certificate `index` of its chain re-encoded with unused bits."""
    blocks = list(re.finditer(rb"-----BEGIN CERTIFICATE-----\n?(.*?)-----END", quote, re.S))
    body = blocks[index].group(1)
    bad_der = _with_unused_bits(base64.b64decode(b"".join(body.split())))
    if bad_der is None:
        return None
    encoded = base64.b64encode(bad_der)
    width = len(body.split(b"\n")[0])
    rewrapped = b"\n".join(encoded[i : i + width] for i in range(0, len(encoded), width))
    if body.endswith(b"\n"):
        rewrapped += b"\n"
    assert len(rewrapped) == len(body)  # same byte count, so the quote's lengths still hold
    return quote[: blocks[index].start(1)] + rewrapped + quote[blocks[index].end(1) :]


def test_a_chain_certificate_reencoded_with_unused_bits_is_refused_end_to_end(
    sgx_testdata: Path,
) -> None:
    """Issue 17 defect 4: a real quote whose chain was re-encoded so verified (on TCB Info v2
    the second opinion does not run)."""
    refused = 0
    for v in (automata_sgx(sgx_testdata), oe_evidence(sgx_testdata), phala_sgx(sgx_testdata)):
        quote = parse_quote(v.quote).without_trailing()
        verify_quote(quote, v.collateral, trust_root=INTEL, now=v.now)
        for index in range(3):
            bad = _reencode_certificate(quote, index)
            if bad is None:
                continue
            with pytest.raises(SignatureError, match="unused bits"):
                verify_quote(bad, v.collateral, trust_root=INTEL, now=v.now, second_opinion=False)
            # With the second opinion it stays a rejection (dcap-qvl never reads the chain's
            # copy of the root, so there it may accept: a disagreement, still refused).
            with pytest.raises(AttestationError, match="unused bits"):
                verify_quote(bad, v.collateral, trust_root=INTEL, now=v.now)
            refused += 1
    assert refused >= 2


# ---------------------------------------------------------------------- typed errors only


def test_the_fuzzers_ratls_crash_input_is_a_format_error() -> None:
    """Issue 17 defect 9: minimal input found by fuzzing raised OverflowError."""
    with pytest.raises(FormatError, match="not valid DER"):
        load_evidence(bytes.fromhex("300c3088ffffffffffffffff00"))
