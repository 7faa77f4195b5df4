"""The simulated CPU under Gramine's seal-key rule, and a simulated microcode update."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from enclave_kms.cli.main import main
from enclave_kms.errors import KeyDerivationError, SealKeyChangedError
from enclave_kms.platform.base import EnclaveIdentity, KeyPolicy
from enclave_kms.platform.sim.platform import SealRule, SimPlatform
from enclave_kms.sgx.pck import parse_pck_extension
from enclave_kms.sgx.report import AttributeFlags, Attributes

ME = EnclaveIdentity(
    bytes(range(32)),
    bytes(range(32, 64)),
    1,
    1,
    Attributes(AttributeFlags.INIT | AttributeFlags.MODE64BIT, 3),
)
UPGRADED = replace(ME, isv_svn=2, mr_enclave=bytes(32))


def test_sgx_rule_keeps_access_across_an_upgrade_gramine_rule_does_not(tmp_path: Path) -> None:
    cpu = SimPlatform.init(tmp_path / "cpu")
    blob = cpu.enclave(ME).seal(b"root key", KeyPolicy.MRSIGNER, b"aad")
    assert cpu.enclave(UPGRADED).unseal(blob, b"aad") == b"root key"
    cpu.set_seal_rule(SealRule.GRAMINE)
    reopened = SimPlatform.open(cpu.path)
    assert reopened.config.seal_rule is SealRule.GRAMINE
    with pytest.raises(SealKeyChangedError, match="ISVSVN 1 → 2"):
        reopened.enclave(UPGRADED).unseal(blob, b"aad")
    with pytest.raises(KeyDerivationError, match="own ISVSVN"):
        reopened.enclave(UPGRADED).get_seal_key(KeyPolicy.MRSIGNER, bytes(32), 1)
    assert reopened.enclave(ME).unseal(blob, b"aad") == b"root key"


def test_a_cpu_svn_change_reissues_the_pck_and_changes_the_seal_keys(tmp_path: Path) -> None:
    cpu = SimPlatform.init(tmp_path / "cpu", seal_rule=SealRule.GRAMINE)
    blob = cpu.enclave(ME).seal(b"root key", KeyPolicy.MRSIGNER)
    old_serial = cpu.pki.pck_cert.serial_number
    new_svn = bytes([15]) + cpu.config.cpu_svn[1:]
    with pytest.raises(SystemExit) as exc:
        main(["platform", "tcb", "--cpu-svn", new_svn.hex(), "--dir", str(cpu.path)])
    assert exc.value.code == 0
    after = SimPlatform.open(cpu.path)
    assert after.config.cpu_svn == new_svn
    assert after.pki.pck_cert.serial_number != old_serial
    assert after.pki.pck_cert.public_key() == cpu.pki.pck_key.public_key()
    assert parse_pck_extension(after.pki.pck_cert).cpu_svn == new_svn
    with pytest.raises(SealKeyChangedError, match="CPUSVN 0e0e"):
        after.enclave(ME).unseal(blob)
