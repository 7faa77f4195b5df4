"""Certificate chains and CRLs of Intel's SGX PKI, checked with `cryptography` at an injected time.

Why our own walk rather than a generic path builder: the PKI is tiny and fixed (root → PCK
Processor/Platform CA → PCK leaf; root → TCB Signing), the chains arrive in order, and the
questions Intel's QVL asks are exactly these: is every certificate directly issued by the next
one, valid at `now`, with CA constraints and key usage that allow what it did, and does the chain
end in *the* pinned root? A generic web-PKI policy would add rules (SAN, EKU) Intel does not use.

**The trust root is pinned by public key, never by name.** Intel's test root carries the same
subject DN as the production root; only the key tells them apart.

**The chain's own copy of the root.** Quotes and issuer chains usually end with a copy of the
root certificate. As in Intel's QVL, the copy must carry the pinned key, be validly self-signed
by it and be valid at `now`; every issuance below it is then checked against the *pinned*
certificate. So the copy may differ from the pinned certificate only in bytes that do not
matter (serial, validity, extensions of a re-issue Intel signed with the same key). A chain may
also stop below the root: the copy adds nothing the pin does not already provide.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from enclave_kms.attestation.types import TrustRoot, is_simulated_root
from enclave_kms.errors import (
    CertificateChainError,
    CollateralError,
    CollateralExpiredError,
    CollateralNotYetValidError,
    RevokedError,
    SignatureError,
    SimulatedRootError,
    UntrustedRootError,
)
from enclave_kms.sgx.pck import X509_ERRORS

# Intel chains have 2 or 3 certificates; anything much longer is not Intel's PKI.
MAX_CHAIN_LENGTH = 5

# Everything `cryptography` raises on bad input (some fields are decoded lazily, on access).
CRYPTO_ERRORS: tuple[type[Exception], ...] = (*X509_ERRORS, InvalidSignature)


def common_name(name: x509.Name) -> str:
    """The CN of a name for messages and CA classification ("" if absent or malformed)."""
    try:
        attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    except CRYPTO_ERRORS:  # pragma: no cover - defensive: malformed names
        return ""
    value = attrs[0].value if attrs else ""
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def spki_der(cert: x509.Certificate, *, what: str, step: str) -> bytes:
    """DER SubjectPublicKeyInfo: the identity we compare roots by."""
    try:
        return cert.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    except CRYPTO_ERRORS as exc:
        raise CertificateChainError(f"{what}: unusable public key ({exc})", step=step) from None


def public_key(cert: x509.Certificate, *, what: str, step: str) -> object:
    """The certificate's public key (decoded lazily by cryptography, so it can fail here)."""
    try:
        return cert.public_key()
    except CRYPTO_ERRORS as exc:
        raise CertificateChainError(f"{what}: unusable public key ({exc})", step=step) from None


def require_role(cert: x509.Certificate, phrase: str, *, what: str, step: str) -> None:
    """The certificate's CN must contain `phrase`, as Intel's QVL checks the role of a signer
    ("SGX PCK Certificate", "SGX TCB Signing"): a key certified for one role must not be
    accepted in another. Simulated certificates use the same phrases."""
    try:
        cn = common_name(cert.subject)
    except CRYPTO_ERRORS as exc:
        raise CertificateChainError(f"{what}: unreadable subject ({exc})", step=step) from None
    if phrase not in cn:
        raise CertificateChainError(
            f"{what} is {describe(cert)}, expected a '{phrase}' certificate", step=step
        )


def load_pem_chain(pem: bytes, *, what: str, step: str) -> list[x509.Certificate]:
    """Parse a PEM chain (signer first, root last) from collateral into certificates.

    PEM is ASCII by definition; anything else is refused rather than skipped as junk.
    """
    if not bytes(pem).isascii():
        raise CollateralError(f"{what}: not ASCII PEM text", step=step)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            certs = x509.load_pem_x509_certificates(bytes(pem))
    except CRYPTO_ERRORS as exc:
        raise CollateralError(f"{what}: not a PEM certificate chain ({exc})", step=step) from None
    if not certs:
        raise CollateralError(f"{what}: no certificate in the chain", step=step)
    return certs


