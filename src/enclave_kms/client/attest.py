"""The attested connection, sans I/O: what a client checks before it trusts a KMS server.

`begin(certificate)` → `PendingAttestation` (with a fresh nonce) → the caller fetches
``GET /v1/attestation?nonce=…`` over a connection pinned to that certificate → `finish(...)`
→ `AttestedServer`. Steps, in order; each failure is a typed error naming its step:

1. the certificate: self-signature (possession of its key), validity at `now`, one evidence
   extension, and the evidence binds the certificate's key (`ratls.verify_ratls_certificate`:
   no evidence → AttestationError, another key → BindingError);
2. collateral: the server's answer carries it (it is signed, so its transport does not matter),
   or a `CollateralSource` such as a PCCS is asked for it;
3. appraise the certificate's evidence (`attestation.appraise`: verification against the trust
   root at `now` — Intel's root by default, any other only if passed explicitly and named by
   key in the policy — then the policy, which must pin an identity: every violation,
   PolicyError);
4. liveness: the answer is about the same key, its quote verifies, its report_data[0:32] is
   SHA-256(SHA-256(SPKI) ‖ our nonce) — so a recorded answer cannot be replayed — and it comes
   from the same enclave identity as the certificate's (BindingError, step "liveness").

The caller then pins the certificate (see `tls.pinned_context`) for every later connection and
repeats all of this only when the server presents another certificate: once per TLS key,
never per request.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import functools
import hashlib
import hmac
import json
import secrets
import ssl
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from enclave_kms.attestation.cache import VerificationCache
from enclave_kms.attestation.policy import DEFAULT_POLICY, Policy, require_identity
from enclave_kms.attestation.types import TrustRoot, VerifiedQuote
from enclave_kms.errors import (
    BindingError,
    CollateralError,
    ConfigError,
    FormatError,
    PolicyError,
)

if TYPE_CHECKING:  # the verifier itself is imported by the steps that run it (start-up cost:
    # a client that reuses a pinned attestation never appraises, so never loads it)
    from enclave_kms.attestation.ratls import RaTlsCertificate
    from enclave_kms.attestation.sources import CollateralSource
    from enclave_kms.attestation.types import Collateral
    from enclave_kms.sgx.tutorial import EnclaveInfo

NONCE_BYTES = 32
ATTESTATION_PATH = "/v1/attestation"


@functools.cache
def intel_root() -> TrustRoot:
    return TrustRoot.intel_production()


@dataclass(frozen=True)
class AttestationSettings:
    """What a client trusts: a policy that pins the enclave's identity (required: a policy
    without one is refused here, before any connection, unless it says `any_enclave_unsafe`),
    Intel's root unless another is given (and named by key in the policy), and where
    collateral comes from. `cache` remembers time-free verification checks across
    attestations of this client (see `attestation.cache`)."""

    policy: Policy = DEFAULT_POLICY
    trust_root: TrustRoot | None = None
    collateral_source: CollateralSource | None = None
    second_opinion: bool = True
    cache: VerificationCache = dataclasses.field(
        default_factory=VerificationCache, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        if not isinstance(self.policy, Policy):
            raise ConfigError("policy must be an enclave_kms.attestation.policy.Policy")
        require_identity(self.policy)
        if self.trust_root is not None and not isinstance(self.trust_root, TrustRoot):
            raise ConfigError("trust_root must be an enclave_kms.attestation.types.TrustRoot")

    @property
    def root(self) -> TrustRoot:
        return self.trust_root if self.trust_root is not None else intel_root()


@dataclass(frozen=True)
class PendingAttestation:
    """A certificate whose evidence binds its key, waiting for collateral and liveness."""

    certificate: RaTlsCertificate
    quote: bytes
    nonce: bytes = dataclasses.field(repr=False)

    @property
    def certificate_pem(self) -> str:
        return ssl.DER_cert_to_PEM_cert(self.certificate.der)

    @property
    def nonce_hex(self) -> str:
        return self.nonce.hex()


@dataclass(frozen=True)
class AttestationAnswer:
    """`GET /v1/attestation` parsed: fresh evidence, its collateral, the server certificate."""

    nonce: bytes
    quote: bytes
    collateral_doc: dict[str, Any] = dataclasses.field(repr=False)
    certificate: RaTlsCertificate

    def collateral(self) -> Collateral:
        """The collateral the server shipped (parsed only when it is the one used)."""
        from enclave_kms.attestation.collateral import load_collateral

        return load_collateral(json.dumps(self.collateral_doc).encode())

    @classmethod
    def parse(cls, doc: Any) -> AttestationAnswer:
        if not isinstance(doc, dict):
            raise FormatError("attestation answer: expected a JSON object", step="liveness")
        try:
            nonce = bytes.fromhex(str(doc["nonce"]))
            quote = base64.b64decode(str(doc["quote"]), validate=True)
            collateral_doc = doc["collateral"]
            pem = str(doc["certificate_pem"]).encode("ascii")
        except KeyError as exc:
            raise FormatError(
                f"attestation answer: missing {exc.args[0]}", step="liveness"
            ) from None
        except (ValueError, binascii.Error, UnicodeEncodeError):
            raise FormatError(
                "attestation answer: a field is not valid hex, base64 or ASCII", step="liveness"
            ) from None
        if not isinstance(collateral_doc, dict):
            raise CollateralError("attestation answer: collateral is not a JSON object")
        from enclave_kms.attestation.ratls import RaTlsCertificate

        return cls(nonce, quote, collateral_doc, RaTlsCertificate.parse(pem))


@dataclass(frozen=True)
class AttestedServer:
    """A server whose certificate evidence and liveness answer verified and met the policy."""

    url: str
    certificate: RaTlsCertificate
    verified: VerifiedQuote  # the certificate's evidence
    liveness: VerifiedQuote  # the nonce answer's evidence
    nonce: bytes = dataclasses.field(repr=False)

    @property
    def spki_sha256(self) -> bytes:
        """SHA-256 of the certificate's DER SubjectPublicKeyInfo: the pinned key."""
        return self.certificate.spki_sha256

    @property
    def certificate_pem(self) -> str:
        return ssl.DER_cert_to_PEM_cert(self.certificate.der)

    @property
    def expires_at(self) -> datetime:
        """When this attestation must be redone: certificate or collateral expiry."""
        return min(self.certificate.not_after, self.verified.collateral_expiry)

    @property
    def simulated(self) -> bool:
        return self.verified.simulated_root

    def summary(self) -> dict[str, Any]:
        """The verified identity as JSON-able values (what `enclave-kms attest` shows)."""
        from enclave_kms.sgx.report import ReportBody

        v = self.verified
        out: dict[str, Any] = {"url": self.url, "tee": v.tee}
        if isinstance(v.quote.body, ReportBody):
            out.update(
                mr_enclave=v.mr_enclave.hex(),
                mr_signer=v.mr_signer.hex(),
                isv_prod_id=v.isv_prod_id,
                isv_svn=v.isv_svn,
                debug=v.debug,
            )
        out.update(
            tcb_status=v.tcb_status.value,
            advisory_ids=list(v.advisory_ids),
            simulated=v.simulated_root,
            root_spki_sha256=v.root_spki_sha256,
            certificate_spki_sha256=self.spki_sha256.hex(),
            certificate_not_after=self.certificate.not_after.isoformat(),
            collateral_expiry=v.collateral_expiry.isoformat(),
            verified_at=v.verified_at.isoformat(),
            liveness_nonce=self.nonce.hex(),
            second_opinion=v.second_opinion,
        )
        return out

    def enclave_info(self) -> EnclaveInfo:
        """The tutorial's enclave-info JSON for the certificate's appraised evidence: QuoteHex
        is the quote, EnclaveHeldDataHex what its report_data[0:32] hashes (the DICE claims
        naming the key, or the DER SPKI for a legacy-only certificate)."""
        from enclave_kms.attestation.ratls import extract_evidence
        from enclave_kms.sgx.tutorial import EnclaveInfo

        held = extract_evidence(self.certificate).held_data
        return EnclaveInfo.from_report(self.verified.quote, held)


