"""dcap-qvl (Phala's Rust verifier) as an independent second opinion on our verification.

Two independent implementations rarely share a bug, so wherever dcap-qvl can judge a quote we
accept it only if both accept it and agree on the TCB status and advisories, and we report a
rejection as a plain rejection only if dcap-qvl rejects too (DESIGN §8).

dcap-qvl cannot judge everything we accept, so it is consulted only where it applies:

* TCB Info v3 only (it cannot read v2);
* non-debug enclaves and TDs only (it refuses debug outright, a policy question for us);
* TDs with SEPT_VE_DISABLE set (it refuses others; for us `require_sept_ve_disable` decides);
* SGX quotes v3 and TDX quotes v4 (it refuses SGX v4; we refuse v5);
* quotes whose PCK chain is inside the quote (it has no way to be given an external chain);
* quotes we could parse: what applies depends on the quote's contents;
* collateral whose text parts are UTF-8 (its Python API takes them as `str`).

A TCB status of Revoked is an accepted verification for us (policy rejects it) while dcap-qvl
refuses it; both answers mean "revoked", so that is agreement.

Where we are deliberately stricter, a rejection surfaces as VerifierDisagreementError (still a
rejection, with both answers kept): dcap-qvl never reads the chain's own copy of the root (we
check its self-signature and validity, as Intel's QVL does) and ignores unparsable extra
certificates in collateral chains. Framing errors (FormatError: bad lengths, the v4 type-6
record type) are not cross-checked: dcap-qvl is lenient there, and applicability cannot be
decided on a quote we cannot parse.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime

import dcap_qvl
from cryptography.hazmat.primitives.serialization import Encoding

from enclave_kms.attestation.cache import VerificationCache
from enclave_kms.attestation.collateral import to_dcap_qvl
from enclave_kms.attestation.tdx_policy import TD_ATTRIBUTE_SEPT_VE_DISABLE
from enclave_kms.attestation.types import Collateral, TcbStatus, TrustRoot, VerifiedQuote
from enclave_kms.errors import (
    AttestationError,
    CollateralError,
    CollateralUnavailableError,
    CollateralWindowError,
    FormatError,
    VerifierDisagreementError,
)
from enclave_kms.sgx.quote import Quote, parse_quote
from enclave_kms.sgx.report import ReportBody
from enclave_kms.sgx.tdx import TdReport10, TdReport15


@dataclass(frozen=True)
class DcapQvlResult:
    """dcap-qvl's answer: accepted with a status and advisories, or rejected with its message."""

    accepted: bool
    status: str | None = None
    advisory_ids: tuple[str, ...] = ()
    error: str | None = None
    asked: bool = True  # False: the collateral could not even be handed to dcap-qvl

    def describe(self) -> str:
        if self.accepted:
            return f"{self.status} {list(self.advisory_ids)}"
        return f"rejected: {self.error}"


# Pure conversions of inputs that repeat for every quote of a platform are remembered in the
# caller's VerificationCache: dcap-qvl itself is still asked about every quote, with the same
# objects it would be given fresh (its collateral object is immutable).


def _dcap_collateral_of(collateral: Collateral, cache: VerificationCache) -> object:
    try:
        return cache.get("dcap_collateral", collateral, lambda: to_dcap_qvl(collateral))
    except TypeError:  # a field that is not bytes cannot key the cache: convert it directly
        return to_dcap_qvl(collateral)


def run_dcap_qvl(
    quote: bytes,
    collateral: Collateral,
    *,
    trust_root: TrustRoot,
    now: datetime,
    cache: VerificationCache | None = None,
) -> DcapQvlResult:
    """Ask dcap-qvl (pinned to the same root, at the same second) and normalise its answer."""
    cache = cache if cache is not None else VerificationCache.disabled()
    root_der = trust_root.certificate.public_bytes(Encoding.DER)
    try:
        theirs = _dcap_collateral_of(collateral, cache)
    except CollateralError:
        return DcapQvlResult(False, error="collateral text is not UTF-8", asked=False)
    try:
        report = dcap_qvl.verify_with_root_ca(bytes(quote), theirs, root_der, int(now.timestamp()))
    except ValueError as exc:
        return DcapQvlResult(False, error=str(exc).splitlines()[0][:200] if str(exc) else "error")
    return DcapQvlResult(True, str(report.status), tuple(str(a) for a in report.advisory_ids))


def _tcb_info_version(collateral: Collateral) -> int | None:
    """A lenient peek (the signature is not checked here: this only decides applicability)."""
    return _json_version(bytes(collateral.tcb_info))


