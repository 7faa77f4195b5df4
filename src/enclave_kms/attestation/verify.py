"""DCAP quote verification (Intel "SGX ECDSA Quote Library API", QVL), pure and offline.

`verify_quote` runs the steps below in order; the first failure raises a typed error whose
`step` names it, so an operator sees *what* failed, not just that something did:

==========================  ==================================================================
step                        check (error class)
==========================  ==================================================================
``parse``                   quote v3 SGX / v4 SGX or TDX, ECDSA P-256, Intel QE vendor
                            (FormatError, UnsupportedFormatError)
``pck_chain``               PCK leaf → PCK CA → root, valid at `now`, CA constraints, SGX
                            extension readable (CertificateChainError)
``trust_root``              the chain ends in the pinned root (UntrustedRootError,
                            SimulatedRootError)
``root_ca_crl``             root CA CRL signed by the root, current, PCK CA not revoked
                            (CollateralError, SignatureError, CollateralExpiredError,
                            RevokedError)
``pck_crl``                 PCK CRL issued and signed by the leaf's own issuer (Processor vs
                            Platform CA), current, leaf not revoked (same classes)
``tcb_info``                signing chain into the root, raw r||s ECDSA over the exact bytes,
                            issueDate <= now <= nextUpdate (CertificateChainError,
                            SignatureError, CollateralError, CollateralExpiredError)
``qe_identity``             the same for QE Identity, and its id matches the TEE
``qe_report_signature``     QE report signed by the PCK leaf key (SignatureError)
``qe_report_data``          QE report_data = SHA-256(attestation key || QE auth data) || 0^32
                            (BindingError)
``quote_signature``         header + body signed by the attestation key (SignatureError)
``qe_identity_match``       QE MRSIGNER/ISVPRODID/MISCSELECT/ATTRIBUTES, QE TCB level
                            (QeIdentityError, TcbLevelError)
``tcb_level``, ``tdx_module``  FMSPC/PCE-ID/TEE of TCB Info, platform (and TDX module) level
                            (TcbLevelError)
``second_opinion``          dcap-qvl disagrees (VerifierDisagreementError)
==========================  ==================================================================

The result: `tcb_status` is the platform status converged with the QE's (Intel's rules, see
`tcb.py`), `advisory_ids` the sorted union of every level used, `tcb_date` the earliest TCB date
of those levels (as Intel's supplemental data reports it), and `collateral_expiry` the earliest
nextUpdate / notAfter of everything checked.

`now` is an argument and is read once; nothing here touches the clock, disk or network.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from enclave_kms.attestation import second_opinion as dcap
from enclave_kms.attestation import x509chain
from enclave_kms.attestation.cache import VerificationCache
from enclave_kms.attestation.tcb import (
    converge,
    match_platform_tcb,
    match_qe_identity,
    merge_advisories,
)
from enclave_kms.attestation.tcb_info import EnclaveIdentity, TcbInfo
from enclave_kms.attestation.types import Collateral, TrustRoot, VerifiedQuote
from enclave_kms.errors import (
    AttestationError,
    BindingError,
    CertificateChainError,
    CollateralError,
    CollateralExpiredError,
    CollateralNotYetValidError,
    FormatError,
    SignatureError,
    UnsupportedFormatError,
    UsageError,
)
from enclave_kms.sgx.pck import PckExtension, parse_pck_extension, pck_ca_kind
from enclave_kms.sgx.quote import CERT_TYPE_PCK_CHAIN, Quote, parse_quote
from enclave_kms.sgx.report import ReportBody
from enclave_kms.sgx.tdx import TdReport10

INTEL_QE_VENDOR_ID = bytes.fromhex("939a7233f79c4ca9940a0db3957f0607")

# PPID cleartext / RSA-2048 / RSA-3072 encrypted, PCK leaf cleartext: the chain comes separately.
_PCK_IDENTIFYING_CERT_TYPES = (1, 2, 3, 4)

# Certificate roles by CN phrase, as Intel's QVL checks them (simulated names carry them too).
PCK_ROLE = "SGX PCK Certificate"
TCB_SIGNING_ROLE = "SGX TCB Signing"

STEP_PARSE = "parse"
STEP_PCK_CHAIN = "pck_chain"
STEP_ROOT_CRL = "root_ca_crl"
STEP_PCK_CRL = "pck_crl"
STEP_TCB_INFO = "tcb_info"
STEP_QE_IDENTITY = "qe_identity"
STEP_QE_REPORT_SIGNATURE = "qe_report_signature"
STEP_QE_REPORT_DATA = "qe_report_data"
STEP_QUOTE_SIGNATURE = "quote_signature"


# --------------------------------------------------------------------------- primitives


def _require_p256(key: object, *, what: str, step: str) -> ec.EllipticCurvePublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise SignatureError(f"{what}: signer key is not ECDSA P-256", step=step)
    return key


def verify_p256_signature(
    key: object, signature: bytes, data: bytes, *, what: str, step: str
) -> None:
    """Verify a raw 64-byte r||s ECDSA-P256-SHA256 signature (Intel's encoding everywhere)."""
    key = _require_p256(key, what=what, step=step)
    if len(signature) != 64:
        raise SignatureError(f"{what}: signature is {len(signature)} bytes, expected 64", step=step)
    r = int.from_bytes(signature[:32], "big")
    s = int.from_bytes(signature[32:], "big")
    try:
        key.verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        raise SignatureError(f"{what}: signature does not verify", step=step) from None


def attestation_public_key(raw: bytes) -> ec.EllipticCurvePublicKey:
    """The QE's attestation key from its 64-byte x||y encoding."""
    try:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), b"\x04" + raw)
    except ValueError:
        raise SignatureError(
            "attestation key is not a point on P-256", step=STEP_QUOTE_SIGNATURE
        ) from None


