"""The one protocol every TEE backend implements (simulated SGX now, Gramine on hardware later).

The enclave side of enclave-kms needs exactly four things from its TEE: a report for a target,
a quote over its own report data, a sealing key, and sealing built on it. Keeping the protocol
this small is what lets the simulated backend and the hardware backend share every code path
above it (DESIGN §2, §5).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol, runtime_checkable

from enclave_kms.errors import FormatError, SealKeyChangedError
from enclave_kms.sgx.report import Attributes, Report, TargetInfo


class KeyPolicy(IntEnum):
    """SGX KEYREQUEST.KEYPOLICY bits (SDM 38.18): which measurement a seal key is bound to."""

    MRENCLAVE = 0x0001  # only this exact enclave build
    MRSIGNER = 0x0002  # any enclave of the same signer and product (upgrades keep access)


@dataclass(frozen=True)
class EnclaveIdentity:
    """The measured identity an enclave runs as: what EREPORT reports and EGETKEY binds keys to."""

    mr_enclave: bytes
    mr_signer: bytes
    isv_prod_id: int
    isv_svn: int
    attributes: Attributes
    misc_select: int = 0

    def __post_init__(self) -> None:
        if len(self.mr_enclave) != 32 or len(self.mr_signer) != 32:
            raise FormatError("enclave identity: mr_enclave and mr_signer must be 32 bytes")
        for name, value in (("isv_prod_id", self.isv_prod_id), ("isv_svn", self.isv_svn)):
            if not 0 <= value < 1 << 16:
                raise FormatError(f"enclave identity: {name} {value} does not fit in 16 bits")
        if not 0 <= self.misc_select < 1 << 32:
            raise FormatError("enclave identity: misc_select does not fit in 32 bits")

    def target_info(self) -> TargetInfo:
        """The TARGETINFO another enclave uses to EREPORT to this one."""
        return TargetInfo(
            mr_enclave=self.mr_enclave, attributes=self.attributes, misc_select=self.misc_select
        )


@runtime_checkable
class TeeBackend(Protocol):
    """What the trusted side asks of its TEE. Implementations run *as* one enclave identity."""

    @property
    def identity(self) -> EnclaveIdentity:
        """The identity this enclave runs as (MRENCLAVE, MRSIGNER, product, SVN, attributes)."""
        ...

    def get_report(self, target: TargetInfo | None, report_data: bytes) -> Report:
        """EREPORT for `target` (None: the platform's quoting enclave); report_data ≤ 64 bytes."""
        ...

    def get_quote(self, report_data: bytes) -> bytes:
        """A DCAP quote v3 whose enclave report body carries `report_data` (≤ 64 bytes)."""
        ...

    def get_seal_key(self, policy: KeyPolicy, key_id: bytes, isv_svn: int) -> bytes:
        """EGETKEY(SEAL): 16 bytes; refused for an isv_svn above the enclave's own."""
        ...

    def seal(self, data: bytes, policy: KeyPolicy, aad: bytes = b"") -> bytes:
        """Encrypt and authenticate `data` to this platform and `policy`'s measurement."""
        ...

    def unseal(self, blob: bytes, aad: bytes = b"") -> bytes:
        """Inverse of `seal`; any failure raises SealingError."""
        ...


def seal_key_changed(sealed: tuple[bytes, int], current: tuple[bytes, int]) -> None:
    """Under Gramine's rule, a blob sealed under another (CPUSVN, ISVSVN) cannot be opened:
    raise SealKeyChangedError naming what changed (Gramine, and the simulation's gramine rule)."""
    if sealed == current:
        return
    changes = []
    if sealed[0] != current[0]:
        changes.append(f"CPUSVN {sealed[0].hex()} → {current[0].hex()} (microcode/TCB update)")
    if sealed[1] != current[1]:
        changes.append(f"ISVSVN {sealed[1]} → {current[1]} (enclave upgrade)")
    raise SealKeyChangedError(
        "sealed under another seal key: " + ", ".join(changes) + "; Gramine derives seal "
        "keys for the current CPUSVN and ISVSVN only, so this blob cannot be unsealed here "
        "(migrate the storage root key from a running replica: docs/sgx-hardware.md)"
    )
