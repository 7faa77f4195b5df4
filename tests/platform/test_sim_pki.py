"""The simulated PKI and PCS mirror Intel's certificates and collateral; the platform directory
keeps its secrets private."""

from __future__ import annotations

import json
import os
import urllib.parse
from datetime import UTC, datetime, timedelta
from pathlib import Path

import dcap_qvl
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtensionOID, NameOID

from enclave_kms.attestation.collateral import from_pcs_responses
from enclave_kms.attestation.tcb_info import EnclaveIdentity, TcbInfo
from enclave_kms.attestation.types import TcbStatus, TrustRoot, is_simulated_root
from enclave_kms.errors import ConfigError, PlatformError, PlatformPermissionError
from enclave_kms.platform.sim.pcs import SIMULATED_ADVISORY, TcbScenario, tcb_levels
from enclave_kms.platform.sim.pki import ROOT_CN
from enclave_kms.platform.sim.platform import CONFIG_FILE, FUSE_FILE, SimPlatform
from enclave_kms.sgx.pck import SGX_EXTENSIONS_OID, parse_pck_extension, pck_ca_kind


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("pki") / "platform")


@pytest.fixture(scope="module")
def intel_chain(sgx_testdata: Path) -> list[x509.Certificate]:
    pem = (sgx_testdata / "automata-dcap-rs" / "pck_certchain.pem").read_bytes()
    return x509.load_pem_x509_certificates(pem)


def _verify_raw(cert: x509.Certificate, data: bytes, raw: bytes) -> None:
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey)
    signature = encode_dss_signature(int.from_bytes(raw[:32]), int.from_bytes(raw[32:]))
    key.verify(signature, data, ec.ECDSA(hashes.SHA256()))


def _shape(cert: x509.Certificate) -> list[tuple[str, bool]]:
    return [(ext.oid.dotted_string, ext.critical) for ext in cert.extensions]


# --------------------------------------------------------------------------- certificates


def test_root_says_simulated_never_intel(platform: SimPlatform) -> None:
    root = platform.pki.root_cert
    cn = root.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
    assert cn == ROOT_CN
    assert "Simulated" in str(cn)
    assert "intel" not in root.subject.rfc4514_string().lower().replace("not intel", "")
    assert is_simulated_root(root)
    assert TrustRoot.from_pem(platform.root_pem()).simulated
    assert platform.trust_root().spki_sha256 != TrustRoot.intel_production().spki_sha256
    for cert in (platform.pki.platform_ca_cert, platform.pki.pck_cert):
        assert "Simulated" in cert.subject.rfc4514_string()
        assert "Intel" not in cert.subject.rfc4514_string()


def test_certificates_have_intels_shape(
    platform: SimPlatform, intel_chain: list[x509.Certificate], sgx_testdata: Path
) -> None:
    ours = [platform.pki.pck_cert, platform.pki.platform_ca_cert, platform.pki.root_cert]
    for mine, theirs in zip(ours, intel_chain, strict=True):
        assert _shape(mine) == _shape(theirs)
        assert mine.version == theirs.version
        assert mine.signature_algorithm_oid == theirs.signature_algorithm_oid
        for oid in (ExtensionOID.KEY_USAGE, ExtensionOID.BASIC_CONSTRAINTS):
            assert mine.extensions.get_extension_for_oid(oid).value == (
                theirs.extensions.get_extension_for_oid(oid).value
            )
    signing = x509.load_pem_x509_certificate(
        (sgx_testdata / "automata-dcap-rs" / "signing_cert.pem").read_bytes()
    )
    assert _shape(platform.pki.tcb_signing_cert) == _shape(signing)
    assert platform.pki.root_cert.extensions.get_extension_for_class(
        x509.BasicConstraints
    ).value == x509.BasicConstraints(ca=True, path_length=1)


