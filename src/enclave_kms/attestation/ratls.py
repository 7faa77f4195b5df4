"""RA-TLS certificates: a self-signed TLS certificate that carries attestation evidence for its key.

Forms we read (DESIGN §8, §9):

* TCG DICE tagged evidence, OID 2.23.133.5.4.9 (Gramine >= 1.8, the CCC's interoperable
  RA-TLS): CBOR tag 60000 over [quote, claims]; the quote binds SHA-256(claims) and the claims'
  "pubkey-hash" is the key's hash (`dice.py`). Beside Gramine's legacy OID (Gramine writes
  both, with two quotes) the DICE evidence is appraised and the legacy quote must bind the key.

* Gramine legacy, OID 1.2.840.113741.1337.6: the extension value is a raw DCAP quote whose
  `report_data[0:32]` is SHA-256 of the certificate's DER SubjectPublicKeyInfo. This is also the
  form our own enclaves issue (`make_ratls_certificate`).
* Open Enclave report, OIDs 1.2.840.113556.10.1.1 (legacy) and 1.3.6.1.4.1.311.105.1: a 16-byte
  OE report header then a quote whose `report_data[0:32]` is SHA-256 of the public key as
  OpenSSL writes it in PEM, NUL terminator included (OE's `oe_cert_write_public_key_pem`).
* Open Enclave evidence, OIDs 1.2.840.113556.10.1.2 (legacy) and 1.3.6.1.4.1.311.105.2: an OE
  attestation header (version 3, format UUID, size) then quote ‖ custom-claims buffer; the
  buffer is that same PEM and `report_data[0:32]` is SHA-256 of the buffer.

The certificate is parsed with pyasn1 against a minimal X.509 schema rather than with
`cryptography`, because genuine OE certificates encode `ecdsa-with-SHA256` with NULL parameters,
which `cryptography` refuses to load; the signature itself is still checked by `cryptography`
over the exact TBS bytes. Only evidence extraction and key binding happen here: whether the
quote is genuine is `verify.verify_quote`'s job, and whether it is acceptable is the policy's.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import secrets
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import PublicKeyTypes
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    PublicFormat,
    load_der_public_key,
)
from cryptography.x509.oid import NameOID
from pyasn1.codec.der import decoder as der_decoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import namedtype, tag, univ, useful

from enclave_kms.attestation.dice import (
    DICE_TAGGED_EVIDENCE_OID,
    check_tagged_binding,
    parse_tagged_evidence,
)
from enclave_kms.errors import (
    AttestationError,
    BindingError,
    CertificateChainError,
    FormatError,
    SignatureError,
    UnsupportedFormatError,
    UsageError,
)
from enclave_kms.sgx.oe import OeEvidence, parse_oe_report
from enclave_kms.sgx.quote import parse_quote

GRAMINE_QUOTE_OID = "1.2.840.113741.1337.6"
OE_REPORT_OID_LEGACY = "1.2.840.113556.10.1.1"
OE_EVIDENCE_OID_LEGACY = "1.2.840.113556.10.1.2"
OE_REPORT_OID = "1.3.6.1.4.1.311.105.1"
OE_EVIDENCE_OID = "1.3.6.1.4.1.311.105.2"


class RaTlsForm(StrEnum):
    """Which evidence extension a certificate carries (this decides the binding rule)."""

    GRAMINE = "gramine"
    OE_REPORT = "oe-report"
    OE_EVIDENCE = "oe-evidence"
    DICE = "dice-tagged-evidence"


_FORM_BY_OID = {
    DICE_TAGGED_EVIDENCE_OID: RaTlsForm.DICE,
    GRAMINE_QUOTE_OID: RaTlsForm.GRAMINE,
    OE_REPORT_OID_LEGACY: RaTlsForm.OE_REPORT,
    OE_REPORT_OID: RaTlsForm.OE_REPORT,
    OE_EVIDENCE_OID_LEGACY: RaTlsForm.OE_EVIDENCE,
    OE_EVIDENCE_OID: RaTlsForm.OE_EVIDENCE,
}

_SIG_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "1.2.840.10045.4.3.2": hashes.SHA256,  # ecdsa-with-SHA256
    "1.2.840.10045.4.3.3": hashes.SHA384,
    "1.2.840.10045.4.3.4": hashes.SHA512,
    "1.2.840.113549.1.1.11": hashes.SHA256,  # sha256WithRSAEncryption
    "1.2.840.113549.1.1.12": hashes.SHA384,
    "1.2.840.113549.1.1.13": hashes.SHA512,
}
_ECDSA_PREFIX = "1.2.840.10045.4.3."


# ---------------------------------------------------------------------- minimal X.509 schema


def _ctx(number: int, *, constructed: bool) -> tag.Tag:
    fmt = tag.tagFormatConstructed if constructed else tag.tagFormatSimple
    return tag.Tag(tag.tagClassContext, fmt, number)


class _AlgorithmIdentifier(univ.Sequence):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("algorithm", univ.ObjectIdentifier()),
        namedtype.OptionalNamedType("parameters", univ.Any()),
    )


class _Time(univ.Choice):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("utcTime", useful.UTCTime()),
        namedtype.NamedType("generalTime", useful.GeneralizedTime()),
    )


class _Validity(univ.Sequence):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("notBefore", _Time()),
        namedtype.NamedType("notAfter", _Time()),
    )


class _Extension(univ.Sequence):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("extnID", univ.ObjectIdentifier()),
        namedtype.DefaultedNamedType("critical", univ.Boolean(False)),
        namedtype.NamedType("extnValue", univ.OctetString()),
    )


class _Extensions(univ.SequenceOf):  # type: ignore[misc]
    componentType = _Extension()


class _TbsCertificate(univ.Sequence):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        namedtype.DefaultedNamedType(
            "version", univ.Integer(0).subtype(explicitTag=_ctx(0, constructed=True))
        ),
        namedtype.NamedType("serialNumber", univ.Integer()),
        namedtype.NamedType("signature", _AlgorithmIdentifier()),
        namedtype.NamedType("issuer", univ.Any()),
        namedtype.NamedType("validity", _Validity()),
        namedtype.NamedType("subject", univ.Any()),
        namedtype.NamedType("subjectPublicKeyInfo", univ.Any()),
        namedtype.OptionalNamedType(
            "issuerUniqueID", univ.BitString().subtype(implicitTag=_ctx(1, constructed=False))
        ),
        namedtype.OptionalNamedType(
            "subjectUniqueID", univ.BitString().subtype(implicitTag=_ctx(2, constructed=False))
        ),
        namedtype.OptionalNamedType(
            "extensions", _Extensions().subtype(explicitTag=_ctx(3, constructed=True))
        ),
    )


class _Certificate(univ.Sequence):  # type: ignore[misc]
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("tbsCertificate", univ.Any()),  # kept raw: the signed bytes
        namedtype.NamedType("signatureAlgorithm", _AlgorithmIdentifier()),
        namedtype.NamedType("signatureValue", univ.BitString()),
    )


_PARSE = "ratls_certificate"


def _decode(data: bytes, spec: univ.Asn1Item, what: str) -> univ.Asn1Item:
    try:
        value, rest = der_decoder.decode(data, asn1Spec=spec)
    except (PyAsn1Error, ValueError, TypeError, IndexError, OverflowError) as exc:
        raise FormatError(f"{what}: not valid DER ({type(exc).__name__})", step=_PARSE) from None
    if rest:
        raise FormatError(f"{what}: {len(rest)} bytes after the DER structure", step=_PARSE)
    return value


# ---------------------------------------------------------------------- parsed certificate


@dataclass(frozen=True)
class RaTlsCertificate:
    """The parts of a certificate RA-TLS needs, with the exact signed and key bytes."""

    der: bytes
    tbs: bytes
    signature_algorithm: str
    signature: bytes
    spki_der: bytes
    not_before: datetime
    not_after: datetime
    extensions: tuple[tuple[str, bool, bytes], ...]  # (oid, critical, value)

    @classmethod
    def parse(cls, data: bytes | x509.Certificate) -> RaTlsCertificate:
        """Parse a certificate given as DER, PEM or a `cryptography` object."""
        der = _to_der(data)
        cert = _decode(der, _Certificate(), "certificate")
        tbs_raw = bytes(cert["tbsCertificate"])
        tbs = _decode(tbs_raw, _TbsCertificate(), "certificate TBS")
        outer_alg = str(cert["signatureAlgorithm"]["algorithm"])
        if str(tbs["signature"]["algorithm"]) != outer_alg:
            raise FormatError("certificate: TBS and outer signature algorithms differ", step=_PARSE)
        sig_bits = cert["signatureValue"]
        if len(sig_bits) % 8:
            raise FormatError("certificate: signature is not a whole number of bytes", step=_PARSE)
        exts: list[tuple[str, bool, bytes]] = []
        if tbs["extensions"].isValue:
            for ext in tbs["extensions"]:
                exts.append((str(ext["extnID"]), bool(ext["critical"]), bytes(ext["extnValue"])))
        oids = [e[0] for e in exts]
        if len(set(oids)) != len(oids):
            raise FormatError("certificate: an extension appears twice", step=_PARSE)
        try:
            not_before = _time(tbs["validity"]["notBefore"])
            not_after = _time(tbs["validity"]["notAfter"])
        except (PyAsn1Error, ValueError) as exc:
            raise FormatError(f"certificate validity: {exc}", step=_PARSE) from None
        return cls(
            der=der,
            tbs=tbs_raw,
            signature_algorithm=outer_alg,
            signature=sig_bits.asOctets(),
            spki_der=bytes(tbs["subjectPublicKeyInfo"]),
            not_before=not_before,
            not_after=not_after,
            extensions=tuple(exts),
        )

    def extension(self, oid: str) -> bytes | None:
        for ext_oid, _critical, value in self.extensions:
            if ext_oid == oid:
                return value
        return None

    def public_key(self) -> PublicKeyTypes:
        try:
            return load_der_public_key(self.spki_der)
        except (ValueError, UnsupportedAlgorithm) as exc:
            raise FormatError(f"certificate public key: {exc}", step=_PARSE) from None

    @property
    def spki_sha256(self) -> bytes:
        """SHA-256 of the DER SubjectPublicKeyInfo: the Gramine binding and our pin."""
        return hashlib.sha256(self.spki_der).digest()

    def spki_pem(self) -> bytes:
        """The key as OpenSSL's PEM_write_bio_PUBKEY writes it (what OE hashes)."""
        return self.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)

    def verify_self_signature(self) -> None:
        """The certificate must be signed by its own key: proof of possession of that key."""
        hash_cls = _SIG_HASHES.get(self.signature_algorithm)
        if hash_cls is None:
            raise UnsupportedFormatError(
                f"certificate signature algorithm {self.signature_algorithm} is not supported",
                step="ratls_self_signature",
            )
        key = self.public_key()
        try:
            if self.signature_algorithm.startswith(_ECDSA_PREFIX):
                if not isinstance(key, ec.EllipticCurvePublicKey):
                    raise SignatureError(
                        "certificate: ECDSA signature but the key is not EC",
                        step="ratls_self_signature",
                    )
                key.verify(self.signature, self.tbs, ec.ECDSA(hash_cls()))
            else:
                if not isinstance(key, rsa.RSAPublicKey):
                    raise SignatureError(
                        "certificate: RSA signature but the key is not RSA",
                        step="ratls_self_signature",
                    )
                key.verify(self.signature, self.tbs, padding.PKCS1v15(), hash_cls())
        except InvalidSignature:
            raise SignatureError(
                "certificate self-signature does not verify (the certificate was altered or "
                "is not signed by its own key)",
                step="ratls_self_signature",
            ) from None


