"""Simulated Intel TDX: TD reports, the TD quoting enclave, and TDX collateral.

A workload in a confidential VM (a TD) proves itself with a DCAP quote v4 (tee_type 0x81) whose
body is the 584-byte TD report: MRTD, RTMR0-3, TD attributes, XFAM, MRCONFIGID, MROWNER,
MROWNERCONFIG, the TDX module's MRSEAM and TEE_TCB_SVN, and 64 bytes of report data. The flow
is Intel's:

1. the TDX module produces a TDREPORT for the TD, MACed under a CPU-internal key;
2. the TD quoting enclave (an SGX enclave of Intel's, ISVPRODID 2) checks the MAC
   (EVERIFYREPORT2) and signs header + TD report with its attestation key;
3. its own SGX report, bound to the attestation key, is certified by the PCE with the PCK key;
   v4 wraps that QE report in certification data type 6 with the PCK chain (type 5) inside.

Collateral is TDX TCB Info v3 (id "TDX": `tdxtcbcomponents` per level, `tdxModule`, the
`TDX_01` module identity) and the TD_QE identity, signed by the same simulated TCB signing key
as the SGX documents. The same platform therefore attests SGX enclaves and TDs, as a
TDX-capable Xeon does; dcap-qvl checks these quotes as it checks the SGX ones.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace
from datetime import datetime

from cryptography.hazmat.primitives.asymmetric import ec

from enclave_kms.attestation import tcb_info as ti
from enclave_kms.attestation.types import Collateral, TcbStatus
from enclave_kms.errors import FormatError
from enclave_kms.platform.base import EnclaveIdentity
from enclave_kms.platform.sim.cpu import SimCpu
from enclave_kms.platform.sim.pcs import (
    PLATFORM_TCB_DATE,
    QE_ATTRIBUTES_MASK,
    QE_MISCSELECT_MASK,
    SimPcs,
    tcb_levels,
)
from enclave_kms.platform.sim.qe import ProvisioningCertificationEnclave, QuotingEnclave
from enclave_kms.sgx.quote import TEE_TYPE_TDX
from enclave_kms.sgx.tdx import TdReport10

TD_QE_ISV_PROD_ID = 2  # Intel's TD quoting enclave
TDX_QUOTE_VERSION = 4

# TD_ATTRIBUTES (8 bytes, little-endian bit numbers): bit 0 DEBUG, bit 28 SEPT_VE_DISABLE.
TD_ATTR_DEBUG = 1 << 0
TD_ATTR_SEPT_VE_DISABLE = 1 << 28
DEFAULT_XFAM = bytes.fromhex("e702060000000000")  # x87 SSE AVX AVX-512 PKRU: a common TD's

# TEE_TCB_SVN: [0] TDX module minor SVN, [1] module major version (1 = TDX 1.x), then the
# platform's TDX TCB components. Version 1 is graded by the `TDX_01` module identity.
DEFAULT_TEE_TCB_SVN = bytes([3, 1, 2]) + bytes(13)
TDX_MODULE_MR_SIGNER = bytes(48)  # Intel signs the TDX module with MRSIGNER_SEAM = 0
TDX_MODULE_ATTRIBUTES = bytes(8)
TDX_MODULE_ATTRIBUTES_MASK = bytes([0xFF]) * 8


def td_attributes(*, debug: bool = False, sept_ve_disable: bool = True) -> bytes:
    flags = (TD_ATTR_DEBUG if debug else 0) | (TD_ATTR_SEPT_VE_DISABLE if sept_ve_disable else 0)
    return flags.to_bytes(8, "little")


@dataclass(frozen=True)
class TdIdentity:
    """What a TD's report says about the TD itself (its measurements, owner and attributes)."""

    mr_td: bytes
    rt_mrs: tuple[bytes, bytes, bytes, bytes] = (bytes(48),) * 4
    attributes: bytes = td_attributes()
    xfam: bytes = DEFAULT_XFAM
    mr_config_id: bytes = bytes(48)
    mr_owner: bytes = bytes(48)
    mr_owner_config: bytes = bytes(48)

    def __post_init__(self) -> None:
        for name, value in (
            ("mr_td", self.mr_td),
            ("mr_config_id", self.mr_config_id),
            ("mr_owner", self.mr_owner),
            ("mr_owner_config", self.mr_owner_config),
            *((f"rt_mr{i}", v) for i, v in enumerate(self.rt_mrs)),
        ):
            if len(value) != 48:
                raise FormatError(f"TD identity {name}: expected 48 bytes")
        if len(self.rt_mrs) != 4 or len(self.attributes) != 8 or len(self.xfam) != 8:
            raise FormatError("TD identity: four RTMRs, 8-byte attributes and XFAM")


@dataclass(frozen=True)
class TdxModule:
    """The platform's TDX module: its measurement (MRSEAM) and TEE_TCB_SVN."""

    mr_seam: bytes
    tee_tcb_svn: bytes = DEFAULT_TEE_TCB_SVN

    @classmethod
    def for_vendor(cls, qe_mr_enclave: bytes) -> TdxModule:
        """One module build per simulated vendor (CPUs sharing a root share it too)."""
        return cls(hashlib.sha384(b"simulated TDX module" + qe_mr_enclave).digest())


