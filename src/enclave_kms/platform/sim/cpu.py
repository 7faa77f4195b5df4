"""The simulated SGX CPU: EREPORT and EGETKEY over a per-platform fuse secret.

Key derivation models what SGX does in hardware (SDM 38.17-38.18, and Intel's "SGX explained"):
a key is an AES-CMAC-based derivation from a secret burnt into the CPU's fuses, over a fixed
structure of "key dependencies" — the key name, the key request's policy, ISVPRODID, ISVSVN,
CPUSVN, KEYID, the masked ATTRIBUTES and MISCSELECT, and MRENCLAVE and/or MRSIGNER as the
policy selects. We use NIST SP 800-108 counter-mode KDF with AES-256-CMAC (cryptography's
`KBKDFCMAC`) keyed by the 32-byte fuse secret, the fixed-layout dependencies as its context.
Because the layout is fixed-size, two different requests can never encode to the same bytes,
and like the CPU we derive, not store: any process holding the fuse secret gets the same key.

The rule that makes upgrades work is enforced exactly as the CPU enforces it: EGETKEY refuses
a request for an ISVSVN above the caller's own or a CPUSVN above the platform's, so a new
enclave version can derive its predecessors' seal keys, never the reverse.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from enum import IntEnum

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import cmac
from cryptography.hazmat.primitives.ciphers import algorithms
from cryptography.hazmat.primitives.kdf.kbkdf import KBKDFCMAC, CounterLocation, Mode

from enclave_kms.errors import FormatError, KeyDerivationError, ReportMacError
from enclave_kms.platform.base import EnclaveIdentity, KeyPolicy
from enclave_kms.sgx.report import Attributes, Report, ReportBody, TargetInfo

FUSE_SECRET_SIZE = 32
KEY_ID_SIZE = 32
CPU_SVN_SIZE = 16

# The SGX SDK's default seal attribute mask (TSEAL_DEFAULT_FLAGSMASK): INIT, DEBUG and the
# reserved high byte are bound into seal keys, so a debug build never shares keys with release.
SEAL_FLAGS_MASK = 0xFF0000000000000B
SEAL_XFRM_MASK = 0
SEAL_MISC_MASK = 0xF0000000

_KDF_LABEL = b"enclave-kms simulated SGX EGETKEY v1"
# SEAL: key_name, key_policy, isv_prod_id, isv_svn, cpu_svn, key_id, attributes, misc_select,
# mr_enclave, mr_signer. REPORT: key_name, config_svn, cpu_svn, key_id, attributes, misc_select,
# mr_enclave, config_id. Fixed-size fields led by the key name: the encoding is injective.
_SEAL_DEPENDENCIES = struct.Struct("<HHHH16s32s16sI32s32s")
_REPORT_DEPENDENCIES = struct.Struct("<HH16s32s16sI32s64s")


class KeyName(IntEnum):
    """KEYREQUEST.KEYNAME values (SDM Table 38-20) this simulator serves."""

    REPORT = 3
    SEAL = 4


@dataclass(frozen=True)
class KeyRequest:
    """The fields of SGX's KEYREQUEST that select a key (SDM 38.18)."""

    key_name: KeyName
    key_policy: int = 0
    isv_svn: int = 0
    cpu_svn: bytes = bytes(CPU_SVN_SIZE)
    key_id: bytes = bytes(KEY_ID_SIZE)
    attribute_flags_mask: int = SEAL_FLAGS_MASK
    attribute_xfrm_mask: int = SEAL_XFRM_MASK
    misc_mask: int = SEAL_MISC_MASK


def cpu_svn_le(lhs: bytes, rhs: bytes) -> bool:
    """CPUSVN order as the TCB walk uses it: every component of `lhs` ≤ the one in `rhs`."""
    return len(lhs) == len(rhs) and all(a <= b for a, b in zip(lhs, rhs, strict=True))


_TD_REPORT_KEY_CONTEXT = b"\xffsimulated TDX report MAC key"
"""KDF context of the TD report MAC key: no KEYREQUEST packs to these bytes."""


def _cmac(key: bytes, data: bytes) -> cmac.CMAC:
    mac = cmac.CMAC(algorithms.AES(key))
    mac.update(data)
    return mac