def _time(value: _Time) -> datetime:
    chosen = value.getComponent()
    return chosen.asDateTime  # type: ignore[no-any-return]


def _to_der(data: bytes | x509.Certificate) -> bytes:
    if isinstance(data, x509.Certificate):
        return data.public_bytes(Encoding.DER)
    if not isinstance(data, bytes | bytearray | memoryview):
        raise FormatError(f"certificate: expected bytes, got {type(data).__name__}", step=_PARSE)
    raw = bytes(data)
    stripped = raw.lstrip()
    if stripped.startswith(b"-----BEGIN"):
        try:
            return x509.load_pem_x509_certificate(stripped).public_bytes(Encoding.DER)
        except ValueError:
            return _pem_body(stripped)
    return raw


def _pem_body(pem: bytes) -> bytes:
    """Decode a PEM block ourselves when `cryptography` rejects the DER inside (OE EC certs)."""
    lines = pem.decode("ascii", "replace").splitlines()
    try:
        start = lines.index("-----BEGIN CERTIFICATE-----")
        end = lines.index("-----END CERTIFICATE-----", start)
        return base64.b64decode("".join(lines[start + 1 : end]), validate=True)
    except (ValueError, binascii.Error):
        raise FormatError("certificate: not a valid PEM certificate", step=_PARSE) from None


