"""Shared value types of the attestation core: collateral in, verified result out.

These are plain frozen data; parsing lives in `collateral.py`, checking in `verify.py`,
and the policy decision in `policy.py`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import TYPE_CHECKING

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from enclave_kms.errors import ConfigError

if TYPE_CHECKING:
    from enclave_kms.sgx.quote import Quote
    from enclave_kms.sgx.report import ReportBody

# SHA-256 of the DER SubjectPublicKeyInfo of the production Intel SGX Root CA (DESIGN §8).
INTEL_SGX_ROOT_SPKI_SHA256 = "a0af031289f5d5d4132f9186068a7fc13628633ba235777472e29b6b6c67a49e"


class TcbStatus(StrEnum):
    """TCB statuses as Intel's TCB Info and QE Identity spell them."""

    UP_TO_DATE = "UpToDate"
    SW_HARDENING_NEEDED = "SWHardeningNeeded"
    CONFIGURATION_NEEDED = "ConfigurationNeeded"
    CONFIGURATION_AND_SW_HARDENING_NEEDED = "ConfigurationAndSWHardeningNeeded"
    OUT_OF_DATE = "OutOfDate"
    OUT_OF_DATE_CONFIGURATION_NEEDED = "OutOfDateConfigurationNeeded"
    REVOKED = "Revoked"


@dataclass(frozen=True)
class Collateral:
    """Everything needed to verify a quote offline, in the shape dcap-qvl uses (QuoteCollateralV3).

    `tcb_info` and `qe_identity` are the exact signed bytes of the inner JSON objects
    (`tcbInfo` / `enclaveIdentity`), never re-serialised; signatures are raw 64-byte r||s;
    CRLs are DER; issuer chains are PEM, signer first and root last.
    """

    pck_crl_issuer_chain: bytes
    root_ca_crl: bytes
    pck_crl: bytes
    tcb_info_issuer_chain: bytes
    tcb_info: bytes
    tcb_info_signature: bytes
    qe_identity_issuer_chain: bytes
    qe_identity: bytes
    qe_identity_signature: bytes


def spki_sha256(cert: x509.Certificate) -> str:
    """Hex SHA-256 of the certificate's DER SubjectPublicKeyInfo (how roots are pinned)."""
    der = cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


@dataclass(frozen=True)
class TrustRoot:
    """A root of trust for PCK chains and collateral, identified by its public key only.

    Intel's production root (`intel_production`, built in) is the only root trusted without
    being named. Any other root (a per-installation simulated root, Intel's test PKI, a private
    root) is `production == False`, and a policy must name it by SPKI hash before evidence that
    chains to it is accepted. The subject text decides nothing: Intel's test root carries the
    production subject.
    """

    certificate: x509.Certificate

    @property
    def spki_sha256(self) -> str:
        return spki_sha256(self.certificate)

    @property
    def production(self) -> bool:
        """True only for the key of Intel's production SGX Root CA."""
        return self.spki_sha256 == INTEL_SGX_ROOT_SPKI_SHA256

    @property
    def simulated(self) -> bool:
        """Not Intel's production root (simulated, test PKI or private): must be named."""
        return not self.production

    @classmethod
    def from_pem(cls, pem: bytes) -> TrustRoot:
        """Load an explicitly given root (production or not is decided by its key)."""
        try:
            cert = x509.load_pem_x509_certificate(pem)
        except ValueError as exc:
            raise ConfigError(f"trust root is not a PEM certificate: {exc}") from None
        return cls(cert)

    @classmethod
    def intel_production(cls) -> TrustRoot:
        """The Intel SGX Root CA shipped with the package, checked against the pinned SPKI hash."""
        from importlib.resources import files

        pem = (files("enclave_kms.attestation") / "intel_sgx_root_ca.pem").read_bytes()
        root = cls(x509.load_pem_x509_certificate(pem))
        if not root.production:  # pragma: no cover - packaging fault
            raise ConfigError("bundled Intel SGX Root CA does not match the pinned key")
        return root


def is_simulated_root(cert: x509.Certificate) -> bool:
    """Whether a *foreign* root's subject says "Simulated" (DESIGN §7). Used only to word the
    refusal of a chain that does not end in the pinned key; it never grants or decides trust."""
    return "simulated" in cert.subject.rfc4514_string().lower()


@dataclass(frozen=True)
class VerifiedQuote:
    """The outcome of a successful cryptographic verification. Policy runs only on this.

    `tcb_status` is the merged status (platform and QE); `collateral_expiry` is the earliest
    nextUpdate / notAfter among the collateral used, so callers know when to re-verify.
    """

    quote: Quote
    tee: str  # "SGX" or "TDX"
    tcb_status: TcbStatus
    platform_tcb_status: TcbStatus
    qe_tcb_status: TcbStatus
    advisory_ids: tuple[str, ...]
    fmspc: bytes
    pck_ca: str  # "processor" or "platform"
    tcb_date: datetime | None
    collateral_expiry: datetime
    verified_at: datetime
    root_spki_sha256: str
    simulated_root: bool  # the root is not Intel's production key (see TrustRoot)
    second_opinion: str | None = None  # dcap-qvl's status when it was consulted

    @property
    def report_body(self) -> ReportBody:
        """The SGX enclave report body (only for SGX quotes)."""
        from enclave_kms.sgx.report import ReportBody

        body = self.quote.body
        if not isinstance(body, ReportBody):
            raise TypeError("not an SGX quote: use quote.body for the TD report")
        return body

    @property
    def mr_enclave(self) -> bytes:
        return self.report_body.mr_enclave

    @property
    def mr_signer(self) -> bytes:
        return self.report_body.mr_signer

    @property
    def isv_prod_id(self) -> int:
        return self.report_body.isv_prod_id

    @property
    def isv_svn(self) -> int:
        return self.report_body.isv_svn

    @property
    def debug(self) -> bool:
        return self.report_body.attributes.debug

    @property
    def report_data(self) -> bytes:
        return self.quote.body.report_data