class SimCpu:
    """One simulated SGX package. `report_key_id` plays CR_REPORT_KEYID (random per boot)."""

    def __init__(self, fuse_secret: bytes, cpu_svn: bytes) -> None:
        if len(fuse_secret) != FUSE_SECRET_SIZE:
            raise FormatError(f"fuse secret: expected {FUSE_SECRET_SIZE} bytes")
        if len(cpu_svn) != CPU_SVN_SIZE:
            raise FormatError(f"cpu_svn: expected {CPU_SVN_SIZE} bytes")
        self._fuse_secret = bytes(fuse_secret)
        self.cpu_svn = bytes(cpu_svn)
        self.report_key_id = os.urandom(KEY_ID_SIZE)

    # ------------------------------------------------------------------ key derivation

    def _derive(self, dependencies: bytes) -> bytes:
        kdf = KBKDFCMAC(
            algorithm=algorithms.AES,
            mode=Mode.CounterMode,
            length=16,
            rlen=4,
            llen=4,
            location=CounterLocation.BeforeFixed,
            label=_KDF_LABEL,
            context=dependencies,
            fixed=None,
        )
        return kdf.derive(self._fuse_secret)

    def egetkey(self, identity: EnclaveIdentity, request: KeyRequest) -> bytes:
        """EGETKEY as `identity`: a 128-bit key, or KeyDerivationError when SGX would fault."""
        if request.key_name == KeyName.REPORT:
            return self._report_key(identity.target_info(), request.key_id)
        if request.key_name != KeyName.SEAL:
            raise KeyDerivationError(f"EGETKEY: key name {request.key_name} is not supported")
        policy = request.key_policy
        if policy == 0 or policy & ~(KeyPolicy.MRENCLAVE | KeyPolicy.MRSIGNER):
            raise KeyDerivationError(f"EGETKEY: invalid key policy {policy:#x}")
        if not 0 <= request.isv_svn < 1 << 16:
            raise KeyDerivationError("EGETKEY: isv_svn out of range")
        if request.isv_svn > identity.isv_svn:
            raise KeyDerivationError(
                f"EGETKEY: isv_svn {request.isv_svn} is above the enclave's own {identity.isv_svn}"
            )
        if len(request.cpu_svn) != CPU_SVN_SIZE or not cpu_svn_le(request.cpu_svn, self.cpu_svn):
            raise KeyDerivationError("EGETKEY: cpu_svn is above the platform's CPUSVN")
        if len(request.key_id) != KEY_ID_SIZE:
            raise KeyDerivationError(f"EGETKEY: key_id must be {KEY_ID_SIZE} bytes")
        attributes = Attributes(
            identity.attributes.flags & request.attribute_flags_mask,
            identity.attributes.xfrm & request.attribute_xfrm_mask,
        )
        dependencies = _SEAL_DEPENDENCIES.pack(
            KeyName.SEAL,
            policy,
            identity.isv_prod_id,
            request.isv_svn,
            request.cpu_svn,
            request.key_id,
            attributes.to_bytes(),
            identity.misc_select & request.misc_mask,
            identity.mr_enclave if policy & KeyPolicy.MRENCLAVE else bytes(32),
            identity.mr_signer if policy & KeyPolicy.MRSIGNER else bytes(32),
        )
        return self._derive(dependencies)

    def _report_key(self, target: TargetInfo, key_id: bytes) -> bytes:
        """The report key of `target`: bound to its MRENCLAVE, ATTRIBUTES, MISCSELECT, CONFIG."""
        if len(key_id) != KEY_ID_SIZE:
            raise KeyDerivationError(f"EGETKEY: key_id must be {KEY_ID_SIZE} bytes")
        dependencies = _REPORT_DEPENDENCIES.pack(
            KeyName.REPORT,
            target.config_svn,
            self.cpu_svn,
            key_id,
            target.attributes.to_bytes(),
            target.misc_select,
            target.mr_enclave,
            target.config_id,
        )
        return self._derive(dependencies)

    # ------------------------------------------------------------------ reports

    def ereport(self, identity: EnclaveIdentity, target: TargetInfo, report_data: bytes) -> Report:
        """EREPORT: `identity`'s report body, MACed under `target`'s report key."""
        if len(report_data) > 64:
            raise FormatError(f"report_data: at most 64 bytes, got {len(report_data)}")
        body = ReportBody(
            cpu_svn=self.cpu_svn,
            misc_select=identity.misc_select,
            isv_ext_prod_id=bytes(16),
            attributes=identity.attributes,
            mr_enclave=identity.mr_enclave,
            mr_signer=identity.mr_signer,
            config_id=bytes(64),
            isv_prod_id=identity.isv_prod_id,
            isv_svn=identity.isv_svn,
            config_svn=0,
            isv_family_id=bytes(16),
            report_data=bytes(report_data).ljust(64, b"\0"),
        )
        key = self._report_key(target, self.report_key_id)
        mac = _cmac(key, body.to_bytes()).finalize()
        return Report(body=body, key_id=self.report_key_id, mac=mac)

    def td_report_mac(self, body: bytes) -> bytes:
        """The MAC the TDX module puts on a TDREPORT: under a CPU-internal key (no target:
        TDX's EVERIFYREPORT2 lets any enclave on this CPU, the TD quoting enclave, check it)."""
        return _cmac(self._derive(_TD_REPORT_KEY_CONTEXT + self.cpu_svn), body).finalize()

    def verify_td_report(self, body: bytes, mac: bytes) -> None:
        """EVERIFYREPORT2: the TD report was made by this CPU's TDX module and not altered."""
        key = self._derive(_TD_REPORT_KEY_CONTEXT + self.cpu_svn)
        try:
            _cmac(key, body).verify(mac)
        except InvalidSignature:
            raise ReportMacError(
                "TD report MAC does not verify: another CPU's report, or altered"
            ) from None

    def verify_report(self, identity: EnclaveIdentity, report: Report) -> None:
        """What the target of a report does: EGETKEY(REPORT, report.key_id) and check the MAC."""
        key = self.egetkey(identity, KeyRequest(KeyName.REPORT, key_id=report.key_id))
        try:
            _cmac(key, report.body.to_bytes()).verify(report.mac)
        except InvalidSignature:
            raise ReportMacError(
                "report MAC does not verify: targeted at another enclave or altered"
            ) from None