@dataclass(frozen=True)
class VerifiedChain:
    """A chain that was checked to end in the pinned root: leaf first, pinned root last.

    The chain's own copy of the root (if any) is replaced by the pinned certificate.
    """

    certificates: tuple[x509.Certificate, ...]
    # The chain's own copy of the root, when it carried one (its validity is checked too).
    root_copy: x509.Certificate | None = None

    @property
    def leaf(self) -> x509.Certificate:
        return self.certificates[0]

    @property
    def leaf_issuer(self) -> x509.Certificate:
        """The certificate that issued the leaf (the root itself for a two-element chain)."""
        return self.certificates[1]

    @property
    def root(self) -> x509.Certificate:
        return self.certificates[-1]

    @property
    def issued_by_root(self) -> tuple[x509.Certificate, ...]:
        """Certificates the root signed directly: these are what the root CA CRL covers."""
        return (self.certificates[-2],) if len(self.certificates) >= 2 else ()

    @property
    def not_after(self) -> datetime:
        return min(c.not_valid_after_utc for c in self.certificates)


def _check_validity(cert: x509.Certificate, now: datetime, *, what: str, step: str) -> None:
    try:
        start, end = cert.not_valid_before_utc, cert.not_valid_after_utc
    except CRYPTO_ERRORS as exc:  # pragma: no cover - cryptography parses times at load
        raise CertificateChainError(f"{what}: unreadable validity ({exc})", step=step) from None
    if now < start:
        raise CertificateChainError(
            f"{what} is not yet valid at {now.isoformat()} (notBefore {start.isoformat()})",
            step=step,
        )
    if now > end:
        raise CertificateChainError(
            f"{what} expired at {end.isoformat()} (checked at {now.isoformat()})", step=step
        )


def _extension(
    cert: x509.Certificate, kind: type[x509.ExtensionType], *, what: str, step: str
) -> x509.ExtensionType | None:
    try:
        return cert.extensions.get_extension_for_class(kind).value
    except x509.ExtensionNotFound:
        return None
    except CRYPTO_ERRORS as exc:
        raise CertificateChainError(f"{what}: malformed extensions ({exc})", step=step) from None


def _check_ca(cert: x509.Certificate, cas_below: int, *, what: str, step: str) -> None:
    """An issuer must be a CA, allowed to sign certificates, with room in its path length."""
    bc = _extension(cert, x509.BasicConstraints, what=what, step=step)
    if not isinstance(bc, x509.BasicConstraints) or not bc.ca:
        raise CertificateChainError(f"{what} is not a CA (basicConstraints)", step=step)
    if bc.path_length is not None and cas_below > bc.path_length:
        raise CertificateChainError(
            f"{what}: path length {bc.path_length} exceeded ({cas_below} CAs below it)", step=step
        )
    ku = _extension(cert, x509.KeyUsage, what=what, step=step)
    if isinstance(ku, x509.KeyUsage) and not ku.key_cert_sign:
        raise CertificateChainError(f"{what}: key usage does not allow keyCertSign", step=step)


def _check_leaf(cert: x509.Certificate, *, what: str, step: str) -> None:
    """The leaf signs data (QE reports, TCB Info), never certificates."""
    bc = _extension(cert, x509.BasicConstraints, what=what, step=step)
    if isinstance(bc, x509.BasicConstraints) and bc.ca:
        raise CertificateChainError(
            f"{what} is a CA, expected an end-entity certificate", step=step
        )
    ku = _extension(cert, x509.KeyUsage, what=what, step=step)
    if isinstance(ku, x509.KeyUsage) and not ku.digital_signature:
        raise CertificateChainError(f"{what}: key usage does not allow digitalSignature", step=step)


