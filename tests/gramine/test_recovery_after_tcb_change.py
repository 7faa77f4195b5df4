"""k-of-n recovery as the last resort under Gramine's sealing (issue 18): after a CPUSVN
change the old sealed SRK cannot be unsealed; with `recovery` the runtime waits for k
officers' shares instead of failing, restores the SRK, opens the old store and seals the SRK
again for the new CPUSVN, so the next start needs nobody.

The stand-in /dev/attestation cannot make real quotes, and Gramine's root is Intel's, so the
origin check of the recovery set (`check_origin`, appraised for real on simulation in
tests/e2e/test_recovery.py) is replaced here by one that checks it was asked about the set
the old enclave quoted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import cbor2
import pytest
from cryptography.hazmat.primitives.asymmetric import x25519

from enclave_kms.client.recovery import ShareFile, generate_officer_key, load_officer_key
from enclave_kms.enclave.custody import recovery as recovery_module
from enclave_kms.enclave.custody.shares import RecoverySet
from enclave_kms.enclave.runtime import EnclaveRuntime
from enclave_kms.errors import NotInitializedError
from enclave_kms.host.storage.sqlite import SQLiteStorage
from enclave_kms.platform.gramine import GramineBackend
from enclave_kms.platform.sim.cpu import SimCpu
from enclave_kms.platform.sim.platform import SimPlatform
from enclave_kms.wire import custody as wire
from tests.gramine.test_seal_tcb_change import (
    CPU_SVN_NEW,
    CPU_SVN_OLD,
    FUSE,
    _runtime,
    gramine_tree,
    identity,
)


def _submit(
    runtime: EnclaveRuntime, share: ShareFile, key: x25519.X25519PrivateKey
) -> dict[str, Any]:
    session = runtime.recovery
    assert session is not None
    sealed = wire.SUITE.encrypt(
        wire.encode_submission(bytes.fromhex(share.set_id), share.index, share.open(key)),
        x25519.X25519PublicKey.from_public_bytes(session.session_key),
        info=wire.submit_info(session.session_id),
    )
    return session.submit(session.session_id, sealed)


def test_a_microcode_update_is_recovered_by_k_officers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    checked: list[bytes] = []

    def origin_checked(recovery_set: RecoverySet, **_: Any) -> None:
        assert recovery_set.origin == b"stand-in quote"
        checked.append(recovery_set.set_id)

    monkeypatch.setattr(recovery_module, "check_origin", origin_checked)
    sim = SimPlatform.init(tmp_path / "sim")
    storage = SQLiteStorage(tmp_path / "kms.sqlite")
    plain = cbor2.dumps({"platform": "gramine"})
    recover = cbor2.dumps({"platform": "gramine", "recovery": True})
    officers = [generate_officer_key() for _ in range(3)]
    keys = [load_officer_key(private) for private, _ in officers]
    try:
        tree = gramine_tree(tmp_path / "a", SimCpu(FUSE, CPU_SVN_OLD), identity())
        (tree / "quote").write_bytes(b"stand-in quote")
        before = _runtime(GramineBackend(tree), storage, sim)
        before.initialize(plain)
        ready = before.ready()
        ready.tokens.init_admin()
        ready.kms.create_key("orders", "aes256-gcm")
        ciphertext = ready.kms.encrypt("orders", b"order 66")
        ready.custody.split(2, [public for _, public in officers])
        shares = [
            ShareFile.parse(ready.custody.share(wire.officer_fingerprint(k.public_key())))
            for k in keys
        ]
        sealed_before = storage.get("identity", "storage-root-key")

        new_cpu = SimCpu(FUSE, CPU_SVN_NEW)
        after = _runtime(
            GramineBackend(gramine_tree(tmp_path / "b", new_cpu, identity())), storage, sim
        )
        claims = cbor2.loads(after.initialize(recover)["identity"])
        assert claims["recovery"] is True
        assert checked == [bytes.fromhex(shares[0].set_id)]
        assert after.recovery is not None  # nothing served from the store yet
        with pytest.raises(NotInitializedError):
            after.ready()
        assert _submit(after, shares[2], keys[2])["needed"] == 1
        assert storage.get("identity", "storage-root-key") == sealed_before
        assert _submit(after, shares[0], keys[0])["state"] == "restored"
        assert after.ready().kms.decrypt("orders", ciphertext) == b"order 66"
        assert storage.get("identity", "storage-root-key") != sealed_before  # sealed anew

        again = _runtime(
            GramineBackend(gramine_tree(tmp_path / "c", new_cpu, identity())), storage, sim
        )
        again.initialize(plain)  # the new CPUSVN unseals it: no officer needed any more
        assert again.ready().kms.decrypt("orders", ciphertext) == b"order 66"
    finally:
        storage.close()
