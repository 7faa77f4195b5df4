"""TCB evaluation: which TCB level a platform, its TDX module and its quoting enclave are at.

Follows Intel's QVL ("TcbLevelCheck", "TdxModuleCheck", "EnclaveReportVerifier") so that our
statuses are the ones Intel's own verifier reports:

* Platform: the first TCB level (in Intel's QVL order, see `ordered_levels`) whose 16 SGX
  component SVNs are all <= the PCK certificate's and whose PCESVN is <= the certificate's.
  For TDX the level must also match the TD report's TEE_TCB_SVN against `tdxtcbcomponents`;
  when TEE_TCB_SVN[1] (the TDX module major version) is non-zero, indexes 0 and 1 belong to the
  module and are graded by `tdxModuleIdentities["TDX_%02X"]` instead, so the comparison starts
  at index 2. The platform status is then the TDX level's status converged with the module's.
* Quoting enclave: MRSIGNER and ISVPRODID equal, MISCSELECT and ATTRIBUTES equal under the mask
  byte by byte in quote byte order (never as big-endian integers), and the first QE TCB level
  whose ISVSVN is <= the QE's.
* Convergence (Intel's `convergeTcbStatusWithQeTcbStatus`): a QE or module status other than
  UpToDate and Revoked counts as OutOfDate (as Intel's QVL reduces it); an OutOfDate one turns
  UpToDate/SWHardeningNeeded into OutOfDate and the configuration statuses into
  OutOfDateConfigurationNeeded; a Revoked one makes the result Revoked; otherwise the platform
  status stands. Advisory IDs are the union of all levels used, sorted.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

from enclave_kms.attestation.tcb_info import EnclaveIdentity, QeTcbLevel, TcbInfo, TcbLevel
from enclave_kms.attestation.types import TcbStatus
from enclave_kms.errors import QeIdentityError, TcbLevelError
from enclave_kms.sgx.pck import PckExtension
from enclave_kms.sgx.report import ReportBody
from enclave_kms.sgx.tdx import TdReport10

STEP_TCB = "tcb_level"
STEP_TDX_MODULE = "tdx_module"
STEP_QE = "qe_identity_match"

_OK_OR_HARDENING = (TcbStatus.UP_TO_DATE, TcbStatus.SW_HARDENING_NEEDED)
_CONFIGURATION = (
    TcbStatus.CONFIGURATION_NEEDED,
    TcbStatus.CONFIGURATION_AND_SW_HARDENING_NEEDED,
)


@dataclass(frozen=True)
class PlatformTcb:
    """The platform's graded TCB: levels used, converged status, advisories and date."""

    sgx_level: TcbLevel
    tdx_level: TcbLevel | None
    module_level: QeTcbLevel | None
    status: TcbStatus
    advisory_ids: tuple[str, ...]
    tcb_date: datetime


def converge(status: TcbStatus, other: TcbStatus) -> TcbStatus:
    """Fold a QE or TDX-module status into a platform status, as Intel's QVL does.

    Intel's QVL reduces the QE's (and the TDX module's) own status to three outcomes before
    converging: UpToDate, Revoked, and *everything else* as OutOfDate (its enclave-report
    check answers ISVSVN_OUT_OF_DATE for any non-UpToDate, non-Revoked level).
    """
    if other not in (TcbStatus.UP_TO_DATE, TcbStatus.REVOKED):
        other = TcbStatus.OUT_OF_DATE
    if other == TcbStatus.OUT_OF_DATE:
        if status in _OK_OR_HARDENING:
            return TcbStatus.OUT_OF_DATE
        if status in _CONFIGURATION:
            return TcbStatus.OUT_OF_DATE_CONFIGURATION_NEEDED
    if other == TcbStatus.REVOKED:
        return TcbStatus.REVOKED
    return status


def merge_advisories(*groups: Iterable[str]) -> tuple[str, ...]:
    return tuple(sorted({a for group in groups for a in group}))