def _check_now(now: datetime) -> None:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() is None:
        raise UsageError("now must be a timezone-aware datetime")


# --------------------------------------------------------------------------- cached checks
#
# Pure checks over immutable inputs, remembered in the caller's `VerificationCache` (never in
# module state): every quote of a platform shares the same collateral, chains and QE report,
# so re-verifying costs only the quote's own signature and grading. Keys are the exact input
# bytes and never contain `now`; every validity window is re-checked at `now` on each use.


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(Encoding.DER)


def _pem_chain(
    cache: VerificationCache, pem: bytes, what: str, step: str
) -> tuple[x509.Certificate, ...]:
    return cache.get(
        "pem_chain",
        bytes(pem),
        lambda: tuple(x509chain.load_pem_chain(pem, what=what, step=step)),
    )


def _chain(
    cache: VerificationCache,
    certs: tuple[x509.Certificate, ...],
    trust_root: TrustRoot,
    now: datetime,
    *,
    what: str,
    step: str,
) -> x509chain.VerifiedChain:
    key = (tuple(_der(c) for c in certs), trust_root.spki_sha256, what)
    chain = cache.get(
        "chain",
        key,
        lambda: x509chain.build_chain(certs, trust_root, what=what, step=step),
    )
    x509chain.check_chain_validity(chain, now, what=what, step=step)
    return chain


def _crl(
    cache: VerificationCache,
    der: bytes,
    issuer: x509.Certificate,
    now: datetime,
    *,
    what: str,
    step: str,
) -> tuple[x509.CertificateRevocationList, datetime]:
    def check() -> tuple[x509.CertificateRevocationList, datetime, datetime]:
        crl = x509chain.load_crl(der, what=what, step=step)
        this_update, next_update = x509chain.check_crl(crl, issuer, what=what, step=step)
        return crl, this_update, next_update

    crl, this_update, next_update = cache.get("crl", (bytes(der), _der(issuer), what), check)
    x509chain.check_crl_window(this_update, next_update, now, what=what, step=step)
    return crl, next_update


def _parse_tcb_info(cache: VerificationCache, data: bytes) -> TcbInfo:
    def parse() -> TcbInfo:
        try:
            return TcbInfo.parse(data)
        except FormatError as exc:
            raise CollateralError(f"TCB Info: {exc.message}", step=STEP_TCB_INFO) from None

    return cache.get("tcb_info", bytes(data), parse)


def _parse_qe_identity(cache: VerificationCache, data: bytes) -> EnclaveIdentity:
    def parse() -> EnclaveIdentity:
        try:
            return EnclaveIdentity.parse(data)
        except FormatError as exc:
            raise CollateralError(f"QE Identity: {exc.message}", step=STEP_QE_IDENTITY) from None

    return cache.get("qe_identity", bytes(data), parse)