def describe(cert: x509.Certificate, fallback: str = "unnamed") -> str:
    """The certificate's CN quoted, for messages (never raises)."""
    try:
        cn = common_name(cert.subject)
    except CRYPTO_ERRORS:
        cn = ""
    return f"'{cn}'" if cn else fallback


def _reject_foreign_root(last: x509.Certificate, *, what: str) -> None:
    """The chain ends somewhere else than the pinned root: say whether it is a simulated one."""
    try:
        simulated = is_simulated_root(last)
    except CRYPTO_ERRORS:  # pragma: no cover - defensive: unprintable subject
        simulated = False
    if simulated:
        raise SimulatedRootError(
            f"{what}: the quote chains to a simulated root ({describe(last, 'unnamed')}), "
            "which is not the trusted root"
        )
    raise UntrustedRootError(
        f"{what}: chain ends in {describe(last, 'an unnamed certificate')}, whose key is not "
        "the pinned trust root"
    )


def verify_chain(
    certs: Sequence[x509.Certificate],
    trust_root: TrustRoot,
    now: datetime,
    *,
    what: str,
    step: str,
    leaf_is_ca: bool = False,
) -> VerifiedChain:
    """Check that `certs` (leaf first) is a valid chain into the pinned root at `now`.

    The leaf is an end-entity signer, or with `leaf_is_ca` a CA (a CRL issuer chain).
    Raises CertificateChainError (does not build, bad signature, outside validity, constraints,
    unreadable field), UntrustedRootError / SimulatedRootError (ends in another root).
    This is `build_chain` (time-free, cacheable) followed by `check_chain_validity` at `now`.
    """
    chain = build_chain(certs, trust_root, what=what, step=step, leaf_is_ca=leaf_is_ca)
    check_chain_validity(chain, now, what=what, step=step)
    return chain


def build_chain(
    certs: Sequence[x509.Certificate],
    trust_root: TrustRoot,
    *,
    what: str,
    step: str,
    leaf_is_ca: bool = False,
) -> VerifiedChain:
    """Everything about a chain that does not depend on the time: encodings, issuance
    signatures, CA constraints, the root pin. The result may be cached; validity may not."""
    try:
        return _build_chain(certs, trust_root, what=what, step=step, leaf_is_ca=leaf_is_ca)
    except CRYPTO_ERRORS as exc:  # cryptography decodes some fields lazily
        raise CertificateChainError(f"{what}: unreadable certificate ({exc})", step=step) from None


def check_chain_validity(chain: VerifiedChain, now: datetime, *, what: str, step: str) -> None:
    """Every certificate of a built chain (and the chain's own root copy) is valid at `now`."""
    if chain.root_copy is not None:
        label = f"{what}: the chain's root certificate"
        _check_validity(chain.root_copy, now, what=label, step=step)
    for i, cert in enumerate(chain.certificates[:-1]):
        _check_validity(cert, now, what=f"{what} certificate {i}", step=step)
    _check_validity(chain.root, now, what="the trust root", step="trust_root")