def check_tcb_info_applies(tcb_info: TcbInfo, pck: PckExtension, *, tdx: bool) -> None:
    """The TCB Info must be for this TEE and this platform (FMSPC and PCE-ID of the PCK cert),
    and of tcbType 0, the only one Intel defines (Intel's QVL refuses any other)."""
    if tcb_info.tcb_type != 0:
        raise TcbLevelError(
            f"TCB Info tcbType {tcb_info.tcb_type} is not supported (only 0)", step=STEP_TCB
        )
    tcb_id = tcb_info.id or "SGX"  # v2 has no id and describes SGX only
    if tdx and (tcb_info.version < 3 or tcb_id != "TDX"):
        raise TcbLevelError(
            f"TCB Info is {tcb_id} v{tcb_info.version}, a TDX quote needs TDX TCB Info v3",
            step=STEP_TCB,
        )
    if not tdx and tcb_id != "SGX":
        raise TcbLevelError(f"TCB Info is for {tcb_id}, the quote is SGX", step=STEP_TCB)
    if tcb_info.fmspc != pck.fmspc:
        raise TcbLevelError(
            f"TCB Info FMSPC {tcb_info.fmspc.hex()} is not the platform's {pck.fmspc.hex()}",
            step=STEP_TCB,
        )
    if tcb_info.pce_id != pck.pce_id:
        raise TcbLevelError(
            f"TCB Info PCE-ID {tcb_info.pce_id.hex()} is not the platform's {pck.pce_id.hex()}",
            step=STEP_TCB,
        )


def _sgx_matches(level: TcbLevel, components: Sequence[int], pce_svn: int) -> bool:
    if len(level.sgx_components) != len(components):
        raise TcbLevelError(
            f"TCB level has {len(level.sgx_components)} SGX components, expected {len(components)}",
            step=STEP_TCB,
        )
    if pce_svn < level.pce_svn:
        return False
    return all(
        ours >= theirs for ours, theirs in zip(components, level.sgx_components, strict=True)
    )


def _tdx_matches(level: TcbLevel, tee_tcb_svn: bytes) -> bool:
    comps = level.tdx_components
    if comps is None or len(comps) != len(tee_tcb_svn):
        raise TcbLevelError(
            "TCB level lacks 16 tdxtcbcomponents, required for a TDX quote", step=STEP_TCB
        )
    start = 2 if tee_tcb_svn[1] > 0 else 0
    return all(tee_tcb_svn[i] >= comps[i] for i in range(start, len(tee_tcb_svn)))


def _first_isv_level(levels: Sequence[QeTcbLevel], isv_svn: int) -> QeTcbLevel | None:
    for level in levels:
        if isv_svn >= level.isv_svn:
            return level
    return None


def _masked_equal(actual: bytes, mask: bytes, expected: bytes) -> bool:
    """(actual & mask) == expected, byte by byte in quote byte order (Intel's applyMask)."""
    if not len(actual) == len(mask) == len(expected):
        return False
    return all((a & m) == e for a, m, e in zip(actual, mask, expected, strict=True))


def check_tdx_module(tcb_info: TcbInfo, td: TdReport10) -> QeTcbLevel | None:
    """Check the TDX module (MRSIGNER_SEAM, SEAM attributes) and grade it by its identity.

    Module version 0 (TEE_TCB_SVN[1] == 0) is graded by the platform level alone and checked
    against `tdxModule`; a later version must have a `TDX_%02X` identity, which supplies both
    the expected signer/attributes and the module's own TCB levels.
    """
    version, isv_svn = td.tee_tcb_svn[1], td.tee_tcb_svn[0]
    module = tcb_info.tdx_module
    if module is None:
        raise TcbLevelError("TDX TCB Info has no tdxModule", step=STEP_TDX_MODULE)
    mrsigner, attributes, mask = module.mrsigner, module.attributes, module.attributes_mask
    identity = None
    if version > 0:
        wanted = f"TDX_{version:02X}"
        identity = next((i for i in tcb_info.tdx_module_identities if i.id.upper() == wanted), None)
        if identity is None:
            raise TcbLevelError(
                f"TCB Info has no TDX module identity {wanted}", step=STEP_TDX_MODULE
            )
        mrsigner, attributes, mask = (
            identity.mrsigner,
            identity.attributes,
            identity.attributes_mask,
        )
    if td.mr_signer_seam != mrsigner:
        raise TcbLevelError(
            "TDX module MRSIGNER_SEAM is not the one TCB Info expects", step=STEP_TDX_MODULE
        )
    if not _masked_equal(td.seam_attributes, mask, attributes):
        raise TcbLevelError(
            "TDX module SEAM attributes do not match TCB Info under the mask", step=STEP_TDX_MODULE
        )
    if identity is None:
        return None
    level = _first_isv_level(identity.tcb_levels, isv_svn)
    if level is None:
        raise TcbLevelError(
            f"no TCB level of {identity.id} matches TDX module ISVSVN {isv_svn}",
            step=STEP_TDX_MODULE,
        )
    return level