def begin(
    certificate_der: bytes, *, now: datetime, nonce: bytes | None = None
) -> PendingAttestation:
    """Step 1: the certificate carries evidence for its own key; choose a fresh nonce."""
    from enclave_kms.attestation.ratls import RaTlsCertificate, verify_ratls_certificate

    cert = RaTlsCertificate.parse(certificate_der)
    quote, _form = verify_ratls_certificate(cert.der, now=now)
    chosen = secrets.token_bytes(NONCE_BYTES) if nonce is None else nonce
    if not 16 <= len(chosen) <= 64:
        raise ConfigError("the liveness nonce must be 16 to 64 bytes")
    return PendingAttestation(cert, quote, chosen)


def liveness_report_data(spki_sha256: bytes, nonce: bytes) -> bytes:
    """What a fresh answer's report_data[0:32] must be: SHA-256(SHA-256(SPKI) ‖ nonce)."""
    return hashlib.sha256(spki_sha256 + nonce).digest()


def _identity(verified: VerifiedQuote) -> object:
    """Everything the enclave's report says except its report_data."""
    return dataclasses.replace(verified.quote.body, report_data=bytes(64))


def finish(
    pending: PendingAttestation,
    answer_doc: Any,
    settings: AttestationSettings,
    *,
    now: datetime,
    url: str,
) -> AttestedServer:
    """Steps 2-4: appraise the certificate's evidence under the policy, then liveness.

    Both the certificate and the liveness answer go through `appraise` (the one entry point):
    the certificate binds its own key, the answer must bind SHA-256(SPKI hash ‖ our nonce).
    """
    from enclave_kms.attestation.appraise import appraise
    from enclave_kms.attestation.evidence import EvidenceForm

    answer = AttestationAnswer.parse(answer_doc)
    collateral: Collateral | CollateralSource = (
        settings.collateral_source
        if settings.collateral_source is not None
        else answer.collateral()
    )
    root = settings.root
    cert = appraise(
        pending.certificate.der,
        settings.policy,
        expected_report_data=None,  # the certificate's own key binding is checked by form
        now=now,
        collateral=collateral,
        cache=settings.cache,
        trust_root=root,
        form=EvidenceForm.RATLS_CERTIFICATE,
        second_opinion=settings.second_opinion,
    )
    verified = cert.verified

    if not hmac.compare_digest(answer.certificate.spki_der, pending.certificate.spki_der):
        raise BindingError(
            "the attestation answer is about another TLS key than the one the server presented",
            step="liveness",
        )
    expected = liveness_report_data(pending.certificate.spki_sha256, pending.nonce)
    try:
        fresh = appraise(
            answer.quote,
            settings.policy,
            expected_report_data=expected,
            now=now,
            collateral=collateral,
            cache=settings.cache,
            trust_root=root,
            form=EvidenceForm.RAW_QUOTE,
            second_opinion=settings.second_opinion,
        ).verified
    except PolicyError as exc:
        # A genuine answer that fails the policy: say first whether it is even about us.
        if isinstance(exc.subject, VerifiedQuote):
            _check_liveness(exc.subject, verified, expected)
        raise
    _check_liveness(fresh, verified, expected)
    return AttestedServer(url, pending.certificate, verified, fresh, pending.nonce)


def _check_liveness(fresh: VerifiedQuote, verified: VerifiedQuote, expected: bytes) -> None:
    if not hmac.compare_digest(fresh.report_data[:32], expected):
        raise BindingError(
            "the attestation answer does not bind our nonce and the server's key "
            "(a stale or replayed answer)",
            step="liveness",
        )
    if _identity(fresh) != _identity(verified):
        raise BindingError(
            "the attestation answer comes from another enclave than the certificate's evidence",
            step="liveness",
        )
