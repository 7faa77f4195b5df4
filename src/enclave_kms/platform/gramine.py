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
CPUSVN, ISVSVN and CONFIGSVN with KEYID 0 (pal/src/host/linux-sgx/enclave_framework.c,
`sgx_get_seal_key`), so neither a key for an older ISVSVN nor one for the CPUSVN before a
microcode or TCB-recovery update can be requested. Each blob therefore records the CPUSVN and
ISVSVN it was sealed under, and a blob from another one fails with SealKeyChangedError naming
both (never a silent new state: the runtime refuses to replace the storage root key). The
storage root key crosses such a change by migration from a running replica over the attested
join (enclave/custody/); see docs/sgx-hardware.md.
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

from enclave_kms.errors import (
    KeyDerivationError,
    PlatformError,
    SealingError,
)
from enclave_kms.platform.base import EnclaveIdentity, KeyPolicy, seal_key_changed
from enclave_kms.sgx.report import Report, TargetInfo

_MAGIC = b"EKGS"  # enclave-kms Gramine seal
_HEADER_V1 = struct.Struct("<4sBB32s12s")  # magic, version, policy, key_id, nonce
_HEADER = struct.Struct("<4sBB32s12s16sH")  # v2: … then the sealer's cpu_svn, isv_svn
_VERSION = 2


class GramineBackend:
    """`TeeBackend` for an enclave running under gramine-sgx."""

    def __init__(self, root: Path | str = "/dev/attestation") -> None:
        self._root = Path(root)
        self._lock = threading.Lock()
        self._cpu_svn = bytes(16)  # set from our own report below
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
        self._cpu_svn = body.cpu_svn  # what Gramine derives seal keys for
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
        header = _HEADER.pack(
            _MAGIC, _VERSION, int(policy), key_id, nonce, self._cpu_svn, self._identity.isv_svn
        )
        return header + self._aead(policy, key_id).encrypt(nonce, data, header + aad)

    def unseal(self, blob: bytes, aad: bytes = b"") -> bytes:
        version = blob[4] if len(blob) > 4 and blob[:4] == _MAGIC else None
        layout = _HEADER_V1 if version == 1 else _HEADER
        if version not in (1, _VERSION) or len(blob) < layout.size + 16:
            raise SealingError("not a Gramine-sealed blob of a known version, or truncated")
        fields = layout.unpack_from(blob)
        policy, key_id, nonce = fields[2], fields[3], fields[4]
        if policy not in (1, 2):
            raise SealingError("Gramine-sealed blob names an unknown key policy")
        header = blob[: layout.size]
        try:
            return self._aead(KeyPolicy(policy), key_id).decrypt(
                nonce, blob[layout.size :], header + aad
            )
        except InvalidTag:
            if version == _VERSION:
                self._explain(cpu_svn=fields[5], isv_svn=fields[6])
            raise SealingError(
                "authentication failed (altered, other platform or enclave identity)"
            ) from None

    def _explain(self, *, cpu_svn: bytes, isv_svn: int) -> None:
        """Name a CPUSVN or ISVSVN change as the cause (the header is authenticated only by
        the tag that just failed, so this names the likely cause, it proves nothing)."""
        seal_key_changed((cpu_svn, isv_svn), (self._cpu_svn, self._identity.isv_svn))
