"""verify_quote on every real vector set at the times SOURCES.md gives, plus the negatives.

Expected outcomes come from tests/vectors/sgx/SOURCES.md (origins' own tests and the
independent walk recorded there). Where dcap-qvl applies (TCB Info v3, non-debug) every accepted
verification below also went through it (`second_opinion` holds its status).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from enclave_kms.attestation import second_opinion, tcb, x509chain
from enclave_kms.attestation.collateral import collateral_from_parts, load_collateral
from enclave_kms.attestation.policy import Policy, validate
from enclave_kms.attestation.second_opinion import DcapQvlResult
from enclave_kms.attestation.tcb_info import EnclaveIdentity, TcbInfo
from enclave_kms.attestation.types import Collateral, TcbStatus, TrustRoot, VerifiedQuote
from enclave_kms.attestation.verify import verify_quote, verify_quote_only
from enclave_kms.errors import (
    CertificateChainError,
    CollateralError,
    CollateralExpiredError,
    CollateralNotYetValidError,
    CollateralWindowError,
    EnclaveKMSError,
    PolicyError,
    QeIdentityError,
    RevokedError,
    SignatureError,
    SimulatedRootError,
    TcbLevelError,
    UnsupportedFormatError,
    UntrustedRootError,
    VerifierDisagreementError,
)
from enclave_kms.sgx.oe import parse_oe_report
from enclave_kms.sgx.pck import PckExtension, parse_pck_extension
from enclave_kms.sgx.quote import Quote, parse_quote
from enclave_kms.sgx.tdx import TdReport10
from tests.conftest import SGX_TESTDATA
from tests.sgx.vectors import read_quote_file, strip_comment_lines

INTEL = TrustRoot.intel_production()


def _at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def _pem(certs: list[x509.Certificate] | tuple[x509.Certificate, ...]) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in certs)


# --------------------------------------------------------------------------- vector sets


@dataclass(frozen=True)
class VectorSet:
    """One quote with its collateral, the time to verify at, and how to anchor it."""

    name: str
    quote: bytes
    collateral: Collateral
    now: datetime
    trust_root: TrustRoot = INTEL
    pck_chain: tuple[x509.Certificate, ...] | None = None

    def verify(
        self,
        *,
        now: datetime | None = None,
        pck_chain: tuple[x509.Certificate, ...] | str | None = "default",
        second_opinion: bool = True,
    ) -> VerifiedQuote:
        return verify_quote(
            self.quote,
            self.collateral,
            trust_root=self.trust_root,
            now=self.now if now is None else now,
            pck_chain=self.pck_chain if isinstance(pck_chain, str) else pck_chain,
            second_opinion=second_opinion,
        )


def phala_sgx(base: Path) -> VectorSet:
    d = base / "phala-dcap-qvl"
    return VectorSet(
        "phala-sgx",
        (d / "sgx_quote").read_bytes(),
        load_collateral((d / "sgx_quote_collateral.json").read_bytes()),
        datetime.fromtimestamp(1752919277, UTC),
    )


def phala_tdx(base: Path) -> VectorSet:
    d = base / "phala-dcap-qvl"
    return VectorSet(
        "phala-tdx",
        (d / "tdx_quote").read_bytes(),
        load_collateral((d / "tdx_quote_collateral.json").read_bytes()),
        datetime.fromtimestamp(1752919234, UTC),
    )


def phala_tdx_v5(base: Path) -> VectorSet:
    d = base / "phala-dcap-qvl"
    return VectorSet(
        "phala-tdx-v5",
        (d / "tdx_quote_outdated").read_bytes(),
        load_collateral((d / "tdx_quote_outdated_collateral.json").read_bytes()),
        datetime.fromtimestamp(1774003274, UTC),
    )


def _automata(base: Path, quote: bytes, tcb_info: str, qe_identity: str) -> Collateral:
    d = base / "automata-dcap-rs"
    platform_ca_and_root = x509.load_pem_x509_certificates((d / "pck_certchain.pem").read_bytes())
    return collateral_from_parts(
        (d / tcb_info).read_bytes(),
        (d / qe_identity).read_bytes(),
        (d / "signing_cert.pem").read_bytes(),  # the TCB signing cert alone, without the root
        (d / "intel_root_ca_crl.der").read_bytes(),
        (d / "pck_platform_crl.der").read_bytes(),
        _pem(platform_ca_and_root[1:]),
    )


def automata_sgx(base: Path) -> VectorSet:
    quote = read_quote_file(base / "automata-dcap-rs" / "quote_v3_sgx_test_verifyv3.hex")
    return VectorSet(
        "automata-sgx",
        quote,
        _automata(base, quote, "tcbinfov2.json", "qeidentityv2.json"),
        datetime.fromtimestamp(1739419232, UTC),
    )


def automata_tdx(base: Path) -> VectorSet:
    quote = (base / "automata-dcap-rs" / "quote_tdx_00806f050000.dat").read_bytes()
    return VectorSet(
        "automata-tdx",
        quote,
        _automata(base, quote, "tcbinfov3_00806f050000.json", "qeidentityv2_apiv4.json"),
        datetime.fromtimestamp(1739419232, UTC),
    )


def go_tdx_guest(base: Path) -> VectorSet:
    d = base / "google-go-tdx-guest"
    quote = (d / "tdx_prod_quote_SPR_E4.dat").read_bytes()
    pck_ca_and_root = parse_quote(quote).pck_certificates()[1:]
    collateral = collateral_from_parts(
        (d / "sample_tcbInfo_response").read_bytes(),
        (d / "sample_qeIdentity_response").read_bytes(),
        (base / "mobilecoin-attestation" / "tcb_signer.pem").read_bytes()
        + (d / "trusted_root.pem").read_bytes(),
        (d / "rootcrl.der").read_bytes(),
        (d / "pckcrl").read_bytes(),
        _pem(pck_ca_and_root),
    )
    return VectorSet("go-tdx-guest", quote, collateral, _at("2023-07-01T01:00:00Z"))


def mobilecoin(base: Path) -> VectorSet:
    d = base / "mobilecoin-attestation"
    root = (d / "root_ca.pem").read_bytes()
    collateral = collateral_from_parts(
        (d / "fmspc_00906ED50000_2023_07_12.json").read_bytes(),
        (d / "qe_identity.json").read_bytes(),
        (d / "tcb_signer.pem").read_bytes() + root,
        (d / "root_crl.der").read_bytes(),
        (d / "processor_crl.der").read_bytes(),
        (d / "processor_ca.pem").read_bytes() + root,
    )
    return VectorSet(
        "mobilecoin", (d / "hw_quote.dat").read_bytes(), collateral, _at("2023-07-12T20:48:25Z")
    )


def intel_test_pki(base: Path, *, test_root: bool = True) -> VectorSet:
    d = base / "intel-qvl-sampledata-testpki"
    collateral = collateral_from_parts(
        (d / "tcbInfo.json").read_bytes(),
        (d / "qeIdentity.json").read_bytes(),
        (d / "tcbSignChain.pem").read_bytes(),
        (d / "rootCaCrl.der").read_bytes(),
        (d / "intermediateCaCrl.der").read_bytes(),
        (d / "pckSignChain.pem").read_bytes(),
    )
    chain = x509.load_pem_x509_certificates(
        (d / "pckCert.pem").read_bytes() + (d / "pckSignChain.pem").read_bytes()
    )
    root = TrustRoot.from_pem((d / "trustedRootCaCert.pem").read_bytes()) if test_root else INTEL
    return VectorSet(
        "intel-test-pki",
        (d / "quote.dat").read_bytes(),
        collateral,
        _at("2022-04-06T00:00:00Z"),
        root,
        tuple(chain),
    )


def _oe_collateral(base: Path) -> Collateral:
    return load_collateral(
        strip_comment_lines((base / "openenclave-tests" / "endorsements").read_bytes())
    )


def oe_evidence(base: Path) -> VectorSet:
    quote = strip_comment_lines((base / "openenclave-tests" / "evidence").read_bytes())
    return VectorSet("oe-evidence", quote, _oe_collateral(base), _at("2022-04-26T23:50:00Z"))


# --------------------------------------------------------------------------- positives


def test_phala_sgx_quote(sgx_testdata: Path) -> None:
    v = phala_sgx(sgx_testdata)
    result = verify_quote(v.quote, v.collateral, trust_root=INTEL, now=v.now)
    assert result.tee == "SGX"
    assert result.tcb_status == TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED
    assert result.advisory_ids == ("INTEL-SA-00289", "INTEL-SA-00615")
    assert result.platform_tcb_status == TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED
    assert result.qe_tcb_status == TcbStatus.UP_TO_DATE
    assert result.second_opinion == "ConfigurationAndSWHardeningNeeded"
    assert result.fmspc == bytes.fromhex("00a067110000")
    assert result.pck_ca == "processor"
    assert result.simulated_root is False
    assert result.root_spki_sha256 == INTEL.spki_sha256
    assert result.verified_at == v.now
    # QE Identity's nextUpdate is the earliest of everything used.
    assert result.collateral_expiry == _at("2025-07-19T10:01:18Z")
    assert result.tcb_date is not None
    assert not result.debug


def test_phala_tdx_quote(sgx_testdata: Path) -> None:
    v = phala_tdx(sgx_testdata)
    result = verify_quote(v.quote, v.collateral, trust_root=INTEL, now=v.now)
    assert result.tee == "TDX"
    assert result.tcb_status == TcbStatus.UP_TO_DATE
    assert result.advisory_ids == ()
    assert result.second_opinion == "UpToDate"
    assert result.pck_ca == "platform"
    assert result.fmspc == bytes.fromhex("b0c06f000000")
    assert result.collateral_expiry == _at("2025-07-19T10:00:35Z")  # the platform PCK CRL
    assert result.quote.trailing == bytes(70)


def test_phala_tdx_quote_v5_verifies_up_to_its_tcb_level(sgx_testdata: Path) -> None:
    """Issue 17 defect 8: quote v5 (TDX 1.5 body, type 3) used to be refused as unsupported.
    It now verifies through the PCK chain, CRLs, collateral, QE report and quote signature
    (over header + body descriptor + body) and stops where SOURCES.md says: no SGX TCB level
    matches this "outdated" platform (component 8 is 3 < 5 in every level)."""
    v = phala_tdx_v5(sgx_testdata)
    with pytest.raises(TcbLevelError, match="no TCB level matches") as info:
        v.verify()
    assert info.value.step == "tcb_level"
    # dcap-qvl reads v5 but finds no TCB level, so it rejects the quote too.
    theirs = second_opinion.run_dcap_qvl(v.quote, v.collateral, trust_root=INTEL, now=v.now)
    assert not theirs.accepted
    assert "TCB level" in (theirs.error or "")


def test_automata_sgx_quote_tcb_info_v2(sgx_testdata: Path) -> None:
    v = automata_sgx(sgx_testdata)
    result = verify_quote(v.quote, v.collateral, trust_root=INTEL, now=v.now)
    assert result.tcb_status == TcbStatus.OUT_OF_DATE
    assert result.advisory_ids == ()  # TCB Info v2 has no advisory IDs
    assert result.qe_tcb_status == TcbStatus.UP_TO_DATE
    assert result.tcb_date == _at("2023-08-09T00:00:00Z")
    assert result.pck_ca == "platform"
    assert result.second_opinion is None  # dcap-qvl cannot read TCB Info v2


def test_automata_tdx_quote(sgx_testdata: Path) -> None:
    v = automata_tdx(sgx_testdata)
    result = verify_quote(v.quote, v.collateral, trust_root=INTEL, now=v.now)
    assert result.tcb_status == TcbStatus.OUT_OF_DATE
    assert result.platform_tcb_status == TcbStatus.OUT_OF_DATE
    assert result.qe_tcb_status == TcbStatus.UP_TO_DATE
    assert result.advisory_ids == ("INTEL-SA-00960", "INTEL-SA-00982", "INTEL-SA-00986")
    assert result.tcb_date == _at("2023-08-09T00:00:00Z")
    assert result.second_opinion == "OutOfDate"
    assert len(result.quote.trailing) == 3065


def test_intel_test_pki_with_its_own_root(sgx_testdata: Path) -> None:
    v = intel_test_pki(sgx_testdata)
    result = verify_quote(
        v.quote, v.collateral, trust_root=v.trust_root, now=v.now, pck_chain=v.pck_chain
    )
    assert result.tcb_status == TcbStatus.UP_TO_DATE
    assert result.root_spki_sha256 == v.trust_root.spki_sha256 != INTEL.spki_sha256
    # Issue 17 defect 2: the test root has Intel's production subject, but not its key, so it
    # is a non-production root that a policy must name by key (decided by key, never by name).
    assert v.trust_root.certificate.subject == INTEL.certificate.subject
    assert result.simulated_root is True
    pinned = Policy(mr_enclave=(result.mr_enclave,))
    with pytest.raises(PolicyError, match="not Intel's production root"):
        validate(result, pinned)
    validate(result, replace(pinned, simulated_root=v.trust_root.spki_sha256))
    assert result.pck_ca == "processor"
    assert result.second_opinion is None
    # The test TCB-signing certificate (notAfter 2026-08-28) bounds the collateral.
    assert result.collateral_expiry == _at("2026-08-28T11:36:55Z")


def test_open_enclave_debug_evidence_is_cryptographically_valid(sgx_testdata: Path) -> None:
    v = oe_evidence(sgx_testdata)
    result = verify_quote(v.quote, v.collateral, trust_root=INTEL, now=v.now)
    assert result.debug  # policy rejects it later, verification does not
    assert result.tcb_status == TcbStatus.SW_HARDENING_NEEDED
    assert result.pck_ca == "processor"
    assert result.second_opinion is None  # TCB Info v2, debug enclave


def test_a_parsed_quote_verifies_like_its_bytes(sgx_testdata: Path) -> None:
    v = phala_sgx(sgx_testdata)
    from_bytes = verify_quote(v.quote, v.collateral, trust_root=INTEL, now=v.now)
    from_quote = verify_quote(parse_quote(v.quote), v.collateral, trust_root=INTEL, now=v.now)
    assert from_quote == from_bytes


# --------------------------------------------------------------------------- negatives


def test_go_tdx_guest_chain_and_signatures_ok_but_no_tcb_level(sgx_testdata: Path) -> None:
    v = go_tdx_guest(sgx_testdata)
    with pytest.raises(TcbLevelError, match="no TCB level") as info:
        v.verify()
    assert info.value.step == "tcb_level"
    assert parse_quote(v.quote).trailing.startswith(b"\nextra bytes")


def test_go_tdx_guest_in_2053_is_expired(sgx_testdata: Path) -> None:
    v = go_tdx_guest(sgx_testdata)
    # The PCK chain (root copy valid to 2049) is checked first: an expired certificate.
    with pytest.raises(CertificateChainError, match="expired") as info:
        v.verify(now=_at("2053-07-01T01:00:00Z"))
    assert info.value.step == "pck_chain"


def test_mobilecoin_pck_crl_is_stale_at_the_origins_test_time(sgx_testdata: Path) -> None:
    v = mobilecoin(sgx_testdata)
    with pytest.raises(CollateralExpiredError, match="PCK CRL expired") as info:
        v.verify()
    assert info.value.step == "pck_crl"


def test_mobilecoin_has_no_instant_where_everything_is_valid(sgx_testdata: Path) -> None:
    v = mobilecoin(sgx_testdata)
    # Inside the CRL window the quote's own PCK certificate is not yet valid.
    with pytest.raises(CertificateChainError, match="not yet valid"):
        v.verify(now=_at("2023-05-12T00:00:00Z"))


def test_intel_test_pki_is_rejected_under_the_production_root(sgx_testdata: Path) -> None:
    v = intel_test_pki(sgx_testdata, test_root=False)
    with pytest.raises(UntrustedRootError) as info:
        v.verify()
    assert not isinstance(info.value, SimulatedRootError)
    assert info.value.step == "trust_root"


def test_intel_test_pki_without_an_explicit_chain_is_unsupported(sgx_testdata: Path) -> None:
    v = intel_test_pki(sgx_testdata)
    with pytest.raises(UnsupportedFormatError, match="type 1"):
        v.verify(pck_chain=None)


def test_explicit_chain_must_match_a_type_5_quote(sgx_testdata: Path) -> None:
    v = phala_sgx(sgx_testdata)
    other = tuple(parse_quote(phala_tdx(sgx_testdata).quote).pck_certificates())
    with pytest.raises(CertificateChainError, match="own PCK certificate"):
        v.verify(pck_chain=other)
    own = tuple(parse_quote(v.quote).pck_certificates())
    assert v.verify(pck_chain=own, second_opinion=False) == v.verify(second_opinion=False)


def test_open_enclave_report_with_tampered_intermediate(sgx_testdata: Path) -> None:
    raw = (sgx_testdata / "openenclave-tests" / "sgx_report_bad.bin").read_bytes()
    _header, quote = parse_oe_report(raw)
    with pytest.raises(CertificateChainError, match="not issued by") as info:
        verify_quote(
            quote,
            _oe_collateral(sgx_testdata),
            trust_root=INTEL,
            now=_at("2022-04-26T23:50:00Z"),
        )
    assert type(info.value) is CertificateChainError
    assert info.value.step == "pck_chain"


@pytest.mark.parametrize(
    ("when", "step", "message"),
    [
        # Before the TCB Info's issueDate (CRLs already current).
        ("2025-06-19T10:56:10Z", "tcb_info", "not yet valid"),
        # After QE Identity's nextUpdate (inclusive, as Intel); the PCK CRL is still current.
        ("2025-07-19T10:01:19Z", "qe_identity", "expired"),
        ("2025-07-19T10:05:00Z", "qe_identity", "expired"),
        # After the PCK CRL's nextUpdate.
        ("2025-07-19T10:23:19Z", "pck_crl", "expired"),
        # Before the PCK CRL's thisUpdate.
        ("2025-06-19T10:23:17Z", "pck_crl", "not yet valid"),
    ],
)
def test_collateral_outside_its_window(
    sgx_testdata: Path, when: str, step: str, message: str
) -> None:
    v = phala_sgx(sgx_testdata)
    kind = CollateralNotYetValidError if message == "not yet valid" else CollateralExpiredError
    with pytest.raises(kind, match=message) as info:
        verify_quote_only(v.quote, v.collateral, trust_root=INTEL, now=_at(when))
    assert info.value.step == step
    assert isinstance(info.value, CollateralWindowError)
    # With the second opinion on, it stays a collateral-window error (issue 17 defect 6: a CRL
    # before its thisUpdate used to end as a verifier disagreement, exit 2 instead of 3).
    with pytest.raises(kind):
        v.verify(now=_at(when))


def test_collateral_window_edges_agree_with_dcap_qvl(sgx_testdata: Path) -> None:
    v = phala_sgx(sgx_testdata)
    edge = _at("2025-07-19T10:01:18Z")  # QE Identity's nextUpdate: still valid
    assert v.verify(now=edge).second_opinion == "ConfigurationAndSWHardeningNeeded"
    with pytest.raises(CollateralExpiredError):
        v.verify(now=edge + timedelta(seconds=1))  # second opinion on: both reject


def test_wrong_pck_crl_for_the_issuer(sgx_testdata: Path) -> None:
    sgx, tdx = phala_sgx(sgx_testdata), phala_tdx(sgx_testdata)
    # Processor-CA quote, Platform-CA CRL (with its own issuer chain).
    c = dataclasses.replace(
        sgx.collateral,
        pck_crl=tdx.collateral.pck_crl,
        pck_crl_issuer_chain=tdx.collateral.pck_crl_issuer_chain,
    )
    with pytest.raises(CollateralError, match="Platform CA") as info:
        verify_quote_only(sgx.quote, c, trust_root=INTEL, now=sgx.now)
    assert type(info.value) is CollateralError
    assert info.value.step == "pck_crl"


def test_root_crl_in_place_of_the_pck_crl(sgx_testdata: Path) -> None:
    v = phala_sgx(sgx_testdata)
    swapped = dataclasses.replace(v.collateral, pck_crl=v.collateral.root_ca_crl)
    with pytest.raises(CollateralError, match="Intel SGX Root CA"):
        verify_quote_only(v.quote, swapped, trust_root=INTEL, now=v.now)


def test_tdx_tcb_info_for_an_sgx_quote(sgx_testdata: Path) -> None:
    sgx, tdx = phala_sgx(sgx_testdata), phala_tdx(sgx_testdata)
    c = dataclasses.replace(
        sgx.collateral,
        tcb_info=tdx.collateral.tcb_info,
        tcb_info_signature=tdx.collateral.tcb_info_signature,
    )
    with pytest.raises(TcbLevelError, match="TCB Info is for TDX") as info:
        verify_quote_only(sgx.quote, c, trust_root=INTEL, now=sgx.now)
    assert info.value.step == "tcb_level"


def test_td_qe_identity_for_an_sgx_quote(sgx_testdata: Path) -> None:
    sgx, tdx = phala_sgx(sgx_testdata), phala_tdx(sgx_testdata)
    c = dataclasses.replace(
        sgx.collateral,
        qe_identity=tdx.collateral.qe_identity,
        qe_identity_signature=tdx.collateral.qe_identity_signature,
    )
    with pytest.raises(CollateralError, match="TD_QE") as info:
        verify_quote_only(sgx.quote, c, trust_root=INTEL, now=sgx.now)
    assert info.value.step == "qe_identity"


def test_signature_of_another_document(sgx_testdata: Path) -> None:
    v = phala_sgx(sgx_testdata)
    c = dataclasses.replace(v.collateral, tcb_info_signature=v.collateral.qe_identity_signature)
    with pytest.raises(SignatureError) as info:
        verify_quote_only(v.quote, c, trust_root=INTEL, now=v.now)
    assert info.value.step == "tcb_info"


def test_a_pck_certificate_cannot_sign_tcb_info(sgx_testdata: Path) -> None:
    # A key certified for one role (PCK) must not be accepted in another (TCB signing).
    v = phala_sgx(sgx_testdata)
    pck_chain = _pem(parse_quote(v.quote).pck_certificates())
    c = dataclasses.replace(v.collateral, tcb_info_issuer_chain=pck_chain)
    with pytest.raises(CertificateChainError, match="SGX TCB Signing") as info:
        verify_quote_only(v.quote, c, trust_root=INTEL, now=v.now)
    assert info.value.step == "tcb_info"


def test_naive_now_is_a_usage_error(sgx_testdata: Path) -> None:
    from enclave_kms.errors import UsageError

    v = phala_sgx(sgx_testdata)
    with pytest.raises(UsageError):
        verify_quote(v.quote, v.collateral, trust_root=INTEL, now=datetime(2025, 7, 19))


# --------------------------------------------------------------------------- second opinion


def _fake_dcap(result: DcapQvlResult) -> Callable[..., DcapQvlResult]:
    def fake(*_args: object, **_kwargs: object) -> DcapQvlResult:
        return result

    return fake


def test_disagreement_on_status(sgx_testdata: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v = phala_sgx(sgx_testdata)
    monkeypatch.setattr(
        second_opinion, "run_dcap_qvl", _fake_dcap(DcapQvlResult(True, "UpToDate", ()))
    )
    with pytest.raises(VerifierDisagreementError) as info:
        v.verify()
    assert info.value.ours.startswith("ConfigurationAndSWHardeningNeeded")
    assert info.value.dcap_qvl.startswith("UpToDate")
    assert info.value.step == "second_opinion"


def test_disagreement_on_advisories(sgx_testdata: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    v = phala_sgx(sgx_testdata)
    fake = DcapQvlResult(True, "ConfigurationAndSWHardeningNeeded", ("INTEL-SA-00289",))
    monkeypatch.setattr(second_opinion, "run_dcap_qvl", _fake_dcap(fake))
    with pytest.raises(VerifierDisagreementError):
        v.verify()


def test_disagreement_when_dcap_qvl_rejects(
    sgx_testdata: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v = phala_tdx(sgx_testdata)
    monkeypatch.setattr(
        second_opinion, "run_dcap_qvl", _fake_dcap(DcapQvlResult(False, error="boom"))
    )
    with pytest.raises(VerifierDisagreementError, match="boom"):
        v.verify()
    assert v.verify(second_opinion=False).second_opinion is None


def test_disagreement_when_only_dcap_qvl_accepts(
    sgx_testdata: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    v = phala_sgx(sgx_testdata)
    text = v.collateral.qe_identity_signature
    forged = dataclasses.replace(  # our QE Identity signature check fails
        v.collateral, qe_identity_signature=text[:-1] + bytes([text[-1] ^ 1])
    )
    monkeypatch.setattr(
        second_opinion, "run_dcap_qvl", _fake_dcap(DcapQvlResult(True, "UpToDate", ()))
    )
    with pytest.raises(VerifierDisagreementError) as info:
        verify_quote(v.quote, forged, trust_root=INTEL, now=v.now)
    assert "qe_identity" in info.value.ours
    # A window failure is a collateral answer: dcap-qvl is not asked to overturn it.
    with pytest.raises(CollateralExpiredError):
        v.verify(now=_at("2025-07-19T10:05:00Z"))


def test_dcap_qvl_not_consulted_where_it_does_not_apply(
    sgx_testdata: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(
        second_opinion, "run_dcap_qvl", _fake_dcap(DcapQvlResult(False, error="never asked"))
    )
    for v in (automata_sgx(sgx_testdata), oe_evidence(sgx_testdata)):
        assert v.verify().second_opinion is None
    oe = parse_quote(oe_evidence(sgx_testdata).quote)
    assert "debug" in (second_opinion.not_applicable(oe, phala_sgx(sgx_testdata).collateral) or "")


def test_our_collateral_converts_for_dcap_qvl(sgx_testdata: Path) -> None:
    v = phala_tdx(sgx_testdata)
    theirs = second_opinion.run_dcap_qvl(v.quote, v.collateral, trust_root=INTEL, now=v.now)
    assert theirs == DcapQvlResult(True, "UpToDate", ())
    bad = dataclasses.replace(v.collateral, tcb_info=b"\xff" + v.collateral.tcb_info)
    theirs = second_opinion.run_dcap_qvl(v.quote, bad, trust_root=INTEL, now=v.now)
    assert not theirs.accepted


# --------------------------------------------------------------------------- TCB evaluation


def test_converge_follows_intel() -> None:
    s = TcbStatus
    assert tcb.converge(s.UP_TO_DATE, s.OUT_OF_DATE) == s.OUT_OF_DATE
    assert tcb.converge(s.SW_HARDENING_NEEDED, s.OUT_OF_DATE) == s.OUT_OF_DATE
    assert tcb.converge(s.CONFIGURATION_NEEDED, s.OUT_OF_DATE) == (
        s.OUT_OF_DATE_CONFIGURATION_NEEDED
    )
    assert tcb.converge(s.CONFIGURATION_AND_SW_HARDENING_NEEDED, s.OUT_OF_DATE) == (
        s.OUT_OF_DATE_CONFIGURATION_NEEDED
    )
    assert tcb.converge(s.OUT_OF_DATE_CONFIGURATION_NEEDED, s.OUT_OF_DATE) == (
        s.OUT_OF_DATE_CONFIGURATION_NEEDED
    )
    for platform in s:
        assert tcb.converge(platform, s.UP_TO_DATE) == platform
        assert tcb.converge(platform, s.REVOKED) == s.REVOKED


def _phala_sgx_parts(base: Path) -> tuple[TcbInfo, EnclaveIdentity, PckExtension, Quote]:
    v = phala_sgx(base)
    quote = parse_quote(v.quote)
    pck = parse_pck_extension(quote.pck_certificates()[0])
    return (
        TcbInfo.parse(v.collateral.tcb_info),
        EnclaveIdentity.parse(v.collateral.qe_identity),
        pck,
        quote,
    )


def test_platform_fmspc_and_pce_id_must_match(sgx_testdata: Path) -> None:
    info, _identity, pck, _quote = _phala_sgx_parts(sgx_testdata)
    other = dataclasses.replace(info, fmspc=bytes(6))
    with pytest.raises(TcbLevelError, match="FMSPC"):
        tcb.match_platform_tcb(other, pck)
    other = dataclasses.replace(info, pce_id=b"\x00\x01")
    with pytest.raises(TcbLevelError, match="PCE-ID"):
        tcb.match_platform_tcb(other, pck)


def test_platform_level_is_the_first_that_matches(sgx_testdata: Path) -> None:
    info, _identity, pck, _quote = _phala_sgx_parts(sgx_testdata)
    graded = tcb.match_platform_tcb(info, pck)
    first = next(i for i, level in enumerate(info.tcb_levels) if level is graded.sgx_level)
    assert first > 0  # the platform is below the newest level
    # Dropping every level from the match on makes the platform ungradable.
    with pytest.raises(TcbLevelError, match="no TCB level"):
        tcb.match_platform_tcb(dataclasses.replace(info, tcb_levels=info.tcb_levels[:first]), pck)


def test_qe_identity_mismatches(sgx_testdata: Path) -> None:
    _info, identity, _pck, quote = _phala_sgx_parts(sgx_testdata)
    qe_report = quote.signature_data.qe_report
    assert tcb.match_qe_identity(identity, qe_report).tcb_status == TcbStatus.UP_TO_DATE
    cases = {
        "MRSIGNER": dataclasses.replace(identity, mrsigner=bytes(32)),
        "ISVPRODID": dataclasses.replace(identity, isv_prod_id=identity.isv_prod_id + 1),
        "MISCSELECT": dataclasses.replace(identity, miscselect=b"\x01\x00\x00\x00"),
        "ATTRIBUTES": dataclasses.replace(identity, attributes=bytes([0x05]) + bytes(15)),
    }
    for field, bad in cases.items():
        with pytest.raises(QeIdentityError, match=field):
            tcb.match_qe_identity(bad, qe_report)
    too_new = tuple(
        dataclasses.replace(level, isv_svn=qe_report.isv_svn + 1) for level in identity.tcb_levels
    )
    with pytest.raises(TcbLevelError, match="QE ISVSVN"):
        tcb.match_qe_identity(dataclasses.replace(identity, tcb_levels=too_new), qe_report)


def test_qe_masks_compare_in_quote_byte_order(sgx_testdata: Path) -> None:
    # Intel's test QE Identity says MISCSELECT "D182B18C": quote bytes d1 82 b1 8c. Reading it
    # as a big-endian integer would reject this genuine (test-PKI) QE.
    v = intel_test_pki(sgx_testdata)
    identity = EnclaveIdentity.parse(v.collateral.qe_identity)
    qe_report = parse_quote(v.quote).signature_data.qe_report
    assert identity.miscselect == bytes.fromhex("d182b18c")
    assert qe_report.misc_select.to_bytes(4, "little") == identity.miscselect
    assert tcb.match_qe_identity(identity, qe_report).tcb_status == TcbStatus.UP_TO_DATE


def test_tdx_module_identity_grades_the_module(sgx_testdata: Path) -> None:
    v = phala_tdx(sgx_testdata)
    quote = parse_quote(v.quote)
    info = TcbInfo.parse(v.collateral.tcb_info)
    td = quote.body
    assert isinstance(td, TdReport10)
    assert td.tee_tcb_svn[1] == 1
    level = tcb.check_tdx_module(info, td)
    assert level is not None
    assert level.tcb_status == TcbStatus.UP_TO_DATE
    no_identities = dataclasses.replace(info, tdx_module_identities=())
    with pytest.raises(TcbLevelError, match="TDX_01"):
        tcb.check_tdx_module(no_identities, td)
    wrong_signer = tuple(
        dataclasses.replace(i, mrsigner=b"\x01" * 48) for i in info.tdx_module_identities
    )
    with pytest.raises(TcbLevelError, match="MRSIGNER_SEAM"):
        tcb.check_tdx_module(dataclasses.replace(info, tdx_module_identities=wrong_signer), td)
    outdated = tuple(
        dataclasses.replace(
            i,
            tcb_levels=tuple(
                dataclasses.replace(lv, tcb_status=TcbStatus.OUT_OF_DATE) for lv in i.tcb_levels
            ),
        )
        for i in info.tdx_module_identities
    )
    pck = parse_pck_extension(quote.pck_certificates()[0])
    graded = tcb.match_platform_tcb(
        dataclasses.replace(info, tdx_module_identities=outdated),
        pck,
        td=td,
    )
    assert graded.status == TcbStatus.OUT_OF_DATE


# --------------------------------------------------------------------------- chains (synthetic)


@dataclass
class _Pki:
    root: x509.Certificate
    ca: x509.Certificate
    leaf: x509.Certificate
    ca_key: ec.EllipticCurvePrivateKey
    root_key: ec.EllipticCurvePrivateKey


NOW = _at("2030-01-01T00:00:00Z")


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(
    subject: str,
    issuer: str,
    key: ec.EllipticCurvePrivateKey,
    signer: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    path_length: int | None = None,
    key_cert_sign: bool = True,
    serial: int = 1,
) -> x509.Certificate:
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer))
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=not ca,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=ca and key_cert_sign,
                crl_sign=ca,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    )
    return builder.sign(signer, hashes.SHA256())


def _pki(root_cn: str = "Test Simulated SGX Root CA", *, key_cert_sign: bool = True) -> _Pki:
    root_key = ec.generate_private_key(ec.SECP256R1())
    ca_key = ec.generate_private_key(ec.SECP256R1())
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    root = _cert(root_cn, root_cn, root_key, root_key, ca=True, path_length=1)
    ca = _cert(
        "Test PCK Platform CA",
        root_cn,
        ca_key,
        root_key,
        ca=True,
        path_length=0,
        key_cert_sign=key_cert_sign,
    )
    leaf = _cert(
        "Test PCK Certificate", "Test PCK Platform CA", leaf_key, ca_key, ca=False, serial=77
    )
    return _Pki(root, ca, leaf, ca_key, root_key)


def _crl(
    pki: _Pki, *, revoked: tuple[int, ...] = (), next_update: datetime | None = None
) -> x509.CertificateRevocationList:
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.ca.subject)
        .last_update(NOW - timedelta(days=1))
        .next_update(next_update or NOW + timedelta(days=30))
    )
    for serial in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(serial)
            .revocation_date(NOW - timedelta(days=1))
            .build()
        )
    return builder.sign(pki.ca_key, hashes.SHA256())


def test_chain_to_a_simulated_root_under_the_intel_pin() -> None:
    pki = _pki()
    chain = [pki.leaf, pki.ca, pki.root]
    simulated = TrustRoot(pki.root)
    verified = x509chain.verify_chain(chain, simulated, NOW, what="PCK", step="pck_chain")
    assert verified.root == pki.root
    with pytest.raises(SimulatedRootError, match="chains to a simulated root"):
        x509chain.verify_chain(chain, INTEL, NOW, what="PCK", step="pck_chain")


def test_the_pin_is_the_key_not_the_name() -> None:
    # Same DN as Intel's root, another key: untrusted (the Intel test-PKI situation).
    pki = _pki(root_cn="Intel SGX Root CA")
    impostor = TrustRoot(
        _cert("Intel SGX Root CA", "Intel SGX Root CA", pki.root_key, pki.root_key, ca=True)
    )
    assert not impostor.production  # the production subject, but not the production key
    chain = [pki.leaf, pki.ca, pki.root]
    assert x509chain.verify_chain(chain, impostor, NOW, what="PCK", step="s").leaf == pki.leaf
    with pytest.raises(UntrustedRootError):
        x509chain.verify_chain(chain, INTEL, NOW, what="PCK", step="s")


def test_the_chains_root_copy_is_compared_by_key() -> None:
    pki = _pki()
    # A re-issue of the root (same key, other serial): accepted, the pinned certificate is used.
    reissued = _cert(
        "Test Simulated SGX Root CA",
        "Test Simulated SGX Root CA",
        pki.root_key,
        pki.root_key,
        ca=True,
        path_length=1,
        serial=2,
    )
    pinned = TrustRoot(pki.root)
    verified = x509chain.verify_chain(
        [pki.leaf, pki.ca, reissued], pinned, NOW, what="PCK", step="s"
    )
    assert verified.root == pki.root
    # The chain may also stop below the root.
    assert x509chain.verify_chain([pki.leaf, pki.ca], pinned, NOW, what="PCK", step="s")
    # A "copy" with the pinned key that the key did not sign itself is not a root certificate.
    forged = x509.CertificateBuilder(
        issuer_name=pki.root.subject,
        subject_name=pki.root.subject,
        public_key=pki.root.public_key(),
        serial_number=3,
        not_valid_before=NOW - timedelta(days=1),
        not_valid_after=NOW + timedelta(days=1),
        extensions=list(pki.root.extensions),
    ).sign(pki.ca_key, hashes.SHA256())
    with pytest.raises(CertificateChainError, match="not validly self-signed"):
        x509chain.verify_chain([pki.leaf, pki.ca, forged], pinned, NOW, what="PCK", step="s")


def test_chain_constraints() -> None:
    pki = _pki(key_cert_sign=False)
    pinned = TrustRoot(pki.root)
    with pytest.raises(CertificateChainError, match="keyCertSign"):
        x509chain.verify_chain([pki.leaf, pki.ca], pinned, NOW, what="PCK", step="s")
    pki = _pki()
    pinned = TrustRoot(pki.root)
    with pytest.raises(CertificateChainError, match="end-entity"):
        x509chain.verify_chain([pki.ca], pinned, NOW, what="PCK", step="s")
    assert x509chain.verify_chain([pki.ca], pinned, NOW, what="CRL", step="s", leaf_is_ca=True)
    with pytest.raises(CertificateChainError, match="expired"):
        x509chain.verify_chain(
            [pki.leaf, pki.ca], pinned, NOW + timedelta(days=400), what="PCK", step="s"
        )
    with pytest.raises(CertificateChainError, match="not issued by"):
        x509chain.verify_chain([pki.leaf, pki.root], pinned, NOW, what="PCK", step="s")


def test_crl_checks() -> None:
    pki = _pki()
    crl = _crl(pki, revoked=(77,))
    assert x509chain.verify_crl(crl, pki.ca, NOW, what="PCK CRL", step="pck_crl")
    with pytest.raises(RevokedError, match="revoked"):
        x509chain.check_not_revoked(crl, pki.leaf, what="the PCK CRL", step="pck_crl")
    x509chain.check_not_revoked(crl, pki.ca, what="the PCK CRL", step="pck_crl")
    with pytest.raises(CollateralError, match="issued by"):
        x509chain.verify_crl(crl, pki.root, NOW, what="PCK CRL", step="pck_crl")
    stale = _crl(pki, next_update=NOW - timedelta(seconds=1))
    with pytest.raises(CollateralExpiredError):
        x509chain.verify_crl(stale, pki.ca, NOW, what="PCK CRL", step="pck_crl")
    forged = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(pki.ca.subject)
        .last_update(NOW - timedelta(days=1))
        .next_update(NOW + timedelta(days=1))
        .sign(pki.root_key, hashes.SHA256())
    )
    with pytest.raises(SignatureError):
        x509chain.verify_crl(forged, pki.ca, NOW, what="PCK CRL", step="pck_crl")


# --------------------------------------------------------------------------- fuzz


@functools.cache
def _phala_sgx_once() -> VectorSet:
    """Hypothesis does not mix with function fixtures: load the set once, lazily."""
    return phala_sgx(SGX_TESTDATA)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_arbitrary_damage_raises_only_typed_errors(data: st.DataObject) -> None:
    """Random overwrites anywhere in the quote or any collateral part: typed errors only."""
    v = _phala_sgx_once()
    field = data.draw(st.sampled_from(["quote", *(f.name for f in dataclasses.fields(Collateral))]))
    original: bytes = v.quote if field == "quote" else getattr(v.collateral, field)
    start = data.draw(st.integers(0, max(len(original) - 1, 0)))
    patch = data.draw(st.binary(min_size=0, max_size=16))
    cut = data.draw(st.booleans())
    damaged = original[:start] + patch + (b"" if cut else original[start + len(patch) :])
    quote = damaged if field == "quote" else v.quote
    collateral = (
        v.collateral if field == "quote" else dataclasses.replace(v.collateral, **{field: damaged})
    )
    # A rejection may be a VerifierDisagreementError: dcap-qvl skips what it does not need
    # (e.g. an unparsable root copy in a collateral chain) where we refuse it. Still typed.
    try:
        verify_quote(quote, collateral, trust_root=INTEL, now=v.now)
    except EnclaveKMSError:
        pass