def test_chain_signatures_and_ca_serials(platform: SimPlatform) -> None:
    pki = platform.pki
    pki.pck_cert.verify_directly_issued_by(pki.platform_ca_cert)
    pki.platform_ca_cert.verify_directly_issued_by(pki.root_cert)
    pki.tcb_signing_cert.verify_directly_issued_by(pki.root_cert)
    pki.root_cert.verify_directly_issued_by(pki.root_cert)
    for cert in (pki.root_cert, pki.platform_ca_cert, pki.tcb_signing_cert):
        ski = cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
        assert cert.serial_number == int.from_bytes(ski)  # as Intel's CAs
    assert pck_ca_kind(pki.pck_cert) == "platform"


def test_pck_extension_describes_the_platform(platform: SimPlatform) -> None:
    ext = parse_pck_extension(platform.pki.pck_cert)
    cfg = platform.config
    assert ext.fmspc == cfg.fmspc
    assert ext.cpu_svn == cfg.cpu_svn
    assert ext.tcb_components == tuple(cfg.cpu_svn)
    assert ext.pce_svn == cfg.pce_svn
    assert ext.pce_id == cfg.pce_id
    assert ext.ppid == cfg.ppid
    assert ext.platform_instance_id == cfg.platform_instance_id
    theirs = dcap_qvl.parse_pck_extension_from_pem(platform.pki.pck_cert.public_bytes(Encoding.PEM))
    assert bytes(theirs.fmspc) == cfg.fmspc
    assert bytes(theirs.cpu_svn) == cfg.cpu_svn
    assert theirs.pce_svn == cfg.pce_svn
    critical = platform.pki.pck_cert.extensions.get_extension_for_oid(
        x509.ObjectIdentifier(SGX_EXTENSIONS_OID)
    ).critical
    assert not critical


def test_crls(platform: SimPlatform) -> None:
    now = datetime.now(UTC).replace(microsecond=0)
    pcs = platform.pcs(validity=timedelta(days=30))
    for der, issuer in (
        (pcs.root_crl(now), platform.pki.root_cert),
        (pcs.pck_crl(now), platform.pki.platform_ca_cert),
    ):
        crl = x509.load_der_x509_crl(der)
        key = issuer.public_key()
        assert isinstance(key, ec.EllipticCurvePublicKey)
        assert crl.is_signature_valid(key)
        assert crl.issuer == issuer.subject
        assert crl.last_update_utc == now
        assert crl.next_update_utc == now + timedelta(days=30)
        assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 1
        aki = crl.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        assert aki.key_identifier == ski.digest
        assert len(crl) == 0
    revoked = x509.load_der_x509_crl(platform.pcs(revoke_pck=True).pck_crl(now))
    entry = revoked.get_revoked_certificate_by_serial_number(platform.pki.pck_cert.serial_number)
    assert entry is not None
    assert entry.extensions.get_extension_for_class(x509.CRLReason).value.reason == (
        x509.ReasonFlags.key_compromise
    )


# --------------------------------------------------------------------------- PCS documents


def test_tcb_info_and_qe_identity_signed_as_intel_signs(platform: SimPlatform) -> None:
    now = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    c = platform.collateral(now)
    signer = platform.pki.tcb_signing_cert
    _verify_raw(signer, c.tcb_info, c.tcb_info_signature)
    _verify_raw(signer, c.qe_identity, c.qe_identity_signature)
    assert c.tcb_info.startswith(
        b'{"id":"SGX","version":3,"issueDate":"2030-01-02T03:04:05Z",'
        b'"nextUpdate":"2030-02-01T03:04:05Z","fmspc":"'
        + platform.config.fmspc.hex().upper().encode()
        + b'","pceId":"0000","tcbType":0,"tcbEvaluationDataNumber":'
    )
    info = TcbInfo.parse(c.tcb_info)
    assert info.to_json_bytes() == c.tcb_info
    assert info.tcb_levels[0].sgx_components == tuple(platform.config.cpu_svn)
    assert info.tcb_levels[0].pce_svn == platform.config.pce_svn
    assert info.tcb_levels[0].tcb_status == TcbStatus.UP_TO_DATE
    qe = EnclaveIdentity.parse(c.qe_identity)
    assert qe.to_json_bytes() == c.qe_identity
    assert (qe.id, qe.version, qe.isv_prod_id) == ("QE", 2, 1)
    assert qe.mrsigner == platform.config.qe_mr_signer
    assert qe.attributes.hex().upper() == "11000000000000000000000000000000"  # Intel's value
    assert qe.attributes_mask.hex().upper() == "FBFFFFFFFFFFFFFF0000000000000000"
    assert qe.tcb_levels[0].isv_svn == 8
    assert (
        c.tcb_info_issuer_chain
        == c.qe_identity_issuer_chain
        == (platform.pki.tcb_issuer_chain_pem())
    )


