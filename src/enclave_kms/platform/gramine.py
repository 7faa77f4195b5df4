"""Real SGX through Gramine's attestation pseudo-filesystem (`/dev/attestation`).

Gramine exposes the SGX instructions as files inside the enclave:
  my_target_info     read: this enclave's TARGETINFO (512 B)
  target_info        write: the TARGETINFO the next report is for
  user_report_data   write: 64 bytes of report data
  report             read: EREPORT for target_info with user_report_data (432 B)
  quote              read: a DCAP quote over user_report_data (Gramine talks to the QE)
  keys/_sgx_mrenclave, keys/_sgx_mrsigner   read: 128-bit seal keys (EGETKEY)
Writes and the following read must not interleave with another thread's, hence one lock.

Limitation of Gramine (not of SGX): the seal keys are derived for the enclave's *current*
ISVSVN and CPUSVN only, so a key for an older ISVSVN cannot be requested. Upgrading an
enclave under Gramine therefore needs a migration step; see docs/operations.md.
"""

from __future__ import annotations

import os
import struct
import threading
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from enclave_kms.errors import KeyDerivationError, PlatformError, SealingError
from enclave_kms.platform.base import EnclaveIdentity, KeyPolicy
from enclave_kms.sgx.report import Report, TargetInfo

_MAGIC = b"EKGS"  # enclave-kms Gramine seal
_HEADER = struct.Struct("<4sBB32s12s")  # magic, version, policy, key_id, nonce
_VERSION = 1


class GramineBackend:
    """`TeeBackend` for an enclave running under gramine-sgx."""

    def __init__(self, root: Path | str = "/dev/attestation") -> None:
        self._root = Path(root)
        self._lock = threading.Lock()
        try:
            kind = (self._root / "attestation_type").read_text().strip()
        except OSError:
            raise PlatformError(
                f"{self._root} is not available: not running under Gramine"
            ) from None
        if kind != "dcap":
            raise PlatformError(f"Gramine attestation type is {kind!r}; enclave-kms needs 'dcap'")
        self._identity = self._own_identity()

    def _write(self, name: str, data: bytes) -> None:
        with (self._root / name).open("wb", buffering=0) as fh:
            fh.write(data)

    def _read(self, name: str) -> bytes:
        try:
            return (self._root / name).read_bytes()
        except OSError as exc:
            raise PlatformError(f"{self._root / name}: {exc.strerror}") from None

    def _own_identity(self) -> EnclaveIdentity:
        me = TargetInfo.parse(self._read("my_target_info"))
        body = self.get_report(me, bytes(64)).body
        return EnclaveIdentity(
            mr_enclave=body.mr_enclave,
            mr_signer=body.mr_signer,
            isv_prod_id=body.isv_prod_id,
            isv_svn=body.isv_svn,
            attributes=body.attributes,
            misc_select=body.misc_select,
        )

    @property
    def identity(self) -> EnclaveIdentity:
        return self._identity

    def get_report(self, target: TargetInfo | None, report_data: bytes) -> Report:
        if len(report_data) > 64:
            raise PlatformError("report data is at most 64 bytes")
        with self._lock:
            target_bytes = (target or TargetInfo.parse(self._read("my_target_info"))).to_bytes()
            self._write("target_info", target_bytes)
            self._write("user_report_data", report_data.ljust(64, b"\0"))
            return Report.parse(self._read("report"))

    def get_quote(self, report_data: bytes) -> bytes:
        if len(report_data) > 64:
            raise PlatformError("report data is at most 64 bytes")
        with self._lock:
            self._write("user_report_data", report_data.ljust(64, b"\0"))
            return self._read("quote")

    def get_seal_key(self, policy: KeyPolicy, key_id: bytes, isv_svn: int) -> bytes:
        if isv_svn != self._identity.isv_svn:
            raise KeyDerivationError("Gramine derives seal keys for the enclave's own ISVSVN only")
        name = "_sgx_mrenclave" if policy is KeyPolicy.MRENCLAVE else "_sgx_mrsigner"
        base = self._read(f"keys/{name}")
        if len(base) != 16:
            raise PlatformError(f"Gramine seal key {name} has {len(base)} bytes, expected 16")
        # Gramine offers one key per policy; key_id diversifies it as KEYREQUEST.KEYID would.
        return HKDF(hashes.SHA256(), 16, salt=None, info=b"enclave-kms/keyid/" + key_id).derive(
            base
        )

    def _aead(self, policy: KeyPolicy, key_id: bytes) -> AESGCM:
        seal_key = self.get_seal_key(policy, key_id, self._identity.isv_svn)
        return AESGCM(
            HKDF(hashes.SHA256(), 32, salt=None, info=b"enclave-kms/seal").derive(seal_key)
        )

    def seal(self, data: bytes, policy: KeyPolicy, aad: bytes = b"") -> bytes:
        key_id, nonce = os.urandom(32), os.urandom(12)
        header = _HEADER.pack(_MAGIC, _VERSION, int(policy), key_id, nonce)
        return header + self._aead(policy, key_id).encrypt(nonce, data, header + aad)

    def unseal(self, blob: bytes, aad: bytes = b"") -> bytes:
        if len(blob) < _HEADER.size + 16:
            raise SealingError("sealed blob is truncated")
        magic, version, policy, key_id, nonce = _HEADER.unpack_from(blob)
        if magic != _MAGIC or version != _VERSION or policy not in (1, 2):
            raise SealingError("not a Gramine-sealed blob of a known version")
        header = blob[: _HEADER.size]
        try:
            return self._aead(KeyPolicy(policy), key_id).decrypt(
                nonce, blob[_HEADER.size :], header + aad
            )
        except InvalidTag:
            raise SealingError(
                "authentication failed (altered, other platform or enclave identity)"
            ) from None