def verify_p256_signature_cached(
    cache: VerificationCache,
    key: object,
    signature: bytes,
    data: bytes,
    *,
    what: str,
    step: str,
) -> None:
    """`verify_p256_signature` for bytes that repeat across quotes: the TCB Info and QE
    Identity (same for every quote of a platform until the next refresh) and the QE report
    (same until the quoting enclave restarts). Keyed by the full uncompressed key point,
    signature and data, so one changed byte is a fresh check."""
    p256 = _require_p256(key, what=what, step=step)
    point = p256.public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
    cache.get(
        "p256_signature",
        (point, bytes(signature), bytes(data)),
        lambda: verify_p256_signature(p256, signature, data, what=what, step=step),
    )


def _pck_extension(cache: VerificationCache, leaf: x509.Certificate) -> tuple[PckExtension, str]:
    def parse() -> tuple[PckExtension, str]:
        try:
            return parse_pck_extension(leaf), pck_ca_kind(leaf)
        except FormatError as exc:
            raise CertificateChainError(exc.message, step=STEP_PCK_CHAIN) from None

    return cache.get("pck_extension", _der(leaf), parse)


# --------------------------------------------------------------------------- steps


def parse_and_check_quote(quote: bytes | Quote) -> Quote:
    """Parse (if needed) and check the header fields a verifier depends on."""
    parsed = quote if isinstance(quote, Quote) else parse_quote(quote)
    header = parsed.header
    if header.version not in (3, 4, 5):
        raise UnsupportedFormatError(f"quote version {header.version} is not supported")
    if header.qe_vendor_id != INTEL_QE_VENDOR_ID:
        raise UnsupportedFormatError(
            f"QE vendor {header.qe_vendor_id.hex()} is not Intel's quoting enclave"
        )
    return parsed


def _pck_certificates(
    quote: Quote, pck_chain: Sequence[x509.Certificate] | None
) -> list[x509.Certificate]:
    """The PCK chain: from type-5 certification data, or given by the caller for types 1-4.

    Types 1-4 identify the platform (PPID / PCK leaf) but carry no chain; nothing signs them,
    so with an explicit chain their contents are not used (as in Intel's QVL).
    """
    cert_data = quote.certification_data
    if cert_data.cert_type == CERT_TYPE_PCK_CHAIN:
        try:
            certs = cert_data.certificates()
        except FormatError as exc:
            raise CertificateChainError(exc.message, step=STEP_PCK_CHAIN) from None
        if pck_chain is not None and (not pck_chain or pck_chain[0] != certs[0]):
            raise CertificateChainError(
                "the PCK chain given does not start with the quote's own PCK certificate",
                step=STEP_PCK_CHAIN,
            )
        return list(pck_chain) if pck_chain is not None else certs
    if cert_data.cert_type not in _PCK_IDENTIFYING_CERT_TYPES:
        raise UnsupportedFormatError(
            f"certification data type {cert_data.cert_type} does not identify a PCK certificate"
        )
    if pck_chain is None:
        raise UnsupportedFormatError(
            f"certification data type {cert_data.cert_type} does not carry the PCK chain: "
            "pass pck_chain explicitly"
        )
    return list(pck_chain)


def _verify_signed_json(
    cache: VerificationCache,
    body: bytes,
    signature: bytes,
    issuer_chain: bytes,
    *,
    trust_root: TrustRoot,
    root_crl: x509.CertificateRevocationList,
    now: datetime,
    what: str,
    step: str,
) -> x509chain.VerifiedChain:
    """Signing chain into the root (not revoked), then the raw signature over the exact bytes."""
    certs = _pem_chain(cache, issuer_chain, f"{what} issuer chain", step)
    chain = _chain(cache, certs, trust_root, now, what=f"{what} signing chain", step=step)
    for cert in chain.issued_by_root:
        x509chain.check_not_revoked(root_crl, cert, what="the root CA CRL", step=step)
    x509chain.require_role(chain.leaf, TCB_SIGNING_ROLE, what=f"{what} signer", step=step)
    key = x509chain.public_key(chain.leaf, what=f"{what} signing certificate", step=step)
    verify_p256_signature_cached(cache, key, signature, body, what=what, step=step)
    return chain


