"""The simulated Intel PCS: TCB Info v3, QE Identity v2 and CRLs for one simulated platform.

Documents are built with the attestation core's own models (`attestation.tcb_info`), written
in Intel's compact field order, and signed as Intel signs them: ECDSA P-256 / SHA-256 over the
exact bytes of the inner object, the signature shipped as hex of raw r||s. The same collateral
comes out as `Collateral` (what verifiers take; `attestation.collateral.collateral_to_json`
writes it as dcap-qvl's JSON) and as PCS/PCCS-style HTTP responses (body + URL-encoded
issuer-chain header, at the paths `attestation.sources.PccsClient` requests), so the PCCS
client can be tested against it too.

The TCB switch (`TcbScenario`) rewrites the platform's TCB level as a user would expect Intel to
after an advisory; the PCK leaf's own TCB never changes, exactly as on real hardware:

* UpToDate: the platform's level is UpToDate (an older level below it is OutOfDate).
* SWHardeningNeeded: the platform's level says SWHardeningNeeded with advisory
  INTEL-SA-SIMULATED (fixable in enclave software; the platform itself is current).
* OutOfDate: a newer level (one component SVN higher, as after a microcode TCB recovery) is
  UpToDate, and the platform's level is OutOfDate with INTEL-SA-SIMULATED.
* Revoked: the platform's level is Revoked and — as Intel does for a compromised platform —
  the PCK leaf's serial is listed in the PCK CRL (reason keyCompromise). Every verifier then
  rejects the quote at the certificate-chain step; `revoke_pck=False` keeps the CRL clean so
  the Revoked TCB level alone can be exercised.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from urllib.parse import quote

from enclave_kms.attestation import tcb_info as ti
from enclave_kms.attestation.types import Collateral, TcbStatus
from enclave_kms.errors import ConfigError
from enclave_kms.platform.base import EnclaveIdentity
from enclave_kms.platform.sim.pki import SimPki

SIMULATED_ADVISORY = "INTEL-SA-SIMULATED"
DEFAULT_VALIDITY = timedelta(days=30)
TCB_EVALUATION_DATA_NUMBER = 17

# Fixed TCB dates (as Intel's are: the dates of TCB recovery events, not of issuance).
OLDER_TCB_DATE = datetime(2023, 2, 15, tzinfo=UTC)
PLATFORM_TCB_DATE = datetime(2024, 11, 13, tzinfo=UTC)
NEWER_TCB_DATE = datetime(2025, 11, 12, tzinfo=UTC)

# Intel's QE Identity masks: MISCSELECT fully compared; ATTRIBUTES flags compared except
# MODE64BIT (bit 2), XFRM ignored. Expected flags 0x11 = INIT | PROVISIONKEY.
QE_MISCSELECT_MASK = bytes.fromhex("FFFFFFFF")
QE_ATTRIBUTES_MASK = bytes.fromhex("FBFFFFFFFFFFFFFF0000000000000000")


class TcbScenario(StrEnum):
    """The platform state switch `enclave-kms platform tcb SCENARIO` sets."""

    UP_TO_DATE = "UpToDate"
    SW_HARDENING_NEEDED = "SWHardeningNeeded"
    OUT_OF_DATE = "OutOfDate"
    REVOKED = "Revoked"

    @classmethod
    def parse(cls, value: str) -> TcbScenario:
        for member in cls:
            if member.value.lower() == value.strip().lower():
                return member
        names = ", ".join(m.value for m in cls)
        raise ConfigError(f"unknown TCB scenario {value[:40]!r} (one of: {names})")


@dataclass(frozen=True)
class PlatformTcb:
    """What the PCK certificate says about the platform (TCB type 0: components == CPUSVN)."""

    fmspc: bytes
    pce_id: bytes
    cpu_svn: bytes
    pce_svn: int


@dataclass(frozen=True)
class PcsResponse:
    """One PCS-style HTTP response: body bytes and headers (issuer chain URL-encoded)."""

    path: str
    body: bytes
    headers: dict[str, str]


def _older(svns: tuple[int, ...]) -> tuple[int, ...] | None:
    """A plausible previous TCB: the first non-zero component one lower."""
    for i, svn in enumerate(svns):
        if svn > 0:
            return (*svns[:i], svn - 1, *svns[i + 1 :])
    return None


def _newer(svns: tuple[int, ...]) -> tuple[int, ...]:
    """A TCB recovery: the first component below 255 one higher."""
    for i, svn in enumerate(svns):
        if svn < 255:
            return (*svns[:i], svn + 1, *svns[i + 1 :])
    raise ConfigError("platform TCB components are all 255: no newer TCB level can exist")


def _level(
    svns: tuple[int, ...], pce_svn: int, date: datetime, status: TcbStatus, *advisories: str
) -> ti.TcbLevel:
    return ti.TcbLevel(
        sgx_components=svns,
        pce_svn=pce_svn,
        tdx_components=None,
        tcb_date=date,
        tcb_status=status,
        advisory_ids=tuple(advisories),
    )


def tcb_levels(tcb: PlatformTcb, scenario: TcbScenario) -> tuple[ti.TcbLevel, ...]:
    """The TCB levels Intel would publish for this platform under `scenario`, highest first."""
    own = tuple(tcb.cpu_svn)
    pce = tcb.pce_svn
    levels: list[ti.TcbLevel] = []
    if scenario == TcbScenario.OUT_OF_DATE:
        levels.append(_level(_newer(own), pce, NEWER_TCB_DATE, TcbStatus.UP_TO_DATE))
    status, advisories = {
        TcbScenario.UP_TO_DATE: (TcbStatus.UP_TO_DATE, ()),
        TcbScenario.SW_HARDENING_NEEDED: (TcbStatus.SW_HARDENING_NEEDED, (SIMULATED_ADVISORY,)),
        TcbScenario.OUT_OF_DATE: (TcbStatus.OUT_OF_DATE, (SIMULATED_ADVISORY,)),
        TcbScenario.REVOKED: (TcbStatus.REVOKED, (SIMULATED_ADVISORY,)),
    }[scenario]
    levels.append(_level(own, pce, PLATFORM_TCB_DATE, status, *advisories))
    older = _older(own)
    if older is not None:
        levels.append(_level(older, pce, OLDER_TCB_DATE, TcbStatus.OUT_OF_DATE, SIMULATED_ADVISORY))
    return tuple(levels)


def _header_chain(pem: bytes) -> str:
    """Issuer chains travel URL-encoded in PCS headers (Intel encodes '/', '+', '=' too)."""
    return quote(pem.decode("ascii"), safe="")


class SimPcs:
    """Collateral for one simulated platform at a given `now`."""

    def __init__(
        self,
        pki: SimPki,
        tcb: PlatformTcb,
        qe: EnclaveIdentity,
        *,
        scenario: TcbScenario = TcbScenario.UP_TO_DATE,
        revoke_pck: bool | None = None,
        validity: timedelta = DEFAULT_VALIDITY,
        tcb_evaluation_data_number: int = TCB_EVALUATION_DATA_NUMBER,
    ) -> None:
        if validity <= timedelta(0):
            raise ConfigError("collateral validity must be positive")
        self.pki = pki
        self.tcb = tcb
        self.qe = qe
        self.scenario = scenario
        self.revoke_pck = scenario == TcbScenario.REVOKED if revoke_pck is None else revoke_pck
        self.validity = validity
        self.tcb_evaluation_data_number = tcb_evaluation_data_number

    def window(self, now: datetime) -> tuple[datetime, datetime]:
        issue = now.astimezone(UTC).replace(microsecond=0)
        return issue, issue + self.validity

    # ------------------------------------------------------------------ documents

    def tcb_info(self, now: datetime) -> ti.TcbInfo:
        issue, next_update = self.window(now)
        return ti.TcbInfo(
            version=3,
            id="SGX",
            issue_date=issue,
            next_update=next_update,
            fmspc=self.tcb.fmspc,
            pce_id=self.tcb.pce_id,
            tcb_type=0,
            tcb_evaluation_data_number=self.tcb_evaluation_data_number,
            tcb_levels=tcb_levels(self.tcb, self.scenario),
        )

    def qe_identity(self, now: datetime) -> ti.EnclaveIdentity:
        issue, next_update = self.window(now)
        attributes = bytes(
            a & m for a, m in zip(self.qe.attributes.to_bytes(), QE_ATTRIBUTES_MASK, strict=True)
        )
        svn = self.qe.isv_svn
        levels = [ti.QeTcbLevel(svn, PLATFORM_TCB_DATE, TcbStatus.UP_TO_DATE)]
        if svn >= 2:
            levels.append(
                ti.QeTcbLevel(svn - 2, OLDER_TCB_DATE, TcbStatus.OUT_OF_DATE, (SIMULATED_ADVISORY,))
            )
        return ti.EnclaveIdentity(
            id="QE",
            version=2,
            issue_date=issue,
            next_update=next_update,
            miscselect=self.qe.misc_select.to_bytes(4, "little"),
            miscselect_mask=QE_MISCSELECT_MASK,
            attributes=attributes,
            attributes_mask=QE_ATTRIBUTES_MASK,
            mrsigner=self.qe.mr_signer,
            isv_prod_id=self.qe.isv_prod_id,
            tcb_evaluation_data_number=self.tcb_evaluation_data_number,
            tcb_levels=tuple(levels),
        )

    def root_crl(self, now: datetime) -> bytes:
        return self.pki.root_crl(*self.window(now))

    def pck_crl(self, now: datetime) -> bytes:
        return self.pki.pck_crl(*self.window(now), revoke_pck=self.revoke_pck)

    # ------------------------------------------------------------------ shapes

    def collateral(self, now: datetime) -> Collateral:
        """Everything a verifier needs, valid from `now` for `validity`."""
        tcb_json = self.tcb_info(now).to_json_bytes()
        qe_json = self.qe_identity(now).to_json_bytes()
        signing_chain = self.pki.tcb_issuer_chain_pem()
        return Collateral(
            pck_crl_issuer_chain=self.pki.pck_crl_issuer_chain_pem(),
            root_ca_crl=self.root_crl(now),
            pck_crl=self.pck_crl(now),
            tcb_info_issuer_chain=signing_chain,
            tcb_info=tcb_json,
            tcb_info_signature=self.pki.sign_collateral(tcb_json),
            qe_identity_issuer_chain=signing_chain,
            qe_identity=qe_json,
            qe_identity_signature=self.pki.sign_collateral(qe_json),
        )

    def pcs_responses(self, now: datetime) -> list[PcsResponse]:
        """The PCS v4 responses a PCCS client would fetch for this platform, by URL path."""
        c = self.collateral(now)
        fmspc = self.tcb.fmspc.hex().upper()
        tcb_chain = _header_chain(c.tcb_info_issuer_chain)
        return [
            PcsResponse(
                f"/sgx/certification/v4/tcb?fmspc={fmspc}",
                b'{"tcbInfo":'
                + c.tcb_info
                + b',"signature":"'
                + c.tcb_info_signature.hex().encode()
                + b'"}',
                {"Content-Type": "application/json", "TCB-Info-Issuer-Chain": tcb_chain},
            ),
            PcsResponse(
                "/sgx/certification/v4/qe/identity",
                b'{"enclaveIdentity":'
                + c.qe_identity
                + b',"signature":"'
                + c.qe_identity_signature.hex().encode()
                + b'"}',
                {
                    "Content-Type": "application/json",
                    "SGX-Enclave-Identity-Issuer-Chain": _header_chain(c.qe_identity_issuer_chain),
                },
            ),
            PcsResponse(
                "/sgx/certification/v4/pckcrl?ca=platform&encoding=der",
                c.pck_crl,
                {
                    "Content-Type": "application/pkix-crl",
                    "SGX-PCK-CRL-Issuer-Chain": _header_chain(c.pck_crl_issuer_chain),
                },
            ),
            PcsResponse(
                "/sgx/certification/v4/rootcacrl",
                c.root_ca_crl,
                {"Content-Type": "application/pkix-crl"},
            ),
        ]
