"""`appraise`: the one entry point from evidence to a trust decision (DESIGN §8).

Every caller (SDK connect, `quote verify`, `policy from-server`, the secure channel's peer
check, key release) calls this and nothing below it, so no caller can forget a step:

1. the policy is a required argument and must pin an identity (or say `any_enclave_unsafe`);
2. the evidence is loaded in its *declared* form when one is given (a mismatch, or an OE claims
   buffer that does not parse, is refused, never downgraded to a raw quote);
3. the container binds the quote (RA-TLS: self-signature, validity at `now`, key binding;
   OE evidence / tutorial JSON: report_data[0:32] = SHA-256 of the held data);
4. collateral comes from what the caller passes: the collateral itself, or a source asked with
   the quote's own (TEE, FMSPC, PCK CA);
5. cryptographic verification at `now` with the second opinion where it applies
   (`verify.verify_quote`), remembering time-free checks in the caller's cache;
6. the policy over the verified result, with the caller's expected report_data.

The result is one `Appraisal`; failure is one typed error (`AttestationError` and subclasses,
`CollateralError` kinds, or `PolicyError` with every violation and the verified result).
Nothing here reads the clock, the disk or the network except through the source passed in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from cryptography import x509

from enclave_kms.attestation.cache import VerificationCache
from enclave_kms.attestation.evidence import Evidence, EvidenceForm, load_evidence
from enclave_kms.attestation.policy import Policy, require_identity, validate
from enclave_kms.attestation.types import Collateral, TrustRoot, VerifiedQuote
from enclave_kms.attestation.verify import verify_quote
from enclave_kms.errors import (
    CollateralUnavailableError,
    ConfigError,
    EnclaveKMSError,
    FormatError,
    PolicyError,
    UsageError,
)
from enclave_kms.sgx.pck import parse_pck_extension, pck_ca_kind
from enclave_kms.sgx.quote import Quote, parse_quote

if TYPE_CHECKING:  # sources.py does network I/O (httpx), which the enclave image excludes
    from enclave_kms.attestation.sources import CollateralSource


@dataclass(frozen=True)
class Appraisal:
    """Evidence that verified and met the policy: what was shown, and what it proved."""

    evidence: Evidence
    verified: VerifiedQuote
    policy: Policy

    @property
    def form(self) -> EvidenceForm:
        return self.evidence.form


def collateral_request(quote: bytes | Quote) -> tuple[str, bytes, str]:
    """(tee, fmspc, pck_ca) selecting the collateral of a quote, from its own PCK leaf."""
    parsed = quote if isinstance(quote, Quote) else parse_quote(quote)
    try:
        leaf = parsed.pck_certificates()[0]
    except (EnclaveKMSError, IndexError):
        raise CollateralUnavailableError(
            "the quote carries no PCK certificate, so its collateral cannot be looked up"
        ) from None
    ext = parse_pck_extension(leaf)
    return ("tdx" if parsed.is_tdx else "sgx"), ext.fmspc, pck_ca_kind(leaf)


def resolve_collateral(quote: Quote, collateral: Collateral | CollateralSource) -> Collateral:
    """The collateral passed in, or the source's answer for this quote's platform."""
    if isinstance(collateral, Collateral):
        return collateral
    get = getattr(collateral, "get_collateral", None)
    if get is None:
        raise UsageError("collateral must be a Collateral or a CollateralSource")
    tee, fmspc, pck_ca = collateral_request(quote)
    result = get(tee=tee, fmspc=fmspc, pck_ca=pck_ca)
    if not isinstance(result, Collateral):
        raise CollateralUnavailableError("the collateral source returned no collateral")
    return result


def appraise(
    evidence: bytes | Evidence,
    policy: Policy,
    *,
    expected_report_data: bytes | None,
    now: datetime,
    collateral: Collateral | CollateralSource,
    cache: VerificationCache,
    trust_root: TrustRoot | None = None,
    form: EvidenceForm | None = None,
    pck_chain: Sequence[x509.Certificate] | None = None,
    second_opinion: bool = True,
) -> Appraisal:
    """Verify and validate `evidence` at `now`; return the `Appraisal` or raise one typed error.

    `expected_report_data` is what the caller needs the evidence to bind (a prefix of
    REPORTDATA, e.g. the hash of a peer's channel key); pass None explicitly when the only
    binding is the evidence's own container (checked in every case). `trust_root` defaults to
    Intel's production root; any other root must also be named by key in the policy.
    `form` declares the evidence form: the bytes must be that form.
    """
    if not isinstance(policy, Policy):
        raise UsageError(f"appraise() needs a Policy, got {type(policy).__name__}")
    if not isinstance(cache, VerificationCache):
        raise UsageError("appraise() needs a VerificationCache (or VerificationCache.disabled())")
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise UsageError("appraise(): now must be a timezone-aware datetime")
    require_identity(policy)
    if expected_report_data is not None and not 1 <= len(expected_report_data) <= 64:
        raise ConfigError("expected_report_data must be 1 to 64 bytes")
    root = trust_root if trust_root is not None else TrustRoot.intel_production()
    if not isinstance(root, TrustRoot):
        raise UsageError("trust_root must be an enclave_kms.attestation.types.TrustRoot")

    loaded = evidence if isinstance(evidence, Evidence) else load_evidence(evidence, form=form)
    if form is not None and loaded.form is not form:
        raise FormatError(
            f"evidence was declared {form.value} but is {loaded.form.value}", step="evidence_form"
        )
    loaded.check_bindings(now=now)
    verified = verify_quote(
        loaded.quote_bytes,
        resolve_collateral(loaded.quote, collateral),
        trust_root=root,
        now=now,
        pck_chain=pck_chain,
        second_opinion=second_opinion,
        cache=cache,
    )
    try:
        validate(verified, policy, report_data=expected_report_data)
    except PolicyError as exc:
        raise PolicyError(exc.violations, subject=verified) from None
    return Appraisal(loaded, verified, policy)