def _json_version(data: bytes) -> int | None:
    """The top-level "version" of a JSON object."""
    try:
        doc = json.loads(data)
    except (ValueError, RecursionError):
        return None
    version = doc.get("version") if isinstance(doc, dict) else None
    return version if isinstance(version, int) and not isinstance(version, bool) else None


def not_applicable(quote: Quote, collateral: Collateral) -> str | None:
    """Why dcap-qvl cannot judge this quote, or None if it can."""
    body = quote.body
    if isinstance(body, ReportBody):
        if quote.version != 3:
            return f"dcap-qvl accepts SGX quotes v3 only, this is v{quote.version}"
        if body.attributes.debug:
            return "dcap-qvl refuses debug enclaves"
    elif isinstance(body, TdReport15) or quote.version != 4:
        return "dcap-qvl is consulted on TDX quotes v4 only"
    elif isinstance(body, TdReport10) and body.debug:
        return "dcap-qvl refuses debug TDs"
    elif isinstance(body, TdReport10) and not (
        int.from_bytes(body.td_attributes, "little") & TD_ATTRIBUTE_SEPT_VE_DISABLE
    ):
        # A policy choice (require_sept_ve_disable), not a verification result: Intel's QVL
        # has no such check, so dcap-qvl's refusal must not turn it into "invalid".
        return "dcap-qvl refuses TDs without SEPT_VE_DISABLE (a policy matter here)"
    version = _tcb_info_version(collateral)
    if version is not None and version != 3:
        return f"dcap-qvl cannot read TCB Info v{version}"
    return None


def confirm_acceptance(
    ours: VerifiedQuote,
    collateral: Collateral,
    *,
    trust_root: TrustRoot,
    now: datetime,
    cache: VerificationCache | None = None,
) -> str | None:
    """dcap-qvl's status if it agrees with our acceptance, None if it does not apply."""
    if not_applicable(ours.quote, collateral) is not None:
        return None
    theirs = run_dcap_qvl(
        ours.quote.to_bytes(), collateral, trust_root=trust_root, now=now, cache=cache
    )
    if not theirs.asked:
        return None  # only in parts we do not read (we refuse non-ASCII where we read)
    mine = f"{ours.tcb_status.value} {list(ours.advisory_ids)}"
    if not theirs.accepted:
        if ours.tcb_status == TcbStatus.REVOKED and "revoked" in (theirs.error or "").lower():
            return TcbStatus.REVOKED.value
        raise VerifierDisagreementError(
            f"we accept the quote ({mine}) but dcap-qvl rejects it: {theirs.error}",
            ours=mine,
            dcap_qvl=theirs.describe(),
        )
    if theirs.status != ours.tcb_status.value or sorted(theirs.advisory_ids) != list(
        ours.advisory_ids
    ):
        raise VerifierDisagreementError(
            f"we grade the quote {mine}, dcap-qvl grades it {theirs.describe()}",
            ours=mine,
            dcap_qvl=theirs.describe(),
        )
    return theirs.status


def confirm_rejection(
    quote: bytes | Quote,
    collateral: Collateral,
    *,
    trust_root: TrustRoot,
    now: datetime,
    ours: AttestationError,
    cache: VerificationCache | None = None,
) -> None:
    """Raise VerifierDisagreementError if dcap-qvl accepts what we rejected with `ours`."""
    if isinstance(ours, FormatError):
        return  # unparsable or deliberately unsupported: applicability cannot be decided
    if isinstance(ours, CollateralWindowError | CollateralUnavailableError):
        # Outside its window (dcap-qvl does not check a CRL's thisUpdate) or never obtained:
        # a collateral answer, not a judgement of the evidence for dcap-qvl to overturn.
        return
    try:
        parsed = quote if isinstance(quote, Quote) else parse_quote(quote)
    except FormatError:  # pragma: no cover - ours would have been a FormatError
        return
    if not_applicable(parsed, collateral) is not None:
        return
    raw = quote if isinstance(quote, bytes) else parsed.to_bytes()
    theirs = run_dcap_qvl(raw, collateral, trust_root=trust_root, now=now, cache=cache)
    if theirs.accepted:
        mine = f"rejected at {ours.step}: {ours.message}"
        raise VerifierDisagreementError(
            f"we reject the quote ({mine}) but dcap-qvl accepts it ({theirs.describe()})",
            ours=mine,
            dcap_qvl=theirs.describe(),
        )
