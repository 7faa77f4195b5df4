"""The Gramine backend speaks /dev/attestation's file protocol; checked against a fake tree
backed by the simulated CPU (the bytes a real Gramine enclave would read)."""

from __future__ import annotations

from pathlib import Path

import pytest

from enclave_kms.errors import KeyDerivationError, PlatformError, SealingError
from enclave_kms.platform.base import EnclaveIdentity, KeyPolicy
from enclave_kms.platform.gramine import GramineBackend
from enclave_kms.platform.sim.platform import SimPlatform
from enclave_kms.sgx.quote import parse_quote
from enclave_kms.sgx.report import AttributeFlags, Attributes, Report, TargetInfo

IDENTITY = EnclaveIdentity(
    mr_enclave=b"\x11" * 32,
    mr_signer=b"\x22" * 32,
    isv_prod_id=1,
    isv_svn=3,
    attributes=Attributes(AttributeFlags.INIT | AttributeFlags.MODE64BIT, 3),
)


class FakeAttestation:
    """A directory whose files behave like Gramine's: writes set state, reads compute."""

    def __init__(self, root: Path, platform: SimPlatform) -> None:
        self.root = root
        self.enclave = platform.enclave(IDENTITY)
        (root / "keys").mkdir(parents=True)
        (root / "attestation_type").write_text("dcap\n")
        (root / "my_target_info").write_bytes(IDENTITY.target_info().to_bytes())
        (root / "keys" / "_sgx_mrenclave").write_bytes(
            self.enclave.get_seal_key(KeyPolicy.MRENCLAVE, bytes(32), 3)
        )
        (root / "keys" / "_sgx_mrsigner").write_bytes(
            self.enclave.get_seal_key(KeyPolicy.MRSIGNER, bytes(32), 3)
        )
        self.refresh()

    def refresh(self) -> None:
        """What the pseudo-files would return for the current target_info/user_report_data."""
        target = self.root / "target_info"
        data = self.root / "user_report_data"
        ti = TargetInfo.parse(target.read_bytes()) if target.exists() else IDENTITY.target_info()
        rd = data.read_bytes() if data.exists() else bytes(64)
        (self.root / "report").write_bytes(self.enclave.get_report(ti, rd).to_bytes())
        (self.root / "quote").write_bytes(self.enclave.get_quote(rd))


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("gramine") / "platform")


@pytest.fixture
def fake(tmp_path: Path, platform: SimPlatform) -> FakeAttestation:
    return FakeAttestation(tmp_path / "attestation", platform)


def test_identity_comes_from_our_own_report(fake: FakeAttestation) -> None:
    backend = GramineBackend(fake.root)
    assert backend.identity.mr_enclave == IDENTITY.mr_enclave
    assert backend.identity.mr_signer == IDENTITY.mr_signer
    assert backend.identity.isv_svn == 3


def test_quote_protocol_writes_report_data_then_reads_quote(fake: FakeAttestation) -> None:
    backend = GramineBackend(fake.root)
    report_data = b"\x42" * 32
    backend.get_quote(report_data)
    assert (fake.root / "user_report_data").read_bytes() == report_data + bytes(32)
    fake.refresh()
    quote = parse_quote(backend.get_quote(report_data))
    assert quote.body.report_data == report_data + bytes(32)


def test_report_protocol_writes_target_first(fake: FakeAttestation) -> None:
    backend = GramineBackend(fake.root)
    target = TargetInfo(b"\x33" * 32, IDENTITY.attributes)
    backend.get_report(target, b"rd")
    assert (fake.root / "target_info").read_bytes() == target.to_bytes()
    fake.refresh()
    report = Report.parse((fake.root / "report").read_bytes())
    assert report.body.report_data == b"rd" + bytes(62)


def test_sealing_round_trip_policies_and_tamper(fake: FakeAttestation) -> None:
    backend = GramineBackend(fake.root)
    for policy in (KeyPolicy.MRENCLAVE, KeyPolicy.MRSIGNER):
        blob = backend.seal(b"storage root key", policy, aad=b"ctx")
        assert backend.unseal(blob, aad=b"ctx") == b"storage root key"
        with pytest.raises(SealingError):
            backend.unseal(blob, aad=b"other")
        altered = bytearray(blob)
        altered[-1] ^= 1
        with pytest.raises(SealingError):
            backend.unseal(bytes(altered), aad=b"ctx")
    mrenclave_blob = backend.seal(b"x", KeyPolicy.MRENCLAVE)
    (fake.root / "keys" / "_sgx_mrenclave").write_bytes(b"\x00" * 16)  # another build
    with pytest.raises(SealingError, match="authentication failed"):
        GramineBackend(fake.root).unseal(mrenclave_blob)


def test_gramine_limits_are_explicit(fake: FakeAttestation, tmp_path: Path) -> None:
    backend = GramineBackend(fake.root)
    with pytest.raises(KeyDerivationError, match="own ISVSVN"):
        backend.get_seal_key(KeyPolicy.MRSIGNER, b"", isv_svn=2)
    with pytest.raises(PlatformError, match="not running under Gramine"):
        GramineBackend(tmp_path / "nowhere")
    (fake.root / "attestation_type").write_text("epid")
    with pytest.raises(PlatformError, match="needs 'dcap'"):
        GramineBackend(fake.root)
