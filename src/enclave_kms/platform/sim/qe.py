"""The simulated quoting enclave (QE) and provisioning certification enclave (PCE).

The flow is DCAP's, step for step, so the bytes are the ones real hardware produces:

1. the application enclave EREPORTs to the QE's TARGETINFO;
2. the QE checks the report's MAC with its own report key (a report targeted at any other
   enclave, or altered in transit through the untrusted host, fails here);
3. the QE signs header + report body with its ECDSA P-256 attestation key;
4. the QE EREPORTs to the PCE with report_data[0:32] = SHA-256(attestation key || QE auth
   data), binding the attestation key to the QE's identity;
5. the PCE checks that report's MAC and signs the QE report body with the PCK key;
6. the quote carries the PCK chain (certification data type 5) so verifiers reach the root.
"""

from __future__ import annotations

import hashlib

from cryptography.hazmat.primitives.asymmetric import ec

from enclave_kms.platform.base import EnclaveIdentity
from enclave_kms.platform.sim.cpu import SimCpu
from enclave_kms.platform.sim.pki import ecdsa_sign_raw, public_key_raw
from enclave_kms.sgx.quote import (
    ATT_KEY_TYPE_ECDSA_P256,
    CERT_TYPE_PCK_CHAIN,
    CERT_TYPE_QE_REPORT,
    TEE_TYPE_SGX,
    CertificationData,
    EcdsaSignatureData,
    Quote,
    QuoteHeader,
)
from enclave_kms.sgx.report import Report, ReportBody, TargetInfo
from enclave_kms.sgx.tdx import TdReport10

# Intel's QE vendor id: verifiers (dcap-qvl, Intel's QVL) accept only this one.
INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")
# The 32 bytes Intel's QE3 puts in its authentication data (0x00..0x1f).
QE_AUTH_DATA = bytes(range(32))
QUOTE_VERSION = 3


class ProvisioningCertificationEnclave:
    """The PCE: the only holder of the PCK private key; signs QE reports targeted at it."""

    def __init__(self, cpu: SimCpu, identity: EnclaveIdentity, pck_key: ec.EllipticCurvePrivateKey):
        self._cpu = cpu
        self.identity = identity
        self._pck_key = pck_key

    def target_info(self) -> TargetInfo:
        return self.identity.target_info()

    def certify(self, qe_report: Report) -> bytes:
        """Check the QE's report MAC, then sign its 384-byte body with the PCK key (r||s)."""
        self._cpu.verify_report(self.identity, qe_report)
        return ecdsa_sign_raw(self._pck_key, qe_report.body.to_bytes())


class QuotingEnclave:
    """The QE: turns reports targeted at it into DCAP quotes v3 signed by its attestation key."""

    def __init__(
        self,
        cpu: SimCpu,
        identity: EnclaveIdentity,
        attestation_key: ec.EllipticCurvePrivateKey,
        pce: ProvisioningCertificationEnclave,
        pck_chain_pem: bytes,
        *,
        pce_svn: int,
        qe_id: bytes,
    ) -> None:
        self._cpu = cpu
        self.identity = identity
        self._attestation_key = attestation_key
        self._pce = pce
        self._pck_chain_pem = pck_chain_pem
        self.pce_svn = pce_svn
        self.qe_id = qe_id

    def target_info(self) -> TargetInfo:
        """What an enclave EREPORTs to in order to be quoted."""
        return self.identity.target_info()

    @property
    def attestation_public_key(self) -> bytes:
        return public_key_raw(self._attestation_key)

    def quote(self, report: Report) -> bytes:
        """A DCAP quote v3 over `report`'s body; ReportMacError if the report is not for us."""
        self._cpu.verify_report(self.identity, report)
        return self.sign_quote(QUOTE_VERSION, TEE_TYPE_SGX, report.body)

    def sign_quote(self, version: int, tee_type: int, body: ReportBody | TdReport10) -> bytes:
        """Steps 3-6 for an already checked body: sign header + body, bind the attestation key
        in a report to the PCE, have the PCE certify it, attach the PCK chain (v4 and later
        wrap all of it in certification data type 6)."""
        header = QuoteHeader(
            version=version,
            att_key_type=ATT_KEY_TYPE_ECDSA_P256,
            tee_type=tee_type,
            qe_svn=self.identity.isv_svn,
            pce_svn=self.pce_svn,
            qe_vendor_id=INTEL_QE_VENDOR_ID,
            user_data=self.qe_id[:16].ljust(20, b"\0"),
        )
        signed = header.to_bytes() + body.to_bytes()
        attestation_key = self.attestation_public_key
        binding = hashlib.sha256(attestation_key + QE_AUTH_DATA).digest()
        qe_report = self._cpu.ereport(self.identity, self._pce.target_info(), binding)
        signature_data = EcdsaSignatureData(
            signature=ecdsa_sign_raw(self._attestation_key, signed),
            attestation_key=attestation_key,
            qe_report=qe_report.body,
            qe_report_signature=self._pce.certify(qe_report),
            qe_auth_data=QE_AUTH_DATA,
            # Intel's QE writes the PEM chain as a C string: one trailing NUL.
            certification_data=CertificationData(CERT_TYPE_PCK_CHAIN, self._pck_chain_pem + b"\0"),
            qe_report_cert_type=None if version == QUOTE_VERSION else CERT_TYPE_QE_REPORT,
        )
        return Quote(header=header, body=body, signature_data=signature_data).to_bytes()
