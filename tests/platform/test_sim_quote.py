"""The simulated CPU, quoting enclave and PCS produce quotes real verifiers accept.

The faithfulness test (DESIGN §7): dcap-qvl's `verify_with_root_ca`, given the simulated root,
accepts a simulated quote with simulated collateral and reports the status the TCB switch
says; our verifier agrees; with the production root both reject.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dcap_qvl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from enclave_kms.attestation.collateral import to_dcap_qvl
from enclave_kms.attestation.types import Collateral, TcbStatus, TrustRoot
from enclave_kms.attestation.verify import verify_quote
from enclave_kms.errors import (
    AttestationError,
    FormatError,
    ReportMacError,
    RevokedError,
    SimulatedRootError,
    UntrustedRootError,
)
from enclave_kms.platform.base import EnclaveIdentity, TeeBackend
from enclave_kms.platform.sim.pcs import SIMULATED_ADVISORY, TcbScenario
from enclave_kms.platform.sim.platform import SimPlatform
from enclave_kms.platform.sim.qe import INTEL_QE_VENDOR_ID, QE_AUTH_DATA
from enclave_kms.sgx.quote import CERT_TYPE_PCK_CHAIN, parse_quote
from enclave_kms.sgx.report import AttributeFlags, Attributes, Report, ReportBody

RELEASE = Attributes(AttributeFlags.INIT | AttributeFlags.MODE64BIT, 0x3)
DEBUG = Attributes(AttributeFlags.INIT | AttributeFlags.MODE64BIT | AttributeFlags.DEBUG, 0x3)
APP = EnclaveIdentity(bytes([0xA1]) * 32, bytes([0x5E]) * 32, 1, 2, RELEASE)
OTHER = EnclaveIdentity(bytes([0xB2]) * 32, bytes([0x5E]) * 32, 1, 2, RELEASE)
REPORT_DATA = hashlib.sha512(b"bound public key").digest()


def sgx_body(raw: bytes) -> ReportBody:
    body = parse_quote(raw).body
    assert isinstance(body, ReportBody)
    return body


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("sim") / "platform")


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _dcap(quote: bytes, collateral: Collateral, root: x509.Certificate, now: datetime) -> object:
    return dcap_qvl.verify_with_root_ca(
        quote, to_dcap_qvl(collateral), root.public_bytes(Encoding.DER), int(now.timestamp())
    )


def _dcap_error(quote: bytes, collateral: Collateral, root: x509.Certificate, now: datetime) -> str:
    with pytest.raises(ValueError) as info:
        _dcap(quote, collateral, root, now)
    return str(info.value)


# --------------------------------------------------------------------------- quote bytes


def test_quote_has_dcap_v3_layout(platform: SimPlatform) -> None:
    raw = platform.quote(APP, REPORT_DATA)
    quote = parse_quote(raw)
    assert quote.to_bytes() == raw
    assert quote.trailing == b""
    h = quote.header
    assert (h.version, h.att_key_type, h.tee_type) == (3, 2, 0)
    assert h.qe_vendor_id == INTEL_QE_VENDOR_ID
    assert h.user_data == platform.config.qe_id + bytes(4)
    assert (h.qe_svn, h.pce_svn) == (8, platform.config.pce_svn)
    body = sgx_body(raw)
    assert body.mr_enclave == APP.mr_enclave
    assert body.mr_signer == APP.mr_signer
    assert (body.isv_prod_id, body.isv_svn) == (1, 2)
    assert body.report_data == REPORT_DATA
    assert body.cpu_svn == platform.config.cpu_svn
    sd = quote.signature_data
    assert sd.qe_auth_data == QE_AUTH_DATA == bytes(range(32))
    assert (
        sd.qe_report.report_data[:32] == hashlib.sha256(sd.attestation_key + QE_AUTH_DATA).digest()
    )
    assert sd.qe_report.report_data[32:] == bytes(32)
    assert sd.qe_report.mr_signer == platform.config.qe_mr_signer
    assert not sd.qe_report.attributes.debug
    assert sd.certification_data.cert_type == CERT_TYPE_PCK_CHAIN
    assert sd.certification_data.data.endswith(b"-----END CERTIFICATE-----\n\0")  # as Intel's QE
    chain = quote.pck_certificates()
    assert [c.subject for c in chain] == [
        platform.pki.pck_cert.subject,
        platform.pki.platform_ca_cert.subject,
        platform.pki.root_cert.subject,
    ]


def test_short_report_data_is_zero_padded_and_long_refused(platform: SimPlatform) -> None:
    quote = parse_quote(platform.quote(APP, b"nonce"))
    assert quote.body.report_data == b"nonce" + bytes(59)
    with pytest.raises(FormatError):
        platform.quote(APP, bytes(65))


def test_backend_satisfies_protocol(platform: SimPlatform) -> None:
    enclave = platform.enclave(APP)
    assert isinstance(enclave, TeeBackend)
    assert enclave.identity == APP
    assert sgx_body(enclave.get_quote(b"x")).mr_enclave == APP.mr_enclave


# --------------------------------------------------------------------------- dcap-qvl + ours


def test_dcap_qvl_accepts_simulated_quote_under_simulated_root(
    platform: SimPlatform, now: datetime
) -> None:
    raw = platform.quote(APP, REPORT_DATA)
    result = _dcap(raw, platform.collateral(now), platform.pki.root_cert, now)
    assert result.status == "UpToDate"  # type: ignore[attr-defined]
    assert result.advisory_ids == []  # type: ignore[attr-defined]


def test_our_verifier_agrees_under_simulated_root(platform: SimPlatform, now: datetime) -> None:
    raw = platform.quote(APP, REPORT_DATA)
    verified = verify_quote(
        raw, platform.collateral(now), trust_root=platform.trust_root(), now=now
    )
    assert verified.tcb_status == TcbStatus.UP_TO_DATE
    assert verified.second_opinion == "UpToDate"
    assert verified.simulated_root
    assert verified.root_spki_sha256 == platform.trust_root().spki_sha256
    assert verified.mr_enclave == APP.mr_enclave
    assert verified.report_data == REPORT_DATA
    assert verified.fmspc == platform.config.fmspc
    assert verified.pck_ca == "platform"
    assert not verified.debug


def test_production_root_rejects_simulated_quote(platform: SimPlatform, now: datetime) -> None:
    raw = platform.quote(APP, REPORT_DATA)
    collateral = platform.collateral(now)
    production = TrustRoot.intel_production()
    assert _dcap_error(raw, collateral, production.certificate, now)
    with pytest.raises(SimulatedRootError) as info:
        verify_quote(raw, collateral, trust_root=production, now=now)
    assert "simulated" in info.value.message.lower()


def test_another_installations_root_rejects(
    platform: SimPlatform, now: datetime, tmp_path: Path
) -> None:
    stranger = SimPlatform.init(tmp_path / "other")
    raw = platform.quote(APP, REPORT_DATA)
    collateral = platform.collateral(now)
    assert _dcap_error(raw, collateral, stranger.pki.root_cert, now)
    with pytest.raises(UntrustedRootError):
        verify_quote(raw, collateral, trust_root=stranger.trust_root(), now=now)


@pytest.mark.parametrize(
    ("scenario", "status", "advisories"),
    [
        (TcbScenario.UP_TO_DATE, TcbStatus.UP_TO_DATE, ()),
        (TcbScenario.SW_HARDENING_NEEDED, TcbStatus.SW_HARDENING_NEEDED, (SIMULATED_ADVISORY,)),
        (TcbScenario.OUT_OF_DATE, TcbStatus.OUT_OF_DATE, (SIMULATED_ADVISORY,)),
    ],
)
def test_tcb_switch_shows_in_both_verifiers(
    tmp_path: Path,
    now: datetime,
    scenario: TcbScenario,
    status: TcbStatus,
    advisories: tuple[str, ...],
) -> None:
    platform = SimPlatform.init(tmp_path / "p")
    platform.set_tcb_scenario(scenario)
    reopened = SimPlatform.open(tmp_path / "p")  # the switch is persistent platform state
    assert reopened.config.tcb_scenario == scenario
    raw = reopened.quote(APP, REPORT_DATA)
    collateral = reopened.collateral(now)
    theirs = _dcap(raw, collateral, reopened.pki.root_cert, now)
    assert theirs.status == status.value  # type: ignore[attr-defined]
    assert tuple(theirs.advisory_ids) == advisories  # type: ignore[attr-defined]
    ours = verify_quote(raw, collateral, trust_root=reopened.trust_root(), now=now)
    assert ours.tcb_status == status
    assert ours.advisory_ids == advisories
    assert ours.second_opinion == status.value


def test_revoked_platform_is_rejected_at_the_crl_by_both(tmp_path: Path, now: datetime) -> None:
    platform = SimPlatform.init(tmp_path / "p", scenario=TcbScenario.REVOKED)
    raw = platform.quote(APP, REPORT_DATA)
    collateral = platform.collateral(now)
    assert "CertRevoked" in _dcap_error(raw, collateral, platform.pki.root_cert, now)
    with pytest.raises(RevokedError):
        verify_quote(raw, collateral, trust_root=platform.trust_root(), now=now)


def test_revoked_tcb_level_alone(tmp_path: Path, now: datetime) -> None:
    """With a clean CRL the Revoked level itself decides: dcap-qvl refuses, ours reports it."""
    platform = SimPlatform.init(tmp_path / "p", scenario=TcbScenario.REVOKED)
    raw = platform.quote(APP, REPORT_DATA)
    collateral = platform.pcs(revoke_pck=False).collateral(now)
    assert "Revoked" in _dcap_error(raw, collateral, platform.pki.root_cert, now)
    ours = verify_quote(raw, collateral, trust_root=platform.trust_root(), now=now)
    assert ours.tcb_status == TcbStatus.REVOKED
    assert ours.second_opinion == "Revoked"


def test_debug_enclave_quote_is_valid_but_dcap_qvl_refuses_debug(
    platform: SimPlatform, now: datetime
) -> None:
    debug = EnclaveIdentity(APP.mr_enclave, APP.mr_signer, 1, 2, DEBUG)
    raw = platform.quote(debug, REPORT_DATA)
    collateral = platform.collateral(now)
    assert "Debug" in _dcap_error(raw, collateral, platform.pki.root_cert, now)
    ours = verify_quote(raw, collateral, trust_root=platform.trust_root(), now=now)
    assert ours.debug  # accepted cryptographically; policy rejects debug by default


def test_expired_collateral_is_rejected(platform: SimPlatform, now: datetime) -> None:
    raw = platform.quote(APP, REPORT_DATA)
    collateral = platform.collateral(now, validity=timedelta(days=1))
    later = now + timedelta(days=2)
    assert _dcap_error(raw, collateral, platform.pki.root_cert, later)
    with pytest.raises(AttestationError):
        verify_quote(raw, collateral, trust_root=platform.trust_root(), now=later)


@pytest.mark.parametrize(
    ("what", "offset"),
    [
        ("header qe_svn", lambda q: 8),
        ("report_data", lambda q: 48 + 320),
        ("quote signature", lambda q: 48 + 384 + 4 + 5),
        ("QE report", lambda q: 48 + 384 + 4 + 128 + 64),
        ("PCK leaf signature", lambda q: q.index(b"-----END CERTIFICATE-----") - 10),
    ],
)
def test_altered_quote_rejected_by_both(
    platform: SimPlatform, now: datetime, what: str, offset: Callable[[bytes], int]
) -> None:
    raw = bytearray(platform.quote(APP, REPORT_DATA))
    raw[offset(bytes(raw))] ^= 0x01
    collateral = platform.collateral(now)
    assert _dcap_error(bytes(raw), collateral, platform.pki.root_cert, now), what
    with pytest.raises(AttestationError):
        verify_quote(bytes(raw), collateral, trust_root=platform.trust_root(), now=now)


def test_altered_root_copy_in_quote_rejected_by_ours(platform: SimPlatform, now: datetime) -> None:
    """The chain's embedded root copy with a broken self-signature: our verifier rejects it.

    dcap-qvl builds the path to the root it is given and never reads the embedded copy, so it
    accepts such a quote; `verify_quote` then reports the disagreement, still a rejection.
    """
    raw = bytearray(platform.quote(APP, REPORT_DATA))
    raw[raw.rindex(b"-----END CERTIFICATE-----") - 10] ^= 0x01
    with pytest.raises(AttestationError):
        verify_quote(
            bytes(raw), platform.collateral(now), trust_root=platform.trust_root(), now=now
        )


# --------------------------------------------------------------------------- EREPORT / QE


def test_qe_rejects_report_targeted_elsewhere(platform: SimPlatform) -> None:
    enclave = platform.enclave(APP)
    report = enclave.get_report(OTHER.target_info(), REPORT_DATA)
    with pytest.raises(ReportMacError):
        platform.qe.quote(report)


@pytest.mark.parametrize("offset", [0, 64, 320, 383, 384, 416, 431])
def test_qe_rejects_altered_report(platform: SimPlatform, offset: int) -> None:
    report = platform.enclave(APP).get_report(None, REPORT_DATA)
    raw = bytearray(report.to_bytes())
    raw[offset] ^= 0x80
    with pytest.raises(ReportMacError):
        platform.qe.quote(Report.parse(bytes(raw)))


def test_local_attestation_between_enclaves(platform: SimPlatform) -> None:
    app, other = platform.enclave(APP), platform.enclave(OTHER)
    report = app.get_report(OTHER.target_info(), b"hello")
    other.verify_report(report)  # targeted at OTHER: verifies
    with pytest.raises(ReportMacError):
        app.verify_report(report)


def test_report_from_another_platform_is_rejected(platform: SimPlatform, tmp_path: Path) -> None:
    stranger = SimPlatform.init(tmp_path / "other")
    report = stranger.enclave(APP).get_report(platform.qe.target_info(), REPORT_DATA)
    with pytest.raises(ReportMacError):
        platform.qe.quote(report)


def test_report_key_survives_reopen(platform: SimPlatform) -> None:
    """A report made by one process's CPU object verifies in another's (same fuse secret)."""
    report = platform.enclave(APP).get_report(None, REPORT_DATA)
    again = SimPlatform.open(platform.path)
    assert parse_quote(again.qe.quote(report)).body.to_bytes() == report.body.to_bytes()