# ---------------------------------------------------------------------- evidence extraction


@dataclass(frozen=True)
class RaTlsEvidence:
    """Evidence found in a certificate, before any check of it.

    `quote_bytes` is the DCAP quote alone (OE headers and claims removed); `held_data` is what
    `report_data[0:32]` must be SHA-256 of for this form; `claims` is the OE custom-claims buffer.
    """

    form: RaTlsForm
    oid: str
    payload: bytes
    quote_bytes: bytes
    held_data: bytes
    claims: bytes | None = None


def extract_evidence(cert: RaTlsCertificate | bytes | x509.Certificate) -> RaTlsEvidence:
    """Find the one evidence extension and split it; no signature or binding check here."""
    parsed = cert if isinstance(cert, RaTlsCertificate) else RaTlsCertificate.parse(cert)
    found = [(oid, _FORM_BY_OID[oid], v) for oid, _c, v in parsed.extensions if oid in _FORM_BY_OID]
    if not found:
        raise AttestationError(
            "certificate carries no attestation evidence (no Gramine or Open Enclave "
            "evidence extension)",
            step="ratls_evidence",
        )
    forms = sorted(f.value for _o, f, _v in found)
    if forms == sorted((RaTlsForm.DICE.value, RaTlsForm.GRAMINE.value)):
        # Gramine >= 1.8 writes both: the DICE evidence is appraised; the legacy quote must
        # still bind this key by its own rule, so neither extension is unchecked baggage.
        legacy = next(v for _o, f, v in found if f is RaTlsForm.GRAMINE)
        legacy_quote = parse_quote(legacy)
        if not hmac.compare_digest(
            legacy_quote.body.report_data[:32], hashlib.sha256(parsed.spki_der).digest()
        ):
            raise BindingError(
                "the legacy RA-TLS quote beside the DICE evidence binds another key",
                step="ratls_binding",
            )
        found = [x for x in found if x[1] is RaTlsForm.DICE]
    if len(found) > 1:
        raise FormatError(
            "certificate carries several evidence extensions: "
            + ", ".join(oid for oid, _f, _v in found),
            step="ratls_evidence",
        )
    oid, form, payload = found[0]
    if form is RaTlsForm.DICE:
        tagged = parse_tagged_evidence(payload)
        quote = parse_quote(tagged.quote)
        return RaTlsEvidence(form, oid, payload, quote.to_bytes(), tagged.claims, tagged.claims)
    if form is RaTlsForm.GRAMINE:
        quote = parse_quote(payload)
        return RaTlsEvidence(form, oid, payload, quote.to_bytes(), parsed.spki_der)
    oe_pem = parsed.spki_pem() + b"\x00"
    if form is RaTlsForm.OE_REPORT:
        _header, quote = parse_oe_report(payload)
        return RaTlsEvidence(form, oid, payload, quote.to_bytes(), oe_pem)
    evidence = OeEvidence.parse(_strip_attestation_header(payload))
    claims = evidence.custom_claims_buffer
    return RaTlsEvidence(form, oid, payload, evidence.quote.to_bytes(), claims, claims)