def _build_chain(
    certs: Sequence[x509.Certificate],
    trust_root: TrustRoot,
    *,
    what: str,
    step: str,
    leaf_is_ca: bool = False,
) -> VerifiedChain:
    chain = list(certs)
    if not chain:
        raise CertificateChainError(f"{what}: empty certificate chain", step=step)
    if len(chain) > MAX_CHAIN_LENGTH:
        raise CertificateChainError(f"{what}: {len(chain)} certificates is too long", step=step)
    pinned = trust_root.certificate
    pinned_key = spki_der(pinned, what="trust root", step="trust_root")
    last = chain[-1]
    root_copy = None
    if spki_der(last, what=f"{what} root", step=step) == pinned_key:
        # The chain carries its own copy of the root: as Intel's QVL does, it must be a valid
        # self-signature of the pinned key, current at `now`; below it, every issuance is
        # checked against the pinned certificate itself.
        require_strict_signature(last.public_bytes(Encoding.DER), what=f"{what} root", step=step)
        try:
            last.verify_directly_issued_by(last)
        except CRYPTO_ERRORS as exc:
            raise CertificateChainError(
                f"{what}: the chain's root certificate is not validly self-signed ({exc})",
                step=step,
            ) from None
        root_copy = last
        body = chain[:-1]
    else:
        body = chain
        # A self-issued certificate with another key is another root (Intel's test root has
        # the production DN); a non-root top must name the pinned root as its issuer.
        if last.issuer == last.subject or last.issuer != pinned.subject:
            _reject_foreign_root(last, what=what)
    if not body:
        raise CertificateChainError(f"{what}: the chain holds only the root", step=step)
    full = [*body, pinned]
    for i, cert in enumerate(body):
        issuer = full[i + 1]
        label = f"{what} certificate {i}"
        require_strict_signature(cert.public_bytes(Encoding.DER), what=label, step=step)
        try:
            cert.verify_directly_issued_by(issuer)
        except CRYPTO_ERRORS as exc:
            detail = str(exc) or type(exc).__name__
            raise CertificateChainError(
                f"{label} ({describe(cert, 'unnamed')}) is not issued by "
                f"{describe(issuer, 'its successor')}: {detail}",
                step=step,
            ) from None
        if i == 0 and leaf_is_ca:
            _check_ca(cert, 0, what=label, step=step)
        elif i == 0:
            _check_leaf(cert, what=label, step=step)
        if i + 1 < len(body):
            _check_ca(issuer, i, what=f"{what} certificate {i + 1}", step=step)
    _check_ca(pinned, len(body) - 1, what="the trust root", step="trust_root")
    return VerifiedChain(tuple(full), root_copy)


# --------------------------------------------------------------------------- strict DER


def _der_header(data: bytes, offset: int, *, what: str) -> tuple[int, int, int]:
    """(tag, content start, content end) of the DER element at `offset`; DER rules only:
    one-byte tags, definite minimal lengths (what OpenSSL's X.509 decoder enforces)."""
    if offset + 2 > len(data):
        raise ValueError(f"{what}: truncated DER")
    tag, first = data[offset], data[offset + 1]
    pos = offset + 2
    if tag & 0x1F == 0x1F:
        raise ValueError(f"{what}: multi-byte DER tag")
    if first < 0x80:
        length = first
    else:
        count = first & 0x7F
        if count == 0 or count > 4 or pos + count > len(data):
            raise ValueError(f"{what}: indefinite or oversized DER length")
        length = int.from_bytes(data[pos : pos + count], "big")
        if data[pos] == 0 or length < 0x80:
            raise ValueError(f"{what}: non-minimal DER length")
        pos += count
    if pos + length > len(data):
        raise ValueError(f"{what}: DER length beyond the data")
    return tag, pos, pos + length


def require_strict_signature(der: bytes, *, what: str, step: str) -> None:
    """A signed object (certificate or CRL: SEQUENCE { tbs, algorithm, BIT STRING }) must be
    one DER element whose signature BIT STRING declares no unused bits. OpenSSL, Intel's QVL and
    dcap-qvl refuse such signatures; `cryptography`'s `verify_directly_issued_by` and
    `is_signature_valid` alone do not, so we check the encoding ourselves."""
    try:
        tag, start, end = _der_header(der, 0, what=what)
        if tag != 0x30 or end != len(der):
            raise ValueError(f"{what}: not exactly one DER SEQUENCE")
        pos = start
        for _ in range(2):  # tbs, signatureAlgorithm
            _t, _s, pos = _der_header(der, pos, what=what)
        tag, sig_start, sig_end = _der_header(der, pos, what=what)
        if tag != 0x03 or sig_end != end or sig_start == sig_end:
            raise ValueError(f"{what}: signature is not the last element, a BIT STRING")
        if der[sig_start] != 0:
            raise ValueError(f"{what}: signature BIT STRING declares {der[sig_start]} unused bits")
    except ValueError as exc:
        raise SignatureError(f"{exc} (not strict DER)", step=step) from None


