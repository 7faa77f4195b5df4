"""Simulated TDX: TD quotes v4 that our verifier and dcap-qvl accept under the simulated root,
with TDX collateral, and refuse when altered, forged or under another root (DESIGN §15: the
confidential-VM workloads key release appraises)."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import dcap_qvl
import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from enclave_kms.attestation.collateral import to_dcap_qvl
from enclave_kms.attestation.types import TcbStatus
from enclave_kms.attestation.verify import verify_quote
from enclave_kms.errors import AttestationError, ReportMacError
from enclave_kms.platform.sim.pcs import TcbScenario
from enclave_kms.platform.sim.platform import SimPlatform
from enclave_kms.platform.sim.tdx import TD_QE_ISV_PROD_ID, TdIdentity, td_attributes
from enclave_kms.sgx.quote import TEE_TYPE_TDX, parse_quote
from enclave_kms.sgx.tdx import TdReport10

WORKLOAD = TdIdentity(
    mr_td=hashlib.sha384(b"workload image").digest(),
    rt_mrs=tuple(hashlib.sha384(bytes([i])).digest() for i in range(4)),  # type: ignore[arg-type]
    mr_owner=hashlib.sha384(b"owner").digest(),
)
REPORT_DATA = hashlib.sha512(b"workload public key").digest()


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("tdx") / "platform")


@pytest.fixture
def now() -> datetime:
    return datetime.now(UTC).replace(microsecond=0)


def _dcap_status(raw: bytes, platform: SimPlatform, now: datetime) -> str:
    report = dcap_qvl.verify_with_root_ca(
        raw,
        to_dcap_qvl(platform.tdx_collateral(now)),
        platform.pki.root_cert.public_bytes(Encoding.DER),
        int(now.timestamp()),
    )
    return str(report.status)


def test_td_quote_is_v4_tdx_with_the_td_report(platform: SimPlatform) -> None:
    raw = platform.td_quote(WORKLOAD, REPORT_DATA)
    quote = parse_quote(raw)
    assert quote.to_bytes() == raw
    assert (quote.header.version, quote.header.tee_type) == (4, TEE_TYPE_TDX)
    body = quote.body
    assert isinstance(body, TdReport10)
    assert body.mr_td == WORKLOAD.mr_td
    assert body.rt_mrs == WORKLOAD.rt_mrs
    assert body.mr_owner == WORKLOAD.mr_owner
    assert body.report_data == REPORT_DATA
    assert body.mr_seam == platform.tdx_module.mr_seam
    assert not body.debug
    sd = quote.signature_data
    assert sd.qe_report_cert_type == 6
    assert sd.qe_report.isv_prod_id == TD_QE_ISV_PROD_ID


def test_both_verifiers_accept_it_under_the_simulated_root(
    platform: SimPlatform, now: datetime
) -> None:
    raw = platform.td_quote(WORKLOAD, REPORT_DATA)
    verified = verify_quote(
        raw, platform.tdx_collateral(now), trust_root=platform.trust_root(), now=now
    )
    assert verified.tee == "TDX"
    assert verified.tcb_status == TcbStatus.UP_TO_DATE
    assert verified.second_opinion == "UpToDate"
    assert _dcap_status(raw, platform, now) == "UpToDate"


def test_tcb_switch_reaches_td_quotes(tmp_path: Path, now: datetime) -> None:
    platform = SimPlatform.init(tmp_path / "p", scenario=TcbScenario.OUT_OF_DATE)
    raw = platform.td_quote(WORKLOAD, REPORT_DATA)
    verified = verify_quote(
        raw, platform.tdx_collateral(now), trust_root=platform.trust_root(), now=now
    )
    assert verified.tcb_status == TcbStatus.OUT_OF_DATE
    assert _dcap_status(raw, platform, now) == "OutOfDate"


def test_sgx_collateral_does_not_grade_a_td(platform: SimPlatform, now: datetime) -> None:
    raw = platform.td_quote(WORKLOAD, REPORT_DATA)
    with pytest.raises(AttestationError):
        verify_quote(raw, platform.collateral(now), trust_root=platform.trust_root(), now=now)


def test_an_altered_td_report_is_refused_by_the_quoting_enclave(platform: SimPlatform) -> None:
    body, mac = platform.td_qe.td_report(WORKLOAD, REPORT_DATA)
    forged = TdReport10.parse(body.to_bytes()[:-64] + bytes(64))  # other report data
    with pytest.raises(ReportMacError):
        platform.td_qe.quote_td(forged, mac)


def test_another_cpus_td_report_is_refused(platform: SimPlatform, tmp_path: Path) -> None:
    other = SimPlatform.init(tmp_path / "other", root_from=platform)
    body, mac = other.td_qe.td_report(WORKLOAD, REPORT_DATA)
    with pytest.raises(ReportMacError):
        platform.td_qe.quote_td(body, mac)
    # on its own CPU it quotes, and chains to the shared root
    raw = other.td_qe.quote_td(body, mac)
    now = datetime.now(UTC).replace(microsecond=0)
    verified = verify_quote(
        raw, other.tdx_collateral(now), trust_root=platform.trust_root(), now=now
    )
    assert verified.tcb_status == TcbStatus.UP_TO_DATE


@pytest.mark.parametrize("offset", [48 + 100, 48 + 584 - 1, 48 + 200])  # MRTD, report data, RTMR
def test_a_flipped_body_byte_is_refused(platform: SimPlatform, now: datetime, offset: int) -> None:
    raw = bytearray(platform.td_quote(WORKLOAD, REPORT_DATA))
    raw[offset] ^= 1
    with pytest.raises(AttestationError):
        verify_quote(
            bytes(raw), platform.tdx_collateral(now), trust_root=platform.trust_root(), now=now
        )


def test_a_stranger_root_is_refused(platform: SimPlatform, now: datetime, tmp_path: Path) -> None:
    stranger = SimPlatform.init(tmp_path / "stranger")
    raw = stranger.td_quote(WORKLOAD, REPORT_DATA)
    with pytest.raises(AttestationError):
        verify_quote(raw, stranger.tdx_collateral(now), trust_root=platform.trust_root(), now=now)


def test_td_attributes_carry_debug_and_sept_ve_disable(platform: SimPlatform) -> None:
    debug = TdIdentity(mr_td=bytes(48), attributes=td_attributes(debug=True))
    body = parse_quote(platform.td_quote(debug, b"x")).body
    assert isinstance(body, TdReport10)
    assert body.debug  # a policy must refuse it (verification alone says nothing of debug)
    assert td_attributes() == (1 << 28).to_bytes(8, "little")