# OE's `oe_attestation_header_t` (common/attest_plugin.h): u32 version (3), 16-byte format UUID,
# u64 data_size, then data_size bytes for the format's verifier plugin.
_ATTESTATION_HEADER_FMT = "<I16sQ"
_ATTESTATION_HEADER_SIZE = struct.calcsize(_ATTESTATION_HEADER_FMT)
_ATTESTATION_HEADER_VERSION = 3
OE_FORMAT_UUID_SGX_ECDSA = bytes.fromhex("a3a21e871b4d4014b70aa125d2fbcd8c")


def _strip_attestation_header(payload: bytes) -> bytes:
    """The SGX_ECDSA evidence inside an OE evidence extension (header checked, then dropped)."""
    if len(payload) < _ATTESTATION_HEADER_SIZE:
        raise FormatError("OE attestation header: truncated", step="ratls_evidence")
    version, format_id, size = struct.unpack_from(_ATTESTATION_HEADER_FMT, payload)
    if version != _ATTESTATION_HEADER_VERSION:
        raise UnsupportedFormatError(
            f"OE attestation header version {version} is not supported (3 is)",
            step="ratls_evidence",
        )
    if format_id != OE_FORMAT_UUID_SGX_ECDSA:
        raise UnsupportedFormatError(
            f"OE evidence format {format_id.hex()} is not supported (only SGX_ECDSA)",
            step="ratls_evidence",
        )
    data = payload[_ATTESTATION_HEADER_SIZE:]
    if size != len(data):
        raise FormatError(
            f"OE attestation header: size {size} != {len(data)} bytes that follow",
            step="ratls_evidence",
        )
    return data


