"""The enclave's TLS identity (DESIGN §9): a P-256 key born inside, a fresh RA-TLS certificate.

The key is sealed to MRENCLAVE, so only this exact build can use it; a new build makes a new
key and clients re-attest. At every start the enclave issues a new self-signed certificate
whose Gramine-style extension carries a quote with report_data[0:32] = SHA-256(DER SPKI).

Python's ssl module loads keys only from paths. The PEM therefore goes through an anonymous
in-memory file (memfd) that never has a name on any filesystem the host can list, and is
closed as soon as the context has read it.
"""

from __future__ import annotations

import hashlib
import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from enclave_kms.attestation import dice
from enclave_kms.attestation.ratls import make_ratls_certificate
from enclave_kms.errors import PlatformError

CERT_LIFETIME = timedelta(days=7)
MIN_CERT_LIFETIME = timedelta(seconds=20)  # tests renew quickly; the host cannot go longer
NOT_BEFORE_SLACK = timedelta(minutes=5)
RENEW_AT = 0.5  # of the lifetime: clients see fresh evidence well before expiry


def bounded_lifetime(seconds: float) -> timedelta:
    """The certificate lifetime the host asked for, within [MIN, CERT_LIFETIME]: a host may
    make evidence fresher, never staler."""
    return min(max(timedelta(seconds=seconds), MIN_CERT_LIFETIME), CERT_LIFETIME)


def spki_der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def report_data_for_spki(spki: bytes, nonce: bytes = b"") -> bytes:
    """64-byte report data: SHA-256(SPKI) for the certificate, SHA-256(SHA-256(SPKI) ‖ nonce)
    for a liveness answer, zero-padded."""
    digest = hashlib.sha256(spki).digest()
    if nonce:
        digest = hashlib.sha256(digest + nonce).digest()
    return digest + bytes(32)


def generate_tls_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def key_to_der(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def key_from_der(der: bytes) -> ec.EllipticCurvePrivateKey:
    try:
        key = serialization.load_der_private_key(der, password=None)
    except ValueError:
        raise PlatformError("sealed TLS key does not decode") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise PlatformError("sealed TLS key is not a P-256 key")
    return key


@dataclass(frozen=True)
class TlsIdentity:
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate
    quote: bytes

    @property
    def spki_sha256(self) -> bytes:
        return hashlib.sha256(spki_der(self.key)).digest()

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)


def issue_identity(
    key: ec.EllipticCurvePrivateKey,
    quote_for: Callable[[bytes], bytes],
    now: datetime,
    *,
    dns_names: tuple[str, ...] = ("localhost",),
    lifetime: timedelta = CERT_LIFETIME,
) -> TlsIdentity:
    """A fresh RA-TLS certificate for `key`, with evidence from `quote_for(report_data)`.
    Names that are IP addresses become IP SANs (clients that check them need that)."""
    quote = quote_for(report_data_for_spki(spki_der(key)))
    # TCG DICE tagged evidence beside the legacy quote, as Gramine >= 1.8 (its own quote binds
    # the claims, which bind the key), so DICE-only RA-TLS verifiers accept us too.
    claims = dice.claims_for(spki_der(key))
    bound = hashlib.sha256(claims).digest().ljust(64, b"\0")
    tagged = dice.build_tagged_evidence(quote_for(bound), claims)
    cert = make_ratls_certificate(
        key,
        quote,
        subject_cn="enclave-kms",
        not_before=now - NOT_BEFORE_SLACK,
        not_after=now + lifetime,
        dns_names=dns_names,
        tagged_evidence=tagged,
    )
    return TlsIdentity(key, cert, quote)


def identity_for(
    key: ec.EllipticCurvePrivateKey, certificate_pem: bytes, quote: bytes
) -> TlsIdentity | None:
    """An identity from a stored certificate, if that certificate is for `key`."""
    try:
        cert = x509.load_pem_x509_certificate(certificate_pem)
    except ValueError:
        return None
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return TlsIdentity(key, cert, quote) if spki == spki_der(key) else None


def ssl_context(identity: TlsIdentity) -> ssl.SSLContext:
    """Server context, TLS 1.3 only (AEAD suites only, forward secrecy), loaded from memory,
    never from a named file."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    load_identity(ctx, identity)
    return ctx


def load_identity(ctx: ssl.SSLContext, identity: TlsIdentity) -> None:
    """Load (or replace: certificate renewal) the context's certificate and key; connections
    made afterwards get the new certificate, established ones keep theirs."""
    pem = identity.certificate_pem + identity.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.memfd_create("enclave-kms-tls", os.MFD_CLOEXEC)
    try:
        os.write(fd, pem)
        ctx.load_cert_chain(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)