def _check_window(
    issue_date: datetime, next_update: datetime, now: datetime, *, what: str, step: str
) -> None:
    if now < issue_date:
        raise CollateralNotYetValidError(
            f"{what} is not yet valid at {now.isoformat()} (issueDate {issue_date.isoformat()})",
            step=step,
        )
    if now > next_update:  # nextUpdate itself is still valid, as in Intel's QVL and dcap-qvl
        raise CollateralExpiredError(
            f"{what} expired at {next_update.isoformat()} (checked at {now.isoformat()})",
            step=step,
        )


def _verify_pck_crl(
    cache: VerificationCache,
    collateral: Collateral,
    pck: x509chain.VerifiedChain,
    now: datetime,
) -> datetime:
    """The PCK CRL must be the one of the leaf's own issuer (Processor vs Platform CA).

    It is checked against that CA as found in the PCK chain, which is already verified into
    the pinned root; `pck_crl_issuer_chain` only repeats that CA and is not consulted (as in
    dcap-qvl), so it can neither add trust nor cause a spurious rejection.
    """
    crl, next_update = _crl(
        cache, collateral.pck_crl, pck.leaf_issuer, now, what="PCK CRL", step=STEP_PCK_CRL
    )
    x509chain.check_not_revoked(crl, pck.leaf, what="the PCK CRL", step=STEP_PCK_CRL)
    return next_update


def _verify_qe_report(cache: VerificationCache, quote: Quote, pck_leaf: x509.Certificate) -> None:
    sig = quote.signature_data
    verify_p256_signature_cached(
        cache,
        x509chain.public_key(pck_leaf, what="PCK certificate", step=STEP_QE_REPORT_SIGNATURE),
        sig.qe_report_signature,
        sig.qe_report.to_bytes(),
        what="QE report",
        step=STEP_QE_REPORT_SIGNATURE,
    )
    expected = hashlib.sha256(sig.attestation_key + sig.qe_auth_data).digest() + bytes(32)
    if sig.qe_report.report_data != expected:
        raise BindingError(
            "QE report data does not bind the attestation key and QE auth data",
            step=STEP_QE_REPORT_DATA,
        )


def _verify_quote_signature(quote: Quote) -> None:
    sig = quote.signature_data
    verify_p256_signature(
        attestation_public_key(sig.attestation_key),
        sig.signature,
        quote.signed_bytes,
        what="quote",
        step=STEP_QUOTE_SIGNATURE,
    )


