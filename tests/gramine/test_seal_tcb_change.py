"""What a CPUSVN change (microcode or TCB-recovery update) or an ISVSVN change (an upgrade) does
to sealed data under Gramine's key derivation: Gramine's /dev/attestation/keys/_sgx_mrsigner is
EGETKEY for the *current* CPUSVN and ISVSVN with KEYID 0 (enclave_framework.c,
`sgx_get_seal_key`). The stand-in tree below derives its keys that way on the simulated CPU.
The result must be a named refusal, never a silently new storage root key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import cbor2
import pytest

from enclave_kms import edl
from enclave_kms.enclave.runtime import EnclaveRuntime
from enclave_kms.errors import SealKeyChangedError
from enclave_kms.host.ocalls import HostOcalls, SimQuoting
from enclave_kms.host.storage.sqlite import SQLiteStorage
from enclave_kms.platform.base import EnclaveIdentity, KeyPolicy
from enclave_kms.platform.gramine import GramineBackend
from enclave_kms.platform.sim.cpu import KeyName, KeyRequest, SimCpu
from enclave_kms.platform.sim.platform import SimPlatform
from enclave_kms.sgx.report import AttributeFlags, Attributes

FUSE = os.urandom(32)
CPU_SVN_OLD = bytes([2] * 4 + [0] * 12)
CPU_SVN_NEW = bytes([3] * 4 + [0] * 12)  # after a microcode update


def identity(isv_svn: int = 3) -> EnclaveIdentity:
    return EnclaveIdentity(
        mr_enclave=b"\x11" * 32,
        mr_signer=b"\x22" * 32,
        isv_prod_id=1,
        isv_svn=isv_svn,
        attributes=Attributes(AttributeFlags.INIT | AttributeFlags.MODE64BIT, 3),
    )


def gramine_tree(root: Path, cpu: SimCpu, ident: EnclaveIdentity) -> Path:
    """/dev/attestation as Gramine fills it on `cpu` for enclave `ident`."""
    (root / "keys").mkdir(parents=True)
    (root / "attestation_type").write_text("dcap\n")
    target = ident.target_info()
    (root / "my_target_info").write_bytes(target.to_bytes())
    (root / "report").write_bytes(cpu.ereport(ident, target, bytes(64)).to_bytes())
    for name, policy in (
        ("_sgx_mrenclave", KeyPolicy.MRENCLAVE),
        ("_sgx_mrsigner", KeyPolicy.MRSIGNER),
    ):
        request = KeyRequest(
            KeyName.SEAL, key_policy=policy, isv_svn=ident.isv_svn, cpu_svn=cpu.cpu_svn
        )
        (root / "keys" / name).write_bytes(cpu.egetkey(ident, request))
    return root


def test_a_microcode_update_makes_old_blobs_a_named_refusal(tmp_path: Path) -> None:
    before = GramineBackend(gramine_tree(tmp_path / "a", SimCpu(FUSE, CPU_SVN_OLD), identity()))
    blob = before.seal(b"storage root key", KeyPolicy.MRSIGNER, b"aad")
    assert before.unseal(blob, b"aad") == b"storage root key"
    after = GramineBackend(gramine_tree(tmp_path / "b", SimCpu(FUSE, CPU_SVN_NEW), identity()))
    with pytest.raises(SealKeyChangedError) as caught:
        after.unseal(blob, b"aad")
    assert f"CPUSVN {CPU_SVN_OLD.hex()} → {CPU_SVN_NEW.hex()}" in caught.value.message
    assert "ISVSVN 3" not in caught.value.message  # only the CPUSVN changed


def test_sgx_itself_could_derive_the_old_key_gramine_does_not_ask_for_it() -> None:
    """Why this is Gramine's limit, not SGX's: EGETKEY on the updated CPU still gives the old
    CPUSVN's key when asked for it; Gramine only ever asks for the current one."""
    old_cpu, new_cpu = SimCpu(FUSE, CPU_SVN_OLD), SimCpu(FUSE, CPU_SVN_NEW)
    ident = identity()

    def key(cpu: SimCpu, svn: bytes) -> bytes:
        request = KeyRequest(KeyName.SEAL, key_policy=KeyPolicy.MRSIGNER, isv_svn=3, cpu_svn=svn)
        return cpu.egetkey(ident, request)

    assert key(new_cpu, CPU_SVN_OLD) == key(old_cpu, CPU_SVN_OLD)
    assert key(new_cpu, CPU_SVN_NEW) != key(old_cpu, CPU_SVN_OLD)


def test_an_upgrade_makes_old_blobs_a_named_refusal(tmp_path: Path) -> None:
    cpu = SimCpu(FUSE, CPU_SVN_OLD)
    v3 = GramineBackend(gramine_tree(tmp_path / "v3", cpu, identity(3)))
    blob = v3.seal(b"secret", KeyPolicy.MRSIGNER)
    v4 = GramineBackend(gramine_tree(tmp_path / "v4", cpu, identity(4)))
    with pytest.raises(SealKeyChangedError, match="ISVSVN 3 → 4"):
        v4.unseal(blob)


def _runtime(backend: GramineBackend, storage: SQLiteStorage, sim: SimPlatform) -> EnclaveRuntime:
    handlers = HostOcalls(storage, SimQuoting(sim)).handlers()

    def call(name: str, /, **args: Any) -> dict[str, Any]:  # the EDL's checks, in-process
        decl = edl.declared("ocall", name)
        return decl.check(handlers[name](**decl.check(args, "in")) or {}, "out")

    return EnclaveRuntime(call, backend=backend)


def test_the_enclave_refuses_to_start_rather_than_make_a_new_storage_root_key(
    tmp_path: Path,
) -> None:
    sim = SimPlatform.init(tmp_path / "sim")
    storage = SQLiteStorage(tmp_path / "kms.sqlite")
    config = cbor2.dumps({"platform": "gramine"})
    try:
        before = GramineBackend(gramine_tree(tmp_path / "a", SimCpu(FUSE, CPU_SVN_OLD), identity()))
        _runtime(before, storage, sim).initialize(config)
        sealed = storage.get("identity", "storage-root-key")
        assert sealed is not None
        after = GramineBackend(gramine_tree(tmp_path / "b", SimCpu(FUSE, CPU_SVN_NEW), identity()))
        with pytest.raises(SealKeyChangedError, match="CPUSVN"):
            _runtime(after, storage, sim).initialize(config)
        assert storage.get("identity", "storage-root-key") == sealed  # nothing replaced
        # and the old platform state still opens it (nothing was lost by refusing)
        again = GramineBackend(gramine_tree(tmp_path / "c", SimCpu(FUSE, CPU_SVN_OLD), identity()))
        _runtime(again, storage, sim).initialize(config)
    finally:
        storage.close()
