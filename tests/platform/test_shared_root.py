"""Simulated CPUs that share a root (`platform init --root-from`), as real CPUs share Intel's:
each attests under the one root, and neither can read what the other sealed."""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime
from pathlib import Path

import dcap_qvl
import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from typer.testing import CliRunner

from enclave_kms.attestation.collateral import to_dcap_qvl
from enclave_kms.attestation.types import TcbStatus
from enclave_kms.attestation.verify import verify_quote
from enclave_kms.cli.platform import app
from enclave_kms.errors import AttestationError, SealingError
from enclave_kms.platform.base import EnclaveIdentity, KeyPolicy
from enclave_kms.platform.sim.platform import SimPlatform
from enclave_kms.sgx.report import AttributeFlags, Attributes

APP = EnclaveIdentity(
    bytes([0xA1]) * 32,
    bytes([0x5E]) * 32,
    1,
    2,
    Attributes(AttributeFlags.INIT | AttributeFlags.MODE64BIT, 0x3),
)
REPORT_DATA = hashlib.sha512(b"replica key").digest()


@pytest.fixture(scope="module")
def pair(tmp_path_factory: pytest.TempPathFactory) -> tuple[SimPlatform, SimPlatform]:
    base = tmp_path_factory.mktemp("cpus")
    first = SimPlatform.init(base / "a")
    return first, SimPlatform.init(base / "b", root_from=first)


def test_one_root_two_cpus(pair: tuple[SimPlatform, SimPlatform]) -> None:
    a, b = pair
    assert a.trust_root().spki_sha256 == b.trust_root().spki_sha256
    assert a.pki.pck_cert.public_key() != b.pki.pck_cert.public_key()
    assert a.pki.pck_cert.serial_number != b.pki.pck_cert.serial_number
    assert a.config.ppid != b.config.ppid
    assert a.config.qe_id != b.config.qe_id
    assert a.config.fmspc == b.config.fmspc
    assert a.config.qe_mr_signer == b.config.qe_mr_signer  # one vendor's quoting enclave


def test_each_cpu_attests_under_the_shared_root_with_either_collateral(
    pair: tuple[SimPlatform, SimPlatform],
) -> None:
    a, b = pair
    now = datetime.now(UTC).replace(microsecond=0)
    root_der = a.pki.root_cert.public_bytes(Encoding.DER)
    for quoting in (a, b):
        raw = quoting.quote(APP, REPORT_DATA)
        for collateral in (a.collateral(now), b.collateral(now)):
            verified = verify_quote(raw, collateral, trust_root=a.trust_root(), now=now)
            assert verified.tcb_status == TcbStatus.UP_TO_DATE
            report = dcap_qvl.verify_with_root_ca(
                raw, to_dcap_qvl(collateral), root_der, int(now.timestamp())
            )
            assert str(report.status) == "UpToDate"


def test_a_cpu_of_another_root_is_refused(
    pair: tuple[SimPlatform, SimPlatform], tmp_path: Path
) -> None:
    a, _ = pair
    stranger = SimPlatform.init(tmp_path / "stranger")
    now = datetime.now(UTC).replace(microsecond=0)
    raw = stranger.quote(APP, REPORT_DATA)
    with pytest.raises(AttestationError):
        verify_quote(raw, stranger.collateral(now), trust_root=a.trust_root(), now=now)


def test_sealed_data_stays_on_its_cpu(pair: tuple[SimPlatform, SimPlatform]) -> None:
    a, b = pair
    blob = a.enclave(APP).seal(b"storage root key", KeyPolicy.MRSIGNER)
    assert a.enclave(APP).unseal(blob) == b"storage root key"
    with pytest.raises(SealingError):
        b.enclave(APP).unseal(blob)


def test_cli_root_from(tmp_path: Path) -> None:
    runner = CliRunner()
    first = runner.invoke(app, ["init", "--dir", str(tmp_path / "a")])
    assert first.exit_code == 0, first.output
    second = runner.invoke(
        app, ["init", "--dir", str(tmp_path / "b"), "--root-from", str(tmp_path / "a")]
    )
    assert second.exit_code == 0, second.output
    assert "shares the simulated root" in second.output

    def spki(output: str) -> str:
        line = next(x for x in output.splitlines() if x.startswith("root_spki_sha256"))
        return line.split()[-1]

    assert spki(first.output) == spki(second.output)
    missing = runner.invoke(
        app, ["init", "--dir", str(tmp_path / "c"), "--root-from", str(tmp_path / "nope")]
    )
    assert missing.exit_code != 0
    assert "no simulated platform" in (missing.output + str(missing.exception))