def verify_quote_only(
    quote: bytes | Quote,
    collateral: Collateral,
    *,
    trust_root: TrustRoot,
    now: datetime,
    pck_chain: Sequence[x509.Certificate] | None = None,
    cache: VerificationCache | None = None,
) -> VerifiedQuote:
    """Our verification alone, without the dcap-qvl second opinion (see `verify_quote`)."""
    _check_now(now)
    cache = cache if cache is not None else VerificationCache.disabled()
    parsed = parse_and_check_quote(quote)
    tee = "TDX" if parsed.is_tdx else "SGX"

    # PCK chain into the pinned root, and the CRLs that cover it.
    pck_certs = tuple(_pck_certificates(parsed, pck_chain))
    pck = _chain(cache, pck_certs, trust_root, now, what="PCK", step=STEP_PCK_CHAIN)
    if len(pck.certificates) < 3:
        raise CertificateChainError("PCK chain must be leaf, PCK CA and root", step=STEP_PCK_CHAIN)
    x509chain.require_role(pck.leaf, PCK_ROLE, what="PCK leaf", step=STEP_PCK_CHAIN)
    pck_ext, pck_ca = _pck_extension(cache, pck.leaf)
    root_crl, root_crl_next = _crl(
        cache, collateral.root_ca_crl, pck.root, now, what="root CA CRL", step=STEP_ROOT_CRL
    )
    for cert in (pck.root, *pck.issued_by_root):
        x509chain.check_not_revoked(root_crl, cert, what="the root CA CRL", step=STEP_ROOT_CRL)
    pck_crl_expiry = _verify_pck_crl(cache, collateral, pck, now)

    # TCB Info and QE Identity: signed by the TCB signing key, current at `now`.
    tcb_chain = _verify_signed_json(
        cache,
        collateral.tcb_info,
        collateral.tcb_info_signature,
        collateral.tcb_info_issuer_chain,
        trust_root=trust_root,
        root_crl=root_crl,
        now=now,
        what="TCB Info",
        step=STEP_TCB_INFO,
    )
    tcb_info = _parse_tcb_info(cache, collateral.tcb_info)
    _check_window(
        tcb_info.issue_date, tcb_info.next_update, now, what="TCB Info", step=STEP_TCB_INFO
    )
    qe_chain = _verify_signed_json(
        cache,
        collateral.qe_identity,
        collateral.qe_identity_signature,
        collateral.qe_identity_issuer_chain,
        trust_root=trust_root,
        root_crl=root_crl,
        now=now,
        what="QE Identity",
        step=STEP_QE_IDENTITY,
    )
    qe_identity = _parse_qe_identity(cache, collateral.qe_identity)
    _check_window(
        qe_identity.issue_date,
        qe_identity.next_update,
        now,
        what="QE Identity",
        step=STEP_QE_IDENTITY,
    )
    expected_qe = "TD_QE" if parsed.is_tdx else "QE"
    if qe_identity.id != expected_qe:
        raise CollateralError(
            f"QE Identity is for {qe_identity.id}, a {tee} quote needs {expected_qe}",
            step=STEP_QE_IDENTITY,
        )

    # The quote itself: QE report by the PCK key, its binding, the quote by the attestation key.
    _verify_qe_report(cache, parsed, pck.leaf)
    _verify_quote_signature(parsed)

    # Grading: QE identity and TCB levels.
    qe_level = match_qe_identity(qe_identity, parsed.signature_data.qe_report)
    td = parsed.body if isinstance(parsed.body, TdReport10) else None
    if td is None and not isinstance(parsed.body, ReportBody):  # pragma: no cover - parser
        raise FormatError("quote body is neither SGX nor TDX")
    platform = match_platform_tcb(tcb_info, pck_ext, td=td)

    expiry = min(
        tcb_info.next_update,
        qe_identity.next_update,
        root_crl_next,
        pck_crl_expiry,
        pck.not_after,
        tcb_chain.not_after,
        qe_chain.not_after,
    )
    return VerifiedQuote(
        quote=parsed,
        tee=tee,
        tcb_status=converge(platform.status, qe_level.tcb_status),
        platform_tcb_status=platform.status,
        qe_tcb_status=qe_level.tcb_status,
        advisory_ids=merge_advisories(platform.advisory_ids, qe_level.advisory_ids),
        fmspc=pck_ext.fmspc,
        pck_ca=pck_ca,
        tcb_date=min(platform.tcb_date, qe_level.tcb_date),
        collateral_expiry=expiry,
        verified_at=now,
        root_spki_sha256=trust_root.spki_sha256,
        simulated_root=trust_root.simulated,
    )


def verify_quote(
    quote: bytes | Quote,
    collateral: Collateral,
    *,
    trust_root: TrustRoot,
    now: datetime,
    pck_chain: Sequence[x509.Certificate] | None = None,
    second_opinion: bool = True,
    cache: VerificationCache | None = None,
) -> VerifiedQuote:
    """Verify a DCAP quote against collateral at `now`; raise a typed AttestationError if not.

    `pck_chain` (leaf first) is for quotes whose certification data does not carry the chain
    (types 1-4); with a type-5 quote it must start with the quote's own PCK certificate.
    With `second_opinion`, dcap-qvl re-verifies wherever it can (TCB Info v3, non-debug, SGX v3
    / TDX v4, chain in the quote): both must accept and agree on status and advisories, or both
    must reject. A Revoked TCB is a successful verification here (`tcb_status` says so and
    policy rejects it), as in Intel's QVL where it is a verification result, not an error.
    `cache` remembers the time-free checks across calls (see `cache.py`); without one,
    nothing is remembered. Callers normally use `appraise`, which also applies the policy.
    """
    cache = cache if cache is not None else VerificationCache.disabled()
    try:
        ours = verify_quote_only(
            quote, collateral, trust_root=trust_root, now=now, pck_chain=pck_chain, cache=cache
        )
    except AttestationError as exc:
        if second_opinion and pck_chain is None:
            dcap.confirm_rejection(
                quote, collateral, trust_root=trust_root, now=now, ours=exc, cache=cache
            )
        raise
    if not second_opinion or pck_chain is not None:
        return ours
    theirs = dcap.confirm_acceptance(ours, collateral, trust_root=trust_root, now=now, cache=cache)
    return ours if theirs is None else replace(ours, second_opinion=theirs)