def ordered_levels(levels: Sequence[TcbLevel], *, tdx: bool) -> list[TcbLevel]:
    """TCB levels in the order Intel's QVL walks them, not the document's: highest first by
    (SGX component SVNs, PCESVN, and for TDX the TDX component SVNs), compared
    lexicographically; of levels that compare equal only the first listed is kept (QVL keeps
    them in a set)."""

    def key(level: TcbLevel) -> tuple[tuple[int, ...], int, tuple[int, ...]]:
        tdx_key = tuple(level.tdx_components or ()) if tdx else ()
        return (tuple(level.sgx_components), level.pce_svn, tdx_key)

    seen: set[tuple[tuple[int, ...], int, tuple[int, ...]]] = set()
    unique = []
    for level in levels:
        k = key(level)
        if k not in seen:
            seen.add(k)
            unique.append(level)
    return sorted(unique, key=key, reverse=True)


def match_platform_tcb(
    tcb_info: TcbInfo, pck: PckExtension, *, td: TdReport10 | None = None
) -> PlatformTcb:
    """Grade the platform: SGX level from the PCK cert, and for TDX the TDX level and module."""
    check_tcb_info_applies(tcb_info, pck, tdx=td is not None)
    components = tuple(pck.tcb_components)
    sgx_level: TcbLevel | None = None
    tdx_level: TcbLevel | None = None
    for level in ordered_levels(tcb_info.tcb_levels, tdx=td is not None):
        if not _sgx_matches(level, components, pck.pce_svn):
            continue
        if sgx_level is None:
            sgx_level = level
        if td is None:
            break
        if _tdx_matches(level, td.tee_tcb_svn):
            tdx_level = level
            break
    if sgx_level is None:
        raise TcbLevelError(
            f"no TCB level matches the platform (SGX components {list(components)}, "
            f"PCESVN {pck.pce_svn})",
            step=STEP_TCB,
        )
    if td is None:
        return PlatformTcb(
            sgx_level,
            None,
            None,
            sgx_level.tcb_status,
            merge_advisories(sgx_level.advisory_ids),
            sgx_level.tcb_date,
        )
    if tdx_level is None:
        raise TcbLevelError(
            f"no TDX TCB level matches TEE_TCB_SVN {td.tee_tcb_svn.hex()}", step=STEP_TCB
        )
    module_level = check_tdx_module(tcb_info, td)
    status = tdx_level.tcb_status
    advisories = merge_advisories(tdx_level.advisory_ids)
    tcb_date = tdx_level.tcb_date
    if module_level is not None:
        status = converge(status, module_level.tcb_status)
        advisories = merge_advisories(advisories, module_level.advisory_ids)
        tcb_date = min(tcb_date, module_level.tcb_date)
    return PlatformTcb(sgx_level, tdx_level, module_level, status, advisories, tcb_date)


def match_qe_identity(identity: EnclaveIdentity, qe_report: ReportBody) -> QeTcbLevel:
    """Check the QE report against its identity and return the QE's TCB level."""
    if qe_report.mr_signer != identity.mrsigner:
        raise QeIdentityError("QE MRSIGNER is not the one QE Identity expects", step=STEP_QE)
    if qe_report.isv_prod_id != identity.isv_prod_id:
        raise QeIdentityError(
            f"QE ISVPRODID {qe_report.isv_prod_id} is not {identity.isv_prod_id}", step=STEP_QE
        )
    miscselect = qe_report.misc_select.to_bytes(4, "little")
    if not _masked_equal(miscselect, identity.miscselect_mask, identity.miscselect):
        raise QeIdentityError("QE MISCSELECT does not match under the mask", step=STEP_QE)
    attributes = qe_report.attributes.to_bytes()
    if not _masked_equal(attributes, identity.attributes_mask, identity.attributes):
        raise QeIdentityError("QE ATTRIBUTES do not match under the mask", step=STEP_QE)
    level = _first_isv_level(identity.tcb_levels, qe_report.isv_svn)
    if level is None:
        raise TcbLevelError(
            f"no QE Identity TCB level matches QE ISVSVN {qe_report.isv_svn}", step=STEP_QE
        )
    return level