# --------------------------------------------------------------------------- CRLs


def load_crl(der: bytes, *, what: str, step: str) -> x509.CertificateRevocationList:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return x509.load_der_x509_crl(bytes(der))
    except CRYPTO_ERRORS as exc:
        raise CollateralError(f"{what}: not a DER CRL ({exc})", step=step) from None


def verify_crl(
    crl: x509.CertificateRevocationList,
    issuer: x509.Certificate,
    now: datetime,
    *,
    what: str,
    step: str,
) -> datetime:
    """Check a CRL is `issuer`'s, signed by it and current at `now`; return its nextUpdate."""
    this_update, next_update = check_crl(crl, issuer, what=what, step=step)
    check_crl_window(this_update, next_update, now, what=what, step=step)
    return next_update


def check_crl(
    crl: x509.CertificateRevocationList,
    issuer: x509.Certificate,
    *,
    what: str,
    step: str,
) -> tuple[datetime, datetime]:
    """The time-free part of `verify_crl` (cacheable): issuer, strict DER, signature, cRLSign.
    Returns (thisUpdate, nextUpdate)."""
    try:
        return _check_crl(crl, issuer, what=what, step=step)
    except CRYPTO_ERRORS as exc:  # cryptography decodes some fields lazily
        raise CollateralError(f"{what}: unreadable CRL ({exc})", step=step) from None


def _check_crl(
    crl: x509.CertificateRevocationList,
    issuer: x509.Certificate,
    *,
    what: str,
    step: str,
) -> tuple[datetime, datetime]:
    if crl.issuer != issuer.subject:
        raise CollateralError(
            f"{what} is issued by '{common_name(crl.issuer)}', expected "
            f"'{common_name(issuer.subject)}'",
            step=step,
        )
    require_strict_signature(crl.public_bytes(Encoding.DER), what=what, step=step)
    try:
        valid = crl.is_signature_valid(issuer.public_key())  # type: ignore[arg-type]
    except CRYPTO_ERRORS as exc:
        raise SignatureError(f"{what}: signature cannot be checked ({exc})", step=step) from None
    if not valid:
        raise SignatureError(f"{what}: signature does not verify", step=step)
    ku = _extension(issuer, x509.KeyUsage, what=f"{what} issuer", step=step)
    if isinstance(ku, x509.KeyUsage) and not ku.crl_sign:
        raise CollateralError(f"{what}: issuer key usage does not allow cRLSign", step=step)
    try:
        this_update, next_update = crl.last_update_utc, crl.next_update_utc
    except CRYPTO_ERRORS as exc:  # pragma: no cover - parsed at load
        raise CollateralError(f"{what}: unreadable update times ({exc})", step=step) from None
    if next_update is None:
        raise CollateralError(f"{what}: has no nextUpdate", step=step)
    return this_update, next_update


def check_crl_window(
    this_update: datetime, next_update: datetime, now: datetime, *, what: str, step: str
) -> None:
    """thisUpdate <= now <= nextUpdate (nextUpdate itself still valid, as in Intel's QVL)."""
    if now < this_update:
        raise CollateralNotYetValidError(
            f"{what} is not yet valid at {now.isoformat()} (thisUpdate {this_update.isoformat()})",
            step=step,
        )
    if now > next_update:
        raise CollateralExpiredError(
            f"{what} expired at {next_update.isoformat()} (checked at {now.isoformat()})",
            step=step,
        )


def check_not_revoked(
    crl: x509.CertificateRevocationList,
    cert: x509.Certificate,
    *,
    what: str,
    step: str,
) -> None:
    """Raise RevokedError if `cert`'s serial is listed (the CRL must be its issuer's)."""
    try:
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
    except CRYPTO_ERRORS as exc:
        raise CollateralError(f"{what}: unreadable revocation entries ({exc})", step=step) from None
    if entry is not None:
        raise RevokedError(
            f"{describe(cert, 'certificate')} (serial {cert.serial_number:x}) is revoked by {what}",
            step=step,
        )