def check_ratls_binding(cert: RaTlsCertificate, evidence: RaTlsEvidence) -> None:
    """The evidence must vouch for this certificate's key, by the rule of its form."""
    report_data = parse_quote(evidence.quote_bytes).body.report_data
    if evidence.form is RaTlsForm.DICE:
        check_tagged_binding(parse_tagged_evidence(evidence.payload), cert.spki_der, report_data)
        return
    if evidence.form is RaTlsForm.OE_EVIDENCE:
        pem = cert.spki_pem()
        if evidence.claims not in (pem + b"\x00", pem):
            raise BindingError(
                "OE evidence custom claims are not this certificate's public key",
                step="ratls_binding",
            )
    if not hmac.compare_digest(report_data[:32], hashlib.sha256(evidence.held_data).digest()):
        raise BindingError(
            f"report_data does not bind this certificate's public key ({evidence.form.value} "
            "rule): the evidence belongs to another key",
            step="ratls_binding",
        )


def verify_ratls_certificate(
    data: bytes | x509.Certificate, *, now: datetime
) -> tuple[bytes, RaTlsForm]:
    """Self-signature, validity at `now` (required: never skipped), evidence extraction and
    key binding.

    Returns the DCAP quote bytes and the form; the caller verifies the quote and the policy.
    """
    if not isinstance(now, datetime) or now.tzinfo is None:
        raise UsageError("verify_ratls_certificate: now must be a timezone-aware datetime")
    cert = RaTlsCertificate.parse(data)
    cert.verify_self_signature()
    if not cert.not_before <= now <= cert.not_after:
        raise CertificateChainError(
            f"certificate is outside its validity ({cert.not_before.isoformat()} to "
            f"{cert.not_after.isoformat()})",
            step="ratls_validity",
        )
    evidence = extract_evidence(cert)
    check_ratls_binding(cert, evidence)
    return evidence.quote_bytes, evidence.form


# ---------------------------------------------------------------------- building


def expected_report_data_for(cert_or_key: x509.Certificate | bytes | PublicKeyTypes) -> bytes:
    """The 32 bytes an enclave puts in `report_data[0:32]` for this key (Gramine rule)."""
    if isinstance(cert_or_key, x509.Certificate | bytes):
        return RaTlsCertificate.parse(cert_or_key).spki_sha256
    spki = cert_or_key.public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(spki).digest()


def _general_name(name: str) -> x509.GeneralName:
    """An IP address as an IP SAN (RFC 6125: clients match IPs only there), else a DNS name."""
    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def make_ratls_certificate(
    private_key: ec.EllipticCurvePrivateKey,
    quote_bytes: bytes,
    *,
    subject_cn: str,
    not_before: datetime,
    not_after: datetime,
    dns_names: Sequence[str] = (),
    tagged_evidence: bytes | None = None,
) -> x509.Certificate:
    """A self-signed ECDSA P-256/SHA-256 certificate carrying `quote_bytes` (Gramine OID) and,
    when given, TCG DICE tagged evidence (OID 2.23.133.5.4.9, `dice.build_tagged_evidence`) —
    the two extensions Gramine's RA-TLS writes since v1.8.

    The quote's `report_data[0:32]` must be `expected_report_data_for(private_key.public_key())`
    for the certificate to verify; this function does not check it, so tests can build
    mismatched certificates on purpose.
    """
    if not isinstance(private_key, ec.EllipticCurvePrivateKey) or not isinstance(
        private_key.curve, ec.SECP256R1
    ):
        raise TypeError("RA-TLS certificates use an EC P-256 private key")
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject_cn)])
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(int.from_bytes(secrets.token_bytes(16), "big") >> 1 | 1)
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(GRAMINE_QUOTE_OID), quote_bytes),
            critical=False,
        )
    )
    if tagged_evidence is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(
                x509.ObjectIdentifier(DICE_TAGGED_EVIDENCE_OID), tagged_evidence
            ),
            critical=False,
        )
    if dns_names:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([_general_name(n) for n in dns_names]), critical=False
        )
    return builder.sign(private_key, hashes.SHA256())
