"""EGETKEY and sealing: keys bound to platform and identity; upgrades read old data, not reverse."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from enclave_kms.errors import EnclaveKMSError, KeyDerivationError, SealingError
from enclave_kms.platform.base import EnclaveIdentity, KeyPolicy
from enclave_kms.platform.sim import sealing
from enclave_kms.platform.sim.cpu import KeyName, KeyRequest, SimCpu
from enclave_kms.platform.sim.platform import SimPlatform
from enclave_kms.sgx.report import AttributeFlags, Attributes

RELEASE = Attributes(AttributeFlags.INIT | AttributeFlags.MODE64BIT, 0x3)
DEBUG = Attributes(AttributeFlags.INIT | AttributeFlags.MODE64BIT | AttributeFlags.DEBUG, 0x3)
SIGNER = bytes([0x5E]) * 32
V1 = EnclaveIdentity(bytes([0x01]) * 32, SIGNER, 1, 1, RELEASE)
V2 = EnclaveIdentity(bytes([0x02]) * 32, SIGNER, 1, 2, RELEASE)  # upgrade: new build, same signer
SECRET = b"storage root key material 32 B!!"


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("seal") / "platform")


@pytest.fixture(scope="module")
def other_platform(tmp_path_factory: pytest.TempPathFactory) -> SimPlatform:
    return SimPlatform.init(tmp_path_factory.mktemp("seal") / "other")


# --------------------------------------------------------------------------- sealing


@pytest.mark.parametrize("policy", [KeyPolicy.MRENCLAVE, KeyPolicy.MRSIGNER])
def test_round_trip_and_header(platform: SimPlatform, policy: KeyPolicy) -> None:
    enclave = platform.enclave(V1)
    blob = enclave.seal(SECRET, policy, aad=b"record 7")
    assert SECRET not in blob
    header = sealing.SealedHeader.parse(blob)
    assert header.key_policy == policy
    assert (header.isv_prod_id, header.isv_svn) == (1, 1)
    assert header.cpu_svn == platform.config.cpu_svn
    assert len(blob) == sealing.HEADER_SIZE + len(SECRET) + sealing.TAG_SIZE
    assert enclave.unseal(blob, aad=b"record 7") == SECRET
    # same data sealed twice: fresh key id and nonce, different blobs
    assert enclave.seal(SECRET, policy) != enclave.seal(SECRET, policy)


def test_mrsigner_sealed_at_svn1_unseals_at_svn2(platform: SimPlatform) -> None:
    blob = platform.enclave(V1).seal(SECRET, KeyPolicy.MRSIGNER)
    assert platform.enclave(V2).unseal(blob) == SECRET


def test_sealed_at_svn2_does_not_unseal_at_svn1(platform: SimPlatform) -> None:
    blob = platform.enclave(V2).seal(SECRET, KeyPolicy.MRSIGNER)
    with pytest.raises(SealingError, match="newer enclave version"):
        platform.enclave(V1).unseal(blob)


def test_mrenclave_sealed_data_needs_the_same_mrenclave(platform: SimPlatform) -> None:
    blob = platform.enclave(V1).seal(SECRET, KeyPolicy.MRENCLAVE)
    same_svn_other_build = EnclaveIdentity(bytes([0x03]) * 32, SIGNER, 1, 1, RELEASE)
    with pytest.raises(SealingError, match="authentication failed"):
        platform.enclave(same_svn_other_build).unseal(blob)
    with pytest.raises(SealingError):
        platform.enclave(V2).unseal(blob)


def test_mrsigner_sealed_data_needs_the_same_signer(platform: SimPlatform) -> None:
    blob = platform.enclave(V1).seal(SECRET, KeyPolicy.MRSIGNER)
    impostor = EnclaveIdentity(V1.mr_enclave, bytes([0x66]) * 32, 1, 1, RELEASE)
    with pytest.raises(SealingError):
        platform.enclave(impostor).unseal(blob)


def test_other_product_and_debug_build_cannot_unseal(platform: SimPlatform) -> None:
    blob = platform.enclave(V1).seal(SECRET, KeyPolicy.MRSIGNER)
    with pytest.raises(SealingError, match="product"):
        platform.enclave(EnclaveIdentity(V1.mr_enclave, SIGNER, 2, 1, RELEASE)).unseal(blob)
    with pytest.raises(SealingError):
        platform.enclave(EnclaveIdentity(V1.mr_enclave, SIGNER, 1, 1, DEBUG)).unseal(blob)


def test_another_platform_cannot_unseal(platform: SimPlatform, other_platform: SimPlatform) -> None:
    for policy in KeyPolicy:
        blob = platform.enclave(V1).seal(SECRET, policy)
        with pytest.raises(SealingError, match="another platform"):
            other_platform.enclave(V1).unseal(blob)


def test_reopened_platform_unseals(platform: SimPlatform) -> None:
    blob = platform.enclave(V1).seal(SECRET, KeyPolicy.MRENCLAVE)
    assert SimPlatform.open(platform.path).enclave(V1).unseal(blob) == SECRET


def test_every_altered_byte_fails(platform: SimPlatform) -> None:
    enclave = platform.enclave(V1)
    blob = enclave.seal(b"12345678", KeyPolicy.MRSIGNER, aad=b"kind:id:v1")
    for i in range(len(blob)):
        for flip in (0x01, 0x80):
            altered = bytearray(blob)
            altered[i] ^= flip
            with pytest.raises(SealingError):
                enclave.unseal(bytes(altered), aad=b"kind:id:v1")
    with pytest.raises(SealingError):
        enclave.unseal(blob, aad=b"kind:id:v2")
    for cut in (0, 10, sealing.HEADER_SIZE, len(blob) - 1):
        with pytest.raises(SealingError):
            enclave.unseal(blob[:cut], aad=b"kind:id:v1")
    with pytest.raises(SealingError):
        enclave.unseal(blob + b"\0", aad=b"kind:id:v1")


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200))
def test_arbitrary_bytes_raise_sealing_error(data: bytes) -> None:
    cpu = SimCpu(bytes(32), bytes(16))
    with pytest.raises(SealingError):
        sealing.unseal(cpu, V1, data)


@settings(max_examples=100, deadline=None)
@given(st.binary(min_size=sealing.HEADER_SIZE, max_size=sealing.HEADER_SIZE + 40))
def test_blobs_with_valid_magic_raise_typed_errors(data: bytes) -> None:
    cpu = SimCpu(bytes(32), bytes(16))
    blob = sealing.MAGIC + b"\x01\x00" + data[10:]
    with pytest.raises(EnclaveKMSError) as info:
        sealing.unseal(cpu, V2, blob)
    assert isinstance(info.value, SealingError)


# --------------------------------------------------------------------------- EGETKEY


def _seal_request(svn: int, cpu_svn: bytes, key_id: bytes = bytes(32)) -> KeyRequest:
    return KeyRequest(
        KeyName.SEAL, key_policy=KeyPolicy.MRSIGNER, isv_svn=svn, cpu_svn=cpu_svn, key_id=key_id
    )


def test_egetkey_refuses_higher_isv_svn(platform: SimPlatform) -> None:
    cpu = platform.cpu
    with pytest.raises(KeyDerivationError, match="isv_svn 2 is above"):
        cpu.egetkey(V1, _seal_request(2, cpu.cpu_svn))
    with pytest.raises(KeyDerivationError):
        platform.enclave(V1).get_seal_key(KeyPolicy.MRSIGNER, bytes(32), 2)


def test_egetkey_refuses_higher_cpu_svn(platform: SimPlatform) -> None:
    cpu = platform.cpu
    higher = bytes([cpu.cpu_svn[0] + 1]) + cpu.cpu_svn[1:]
    with pytest.raises(KeyDerivationError, match="cpu_svn"):
        cpu.egetkey(V1, _seal_request(1, higher))
    lower = bytes([cpu.cpu_svn[0] - 1]) + cpu.cpu_svn[1:]
    assert cpu.egetkey(V1, _seal_request(1, lower)) != cpu.egetkey(
        V1, _seal_request(1, cpu.cpu_svn)
    )


def test_egetkey_derives_old_keys_for_upgrades(platform: SimPlatform) -> None:
    cpu = platform.cpu
    old = cpu.egetkey(V1, _seal_request(1, cpu.cpu_svn))
    assert len(old) == 16
    assert cpu.egetkey(V2, _seal_request(1, cpu.cpu_svn)) == old  # MRSIGNER: V2 gets V1's key
    assert cpu.egetkey(V2, _seal_request(2, cpu.cpu_svn)) != old
    assert platform.enclave(V2).get_seal_key(KeyPolicy.MRSIGNER, bytes(32), 1) == old


def test_egetkey_binds_policy_key_id_and_measurement(platform: SimPlatform) -> None:
    enclave = platform.enclave(V1)
    keys = {
        enclave.get_seal_key(KeyPolicy.MRSIGNER, bytes(32), 1),
        enclave.get_seal_key(KeyPolicy.MRENCLAVE, bytes(32), 1),
        enclave.get_seal_key(KeyPolicy.MRSIGNER, b"\x01" + bytes(31), 1),
        platform.enclave(EnclaveIdentity(V1.mr_enclave, SIGNER, 1, 1, DEBUG)).get_seal_key(
            KeyPolicy.MRSIGNER, bytes(32), 1
        ),
    }
    assert len(keys) == 4
    # MRENCLAVE policy ignores MRSIGNER and vice versa, as in SGX
    resigned = EnclaveIdentity(V1.mr_enclave, bytes([0x77]) * 32, 1, 1, RELEASE)
    assert platform.enclave(resigned).get_seal_key(
        KeyPolicy.MRENCLAVE, bytes(32), 1
    ) == enclave.get_seal_key(KeyPolicy.MRENCLAVE, bytes(32), 1)


def test_egetkey_refuses_bad_requests(platform: SimPlatform) -> None:
    cpu = platform.cpu
    for request in (
        KeyRequest(KeyName.SEAL, key_policy=0, cpu_svn=cpu.cpu_svn),
        KeyRequest(KeyName.SEAL, key_policy=0x8, cpu_svn=cpu.cpu_svn),
        KeyRequest(KeyName.SEAL, key_policy=KeyPolicy.MRENCLAVE, cpu_svn=cpu.cpu_svn, key_id=b"x"),
        KeyRequest(KeyName.SEAL, key_policy=KeyPolicy.MRENCLAVE, cpu_svn=b"short"),
    ):
        with pytest.raises(KeyDerivationError):
            cpu.egetkey(V1, request)


def test_fuse_secret_is_per_platform(platform: SimPlatform, tmp_path: Path) -> None:
    other = SimPlatform.init(tmp_path / "p", cpu_svn=platform.config.cpu_svn)
    request = _seal_request(1, platform.cpu.cpu_svn)
    assert platform.cpu.egetkey(V1, request) != other.cpu.egetkey(V1, request)