def td_qe_identity(qe: EnclaveIdentity) -> EnclaveIdentity:
    """Intel's TD quoting enclave: same signer as the SGX QE, ISVPRODID 2, its own MRENCLAVE."""
    return EnclaveIdentity(
        hashlib.sha256(b"TD_QE" + qe.mr_enclave).digest(),
        qe.mr_signer,
        TD_QE_ISV_PROD_ID,
        qe.isv_svn,
        qe.attributes,
    )


class TdQuotingEnclave(QuotingEnclave):
    """Intel's TD quoting enclave: the QE's signing flow over TD reports of this CPU's TDX
    module, as DCAP quotes v4 (type-6 wrapped signature data)."""

    def __init__(
        self,
        cpu: SimCpu,
        identity: EnclaveIdentity,
        attestation_key: ec.EllipticCurvePrivateKey,
        pce: ProvisioningCertificationEnclave,
        pck_chain_pem: bytes,
        *,
        module: TdxModule,
        pce_svn: int,
        qe_id: bytes,
    ) -> None:
        super().__init__(
            cpu, identity, attestation_key, pce, pck_chain_pem, pce_svn=pce_svn, qe_id=qe_id
        )
        self.module = module

    def td_report(self, td: TdIdentity, report_data: bytes) -> tuple[TdReport10, bytes]:
        """TDG.MR.REPORT: the TD report body for `td` and its MAC."""
        if len(report_data) > 64:
            raise FormatError(f"report_data: at most 64 bytes, got {len(report_data)}")
        body = TdReport10(
            tee_tcb_svn=self.module.tee_tcb_svn,
            mr_seam=self.module.mr_seam,
            mr_signer_seam=TDX_MODULE_MR_SIGNER,
            seam_attributes=TDX_MODULE_ATTRIBUTES,
            td_attributes=td.attributes,
            xfam=td.xfam,
            mr_td=td.mr_td,
            mr_config_id=td.mr_config_id,
            mr_owner=td.mr_owner,
            mr_owner_config=td.mr_owner_config,
            rt_mr0=td.rt_mrs[0],
            rt_mr1=td.rt_mrs[1],
            rt_mr2=td.rt_mrs[2],
            rt_mr3=td.rt_mrs[3],
            report_data=bytes(report_data).ljust(64, b"\0"),
        )
        return body, self._cpu.td_report_mac(body.to_bytes())

    def quote_td(self, body: TdReport10, mac: bytes) -> bytes:
        """A DCAP quote v4 over a TD report; ReportMacError if the report is not this CPU's."""
        self._cpu.verify_td_report(body.to_bytes(), mac)
        return self.sign_quote(TDX_QUOTE_VERSION, TEE_TYPE_TDX, body)


def tdx_collateral(
    pcs: SimPcs, td_qe: EnclaveIdentity, module: TdxModule, now: datetime
) -> Collateral:
    """TDX TCB Info v3 and the TD_QE identity for this platform, with the same CRLs."""
    issue, next_update = pcs.window(now)
    tee = tuple(module.tee_tcb_svn)
    levels = tuple(
        replace(level, tdx_components=tee) for level in tcb_levels(pcs.tcb, pcs.scenario)
    )
    tcb = ti.TcbInfo(
        version=3,
        id="TDX",
        issue_date=issue,
        next_update=next_update,
        fmspc=pcs.tcb.fmspc,
        pce_id=pcs.tcb.pce_id,
        tcb_type=0,
        tcb_evaluation_data_number=pcs.tcb_evaluation_data_number,
        tcb_levels=levels,
        tdx_module=ti.TdxModule(
            TDX_MODULE_MR_SIGNER, TDX_MODULE_ATTRIBUTES, TDX_MODULE_ATTRIBUTES_MASK
        ),
        tdx_module_identities=(
            ti.TdxModuleIdentity(
                id=f"TDX_{tee[1]:02X}",
                mrsigner=TDX_MODULE_MR_SIGNER,
                attributes=TDX_MODULE_ATTRIBUTES,
                attributes_mask=TDX_MODULE_ATTRIBUTES_MASK,
                tcb_levels=(ti.QeTcbLevel(tee[0], PLATFORM_TCB_DATE, TcbStatus.UP_TO_DATE),),
            ),
        ),
    )
    attributes = bytes(
        a & m for a, m in zip(td_qe.attributes.to_bytes(), QE_ATTRIBUTES_MASK, strict=True)
    )
    qe = ti.EnclaveIdentity(
        id="TD_QE",
        version=2,
        issue_date=issue,
        next_update=next_update,
        miscselect=td_qe.misc_select.to_bytes(4, "little"),
        miscselect_mask=QE_MISCSELECT_MASK,
        attributes=attributes,
        attributes_mask=QE_ATTRIBUTES_MASK,
        mrsigner=td_qe.mr_signer,
        isv_prod_id=td_qe.isv_prod_id,
        tcb_evaluation_data_number=pcs.tcb_evaluation_data_number,
        tcb_levels=(ti.QeTcbLevel(td_qe.isv_svn, PLATFORM_TCB_DATE, TcbStatus.UP_TO_DATE),),
    )
    sgx = pcs.collateral(now)
    tcb_json, qe_json = tcb.to_json_bytes(), qe.to_json_bytes()
    return replace(
        sgx,
        tcb_info=tcb_json,
        tcb_info_signature=pcs.pki.sign_collateral(tcb_json),
        qe_identity=qe_json,
        qe_identity_signature=pcs.pki.sign_collateral(qe_json),
    )