def test_tcb_levels_per_scenario(platform: SimPlatform) -> None:
    tcb = platform.config.tcb
    own = tuple(tcb.cpu_svn)
    up = tcb_levels(tcb, TcbScenario.UP_TO_DATE)
    assert (up[0].sgx_components, up[0].tcb_status, up[0].advisory_ids) == (
        own,
        TcbStatus.UP_TO_DATE,
        (),
    )
    sw = tcb_levels(tcb, TcbScenario.SW_HARDENING_NEEDED)
    assert (sw[0].sgx_components, sw[0].tcb_status) == (own, TcbStatus.SW_HARDENING_NEEDED)
    assert sw[0].advisory_ids == (SIMULATED_ADVISORY,)
    old = tcb_levels(tcb, TcbScenario.OUT_OF_DATE)
    assert old[0].tcb_status == TcbStatus.UP_TO_DATE
    assert all(a >= b for a, b in zip(old[0].sgx_components, own, strict=True))
    assert old[0].sgx_components != own  # a newer TCB the platform does not reach
    assert (old[1].sgx_components, old[1].tcb_status) == (own, TcbStatus.OUT_OF_DATE)
    revoked = tcb_levels(tcb, TcbScenario.REVOKED)
    assert (revoked[0].sgx_components, revoked[0].tcb_status) == (own, TcbStatus.REVOKED)
    for levels in (up, sw, old, revoked):  # highest first, ending in an older OutOfDate level
        assert levels[-1].tcb_status == TcbStatus.OUT_OF_DATE
        assert levels[-1].sgx_components < own


def test_scenario_names() -> None:
    assert TcbScenario.parse("outofdate") == TcbScenario.OUT_OF_DATE
    with pytest.raises(ConfigError):
        TcbScenario.parse("Compromised")


def test_pcs_responses_rebuild_the_same_collateral(platform: SimPlatform) -> None:
    now = datetime.now(UTC)
    pcs = platform.pcs()
    by_path = {r.path.split("?")[0]: r for r in pcs.pcs_responses(now)}
    tcb = by_path["/sgx/certification/v4/tcb"]
    qe = by_path["/sgx/certification/v4/qe/identity"]
    crl = by_path["/sgx/certification/v4/pckcrl"]
    header = tcb.headers["TCB-Info-Issuer-Chain"]
    assert header.startswith("-----BEGIN%20CERTIFICATE-----%0A")
    assert "/" not in header
    assert "+" not in header
    assert json.loads(tcb.body)["tcbInfo"]["fmspc"] == platform.config.fmspc.hex().upper()
    rebuilt = from_pcs_responses(
        tcb_info_body=tcb.body,
        tcb_info_issuer_chain=header,
        qe_identity_body=qe.body,
        qe_identity_issuer_chain=qe.headers["SGX-Enclave-Identity-Issuer-Chain"],
        pck_crl=crl.body,
        pck_crl_issuer_chain=crl.headers["SGX-PCK-CRL-Issuer-Chain"],
        root_ca_crl=by_path["/sgx/certification/v4/rootcacrl"].body,
    )
    direct = pcs.collateral(now)
    assert rebuilt.tcb_info == direct.tcb_info
    assert rebuilt.qe_identity == direct.qe_identity
    assert rebuilt.pck_crl_issuer_chain == platform.pki.pck_crl_issuer_chain_pem()
    assert urllib.parse.unquote(header).encode() == platform.pki.tcb_issuer_chain_pem()
    _verify_raw(platform.pki.tcb_signing_cert, rebuilt.tcb_info, rebuilt.tcb_info_signature)


