"""The enclave's own appraisal of another replica's quote: `appraise` (the one entry point)
with collateral fetched through the host (signed, so it cannot be forged there), the trust
root of this platform, and `now` read here."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

from enclave_kms.attestation.appraise import appraise
from enclave_kms.attestation.cache import VerificationCache
from enclave_kms.attestation.collateral import load_collateral
from enclave_kms.attestation.evidence import EvidenceForm
from enclave_kms.attestation.policy import Policy
from enclave_kms.attestation.types import TrustRoot, VerifiedQuote


class QuoteAppraiser:
    def __init__(self, collateral_for: Callable[[bytes], bytes], trust_root: TrustRoot) -> None:
        self._collateral_for = collateral_for
        self.trust_root = trust_root
        self._cache = VerificationCache()

    @property
    def simulated_root(self) -> str | None:
        """The root's SPKI SHA-256 for policies, unless it is Intel's production root."""
        if self.trust_root.spki_sha256 == TrustRoot.intel_production().spki_sha256:
            return None
        return self.trust_root.spki_sha256

    def __call__(self, quote: bytes, policy: Policy, binding: bytes) -> VerifiedQuote:
        return appraise(
            quote,
            policy,
            expected_report_data=binding,
            now=datetime.now(UTC),
            collateral=load_collateral(self._collateral_for(quote)),
            cache=self._cache,
            trust_root=self.trust_root,
            form=EvidenceForm.RAW_QUOTE,
        ).verified
