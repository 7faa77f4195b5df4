"""Sealing: data encrypted to this platform and an enclave measurement, stored by the host.

Blob layout (all integers little-endian, 76-byte header, like sgx_sealed_data_t it records the
key request so unseal can re-derive the key):

    magic "EKMSSEAL" 8 | version u16 | key_policy u16 | isv_prod_id u16 | isv_svn u16 |
    cpu_svn 16 | key_id 32 | nonce 12 | AES-256-GCM ciphertext || tag 16

The whole header (nonce included) is additional authenticated data, followed by the caller's
`aad`, so no header field can be changed without the tag failing.

The key is EGETKEY(SEAL) with the header's policy, ISVSVN, CPUSVN and KEYID, widened to 256 bits
with HKDF-SHA256 (info binds the header). Why HKDF rather than two EGETKEY calls: the 128-bit
EGETKEY output is already a uniformly random PRF output and the hardware's own derivation secret
is 128-bit, so a second EGETKEY would add bookkeeping (two key ids) but no strength; HKDF gives a
domain-separated AES-256 key (the cipher used everywhere else in the product) from one request.

Sealing always uses the enclave's current ISVSVN and the platform's current CPUSVN. Unsealing
derives the key for the SVNs recorded in the header, which EGETKEY allows only when they are not
above the current ones: a newer enclave (same signer, MRSIGNER policy) reads what an older one
sealed, never the reverse.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enclave_kms.errors import KeyDerivationError, SealingError
from enclave_kms.platform.base import EnclaveIdentity, KeyPolicy
from enclave_kms.platform.sim.cpu import KEY_ID_SIZE, KeyName, KeyRequest, SimCpu

MAGIC = b"EKMSSEAL"
VERSION = 1
NONCE_SIZE = 12
TAG_SIZE = 16
_HEADER = struct.Struct("<8sHHHH16s32s12s")
HEADER_SIZE = _HEADER.size
_HKDF_INFO = b"enclave-kms seal key v1"


@dataclass(frozen=True)
class SealedHeader:
    """The key request a blob was sealed under, plus its GCM nonce."""

    key_policy: KeyPolicy
    isv_prod_id: int
    isv_svn: int
    cpu_svn: bytes
    key_id: bytes
    nonce: bytes

    def to_bytes(self) -> bytes:
        return _HEADER.pack(
            MAGIC,
            VERSION,
            self.key_policy,
            self.isv_prod_id,
            self.isv_svn,
            self.cpu_svn,
            self.key_id,
            self.nonce,
        )

    @classmethod
    def parse(cls, blob: bytes) -> SealedHeader:
        if not isinstance(blob, bytes | bytearray | memoryview):
            raise SealingError("sealed blob: expected bytes")
        if len(blob) < HEADER_SIZE + TAG_SIZE:
            raise SealingError(f"sealed blob: truncated ({len(blob)} bytes)")
        magic, version, policy, prod_id, svn, cpu_svn, key_id, nonce = _HEADER.unpack_from(
            bytes(blob[:HEADER_SIZE])
        )
        if magic != MAGIC:
            raise SealingError("sealed blob: not a sealed blob (bad magic)")
        if version != VERSION:
            raise SealingError(f"sealed blob: unsupported version {version}")
        if policy not in (KeyPolicy.MRENCLAVE, KeyPolicy.MRSIGNER):
            raise SealingError(f"sealed blob: unknown key policy {policy:#x}")
        return cls(KeyPolicy(policy), prod_id, svn, cpu_svn, key_id, nonce)


def _key(cpu: SimCpu, identity: EnclaveIdentity, header: SealedHeader, raw: bytes) -> bytes:
    request = KeyRequest(
        KeyName.SEAL,
        key_policy=header.key_policy,
        isv_svn=header.isv_svn,
        cpu_svn=header.cpu_svn,
        key_id=header.key_id,
    )
    seal_key = cpu.egetkey(identity, request)
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_HKDF_INFO + raw)
    return hkdf.derive(seal_key)


def seal(
    cpu: SimCpu, identity: EnclaveIdentity, data: bytes, policy: KeyPolicy, aad: bytes = b""
) -> bytes:
    """Seal `data` as `identity` on `cpu` under `policy` (MRENCLAVE or MRSIGNER)."""
    if policy not in (KeyPolicy.MRENCLAVE, KeyPolicy.MRSIGNER):
        raise SealingError(f"seal: unknown key policy {policy!r}")
    header = SealedHeader(
        key_policy=KeyPolicy(policy),
        isv_prod_id=identity.isv_prod_id,
        isv_svn=identity.isv_svn,
        cpu_svn=cpu.cpu_svn,
        key_id=os.urandom(KEY_ID_SIZE),
        nonce=os.urandom(NONCE_SIZE),
    )
    header_bytes = header.to_bytes()
    key = _key(cpu, identity, header, header_bytes)
    return header_bytes + AESGCM(key).encrypt(header.nonce, bytes(data), header_bytes + aad)


def unseal(cpu: SimCpu, identity: EnclaveIdentity, blob: bytes, aad: bytes = b"") -> bytes:
    """Open a sealed blob; every failure is a SealingError with a one-line reason."""
    header = SealedHeader.parse(blob)
    if header.isv_prod_id != identity.isv_prod_id:
        raise SealingError(
            f"unseal: sealed for product {header.isv_prod_id}, this enclave is "
            f"{identity.isv_prod_id}"
        )
    if header.isv_svn > identity.isv_svn:
        raise SealingError(
            f"unseal: sealed by a newer enclave version (isv_svn {header.isv_svn} > "
            f"{identity.isv_svn})"
        )
    header_bytes = bytes(blob[:HEADER_SIZE])
    try:
        key = _key(cpu, identity, header, header_bytes)
    except KeyDerivationError as exc:
        raise SealingError(f"unseal: {exc.message}") from None
    try:
        return AESGCM(key).decrypt(header.nonce, bytes(blob[HEADER_SIZE:]), header_bytes + aad)
    except InvalidTag:
        raise SealingError(
            "unseal: authentication failed (altered, sealed on another platform, "
            "or for another enclave identity)"
        ) from None