# --------------------------------------------------------------------------- platform directory


def test_init_creates_private_directory(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "platform"
    platform = SimPlatform.init(path)
    assert path.stat().st_mode & 0o777 == 0o700
    names = sorted(p.name for p in path.iterdir())
    assert names == sorted(SimPlatform.file_names())
    for child in path.iterdir():
        assert child.stat().st_mode & 0o777 == 0o600, child.name
    assert len((path / FUSE_FILE).read_bytes()) == 32
    toml = (path / CONFIG_FILE).read_text()
    assert "SIMULATED" in toml
    assert 'tcb_scenario = "UpToDate"' in toml
    again = SimPlatform.open(path)
    assert again.config == platform.config
    assert again.root_pem() == platform.root_pem()


def test_init_refuses_an_existing_platform(tmp_path: Path) -> None:
    SimPlatform.init(tmp_path / "p")
    with pytest.raises(PlatformError, match="not empty"):
        SimPlatform.init(tmp_path / "p")


@pytest.mark.parametrize(("target", "mode"), [("dir", 0o755), ("dir", 0o750), ("file", 0o644)])
def test_open_refuses_loose_permissions(tmp_path: Path, target: str, mode: int) -> None:
    path = tmp_path / "p"
    SimPlatform.init(path)
    (path if target == "dir" else path / FUSE_FILE).chmod(mode)
    with pytest.raises(PlatformPermissionError, match=f"{mode:04o}"):
        SimPlatform.open(path)


def test_open_refuses_symlinked_secret(tmp_path: Path) -> None:
    path = tmp_path / "p"
    SimPlatform.init(path)
    outside = tmp_path / "fuse"
    outside.write_bytes((path / FUSE_FILE).read_bytes())
    outside.chmod(0o600)
    (path / FUSE_FILE).unlink()
    os.symlink(outside, path / FUSE_FILE)
    with pytest.raises(PlatformPermissionError, match="symlink"):
        SimPlatform.open(path)


def test_open_refuses_uninitialised(tmp_path: Path) -> None:
    with pytest.raises(PlatformError, match="platform init"):
        SimPlatform.open(tmp_path / "missing")
    empty = tmp_path / "empty"
    empty.mkdir(mode=0o700)
    with pytest.raises(PlatformError, match="not an initialised platform"):
        SimPlatform.open(empty)


def test_open_refuses_corrupt_state(tmp_path: Path) -> None:
    path = tmp_path / "p"
    SimPlatform.init(path)
    (path / CONFIG_FILE).write_text("format = 1\nfmspc = 'zz'\n")
    with pytest.raises(PlatformError, match=CONFIG_FILE):
        SimPlatform.open(path)
    path2 = tmp_path / "q"
    SimPlatform.init(path2)
    (path2 / "pck.key.pem").write_bytes((path2 / "root.key.pem").read_bytes())
    with pytest.raises(PlatformError, match="does not match"):
        SimPlatform.open(path2)


def test_tcb_switch_keeps_file_private(tmp_path: Path) -> None:
    platform = SimPlatform.init(tmp_path / "p")
    platform.set_tcb_scenario(TcbScenario.SW_HARDENING_NEEDED)
    assert (tmp_path / "p" / CONFIG_FILE).stat().st_mode & 0o777 == 0o600
    assert SimPlatform.open(tmp_path / "p").config.tcb_scenario == TcbScenario.SW_HARDENING_NEEDED
