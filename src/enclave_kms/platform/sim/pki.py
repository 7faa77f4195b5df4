"""The simulated SGX PKI: a per-installation root and everything Intel's root signs.

Shapes mirror Intel's production certificates (see the chain in
`testdata/sgx/automata-dcap-rs/pck_certchain.pem`) field by field, so every verifier walks the
same code path — only the names say "Simulated", never "Intel" (DESIGN §7):

* root CA: self-signed P-256, keyCertSign+cRLSign, CA pathlen 1, valid to 2049-12-31;
* PCK Platform CA: issued by the root, CA pathlen 0 (15 years);
* PCK leaf: issued by the Platform CA, digitalSignature+nonRepudiation, CA:FALSE, with the SGX
  extension 1.2.840.113741.1.13.1 (PPID, TCB, PCE-ID, FMSPC, SGX type, platform instance id,
  configuration) as Intel's Platform-CA leaves carry it (7 years);
* TCB signing certificate: issued by the root, signs TCB Info and QE Identity (7 years);
* CRLs (root CRL, PCK Platform CA CRL) with CRL number and authority key identifier.

Like Intel, CA and TCB-signing serial numbers equal their subject key identifiers, and PCK leaf
serials are random (159 bits, the most `cryptography` issues). Nothing here touches the file
system: `platform.py` stores the keys.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.x509.oid import NameOID

from enclave_kms.errors import PlatformError
from enclave_kms.sgx.pck import SGX_EXTENSIONS_OID, PckExtension, build_pck_extension

ORGANIZATION = "enclave-kms simulation"
ROOT_CN = "Simulated SGX Root CA \u2014 NOT INTEL"
PLATFORM_CA_CN = "Simulated SGX PCK Platform CA"
PCK_CN = "Simulated SGX PCK Certificate"
TCB_SIGNING_CN = "Simulated SGX TCB Signing"

# URLs under the reserved .invalid TLD: shaped like Intel's, and guaranteed never to resolve.
ROOT_CRL_URL = "https://simulated-pcs.invalid/SimulatedSGXRootCA.der"
PCK_CRL_URL = "https://simulated-pcs.invalid/sgx/certification/v4/pckcrl?ca=platform&encoding=der"

ROOT_NOT_AFTER = datetime(2049, 12, 31, 23, 59, 59, tzinfo=UTC)
# Certificates start slightly before `platform init` so small clock skew between the host that
# created the platform and a verifier does not make the chain "not yet valid".
BACKDATE = timedelta(hours=1)

_KEY_NAMES = ("root", "platform_ca", "pck", "tcb_signing")


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.COMMON_NAME, cn),
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
        ]
    )


def ecdsa_sign_raw(key: ec.EllipticCurvePrivateKey, data: bytes) -> bytes:
    """ECDSA P-256 / SHA-256 signature as raw 64-byte r||s, the encoding SGX quotes and PCS use."""
    r, s = decode_dss_signature(key.sign(data, ec.ECDSA(hashes.SHA256())))
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def public_key_raw(key: ec.EllipticCurvePrivateKey) -> bytes:
    """The 64-byte x||y public key, as the quote's attestation key field holds it."""
    point = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return point[1:]


def _ski(key: ec.EllipticCurvePrivateKey) -> x509.SubjectKeyIdentifier:
    """SHA-1 key identifier (RFC 5280 4.2.1.2 method 1) with the top bit cleared, so that like
    Intel's it doubles as a positive 159-bit serial number."""
    digest = x509.SubjectKeyIdentifier.from_public_key(key.public_key()).digest
    return x509.SubjectKeyIdentifier(bytes([digest[0] & 0x7F]) + digest[1:])


def _aki(issuer_key: ec.EllipticCurvePrivateKey) -> x509.AuthorityKeyIdentifier:
    return x509.AuthorityKeyIdentifier(_ski(issuer_key).digest, None, None)


def _crl_dp(url: str) -> x509.CRLDistributionPoints:
    return x509.CRLDistributionPoints(
        [x509.DistributionPoint([x509.UniformResourceIdentifier(url)], None, None, None)]
    )


_CA_USAGE = x509.KeyUsage(
    digital_signature=False,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
_SIGNING_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=True,  # "Non Repudiation" in openssl's words, as in Intel's leaves
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def _certificate(
    *,
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: x509.Name | None,
    issuer_key: ec.EllipticCurvePrivateKey,
    crl_url: str,
    not_before: datetime,
    not_after: datetime,
    path_length: int | None,
    is_ca: bool,
    serial: int | None = None,
    sgx_extension: bytes | None = None,
) -> x509.Certificate:
    ski = _ski(key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer if issuer is not None else _name(subject))
        .public_key(key.public_key())
        .serial_number(serial if serial is not None else int.from_bytes(ski.digest, "big"))
        .not_valid_before(not_before)
        .not_valid_after(min(not_after, ROOT_NOT_AFTER))
        .add_extension(_aki(issuer_key), critical=False)
        .add_extension(_crl_dp(crl_url), critical=False)
        .add_extension(ski, critical=False)
        .add_extension(_CA_USAGE if is_ca else _SIGNING_USAGE, critical=True)
        .add_extension(x509.BasicConstraints(ca=is_ca, path_length=path_length), critical=True)
    )
    if sgx_extension is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(x509.ObjectIdentifier(SGX_EXTENSIONS_OID), sgx_extension),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _years(start: datetime, years: int) -> datetime:
    return start.replace(year=start.year + years, day=min(start.day, 28))


@dataclass(frozen=True)
class SimPki:
    """Keys and certificates of one simulated platform's PKI."""

    root_key: ec.EllipticCurvePrivateKey
    root_cert: x509.Certificate
    platform_ca_key: ec.EllipticCurvePrivateKey
    platform_ca_cert: x509.Certificate
    pck_key: ec.EllipticCurvePrivateKey
    pck_cert: x509.Certificate
    tcb_signing_key: ec.EllipticCurvePrivateKey
    tcb_signing_cert: x509.Certificate

    @classmethod
    def generate(
        cls, pck_extension: PckExtension, now: datetime, *, shared: SimPki | None = None
    ) -> SimPki:
        """A fresh PKI whose PCK leaf carries `pck_extension` (the platform's TCB and FMSPC).

        With `shared`, only the PCK key and leaf are new: the root, platform CA and TCB signing
        certificate are `shared`'s, as every real CPU's PCK chains to Intel's one root."""
        start = now.astimezone(UTC).replace(microsecond=0) - BACKDATE
        keys = {name: ec.generate_private_key(ec.SECP256R1()) for name in _KEY_NAMES}
        if shared is not None:
            return cls(
                shared.root_key,
                shared.root_cert,
                shared.platform_ca_key,
                shared.platform_ca_cert,
                keys["pck"],
                cls._pck_leaf(keys["pck"], shared.platform_ca_key, pck_extension, start),
                shared.tcb_signing_key,
                shared.tcb_signing_cert,
            )
        root_name = _name(ROOT_CN)
        root = _certificate(
            subject=ROOT_CN,
            key=keys["root"],
            issuer=None,
            issuer_key=keys["root"],
            crl_url=ROOT_CRL_URL,
            not_before=start,
            not_after=ROOT_NOT_AFTER,
            path_length=1,
            is_ca=True,
        )
        platform_ca = _certificate(
            subject=PLATFORM_CA_CN,
            key=keys["platform_ca"],
            issuer=root_name,
            issuer_key=keys["root"],
            crl_url=ROOT_CRL_URL,
            not_before=start,
            not_after=_years(start, 15),
            path_length=0,
            is_ca=True,
        )
        pck = cls._pck_leaf(keys["pck"], keys["platform_ca"], pck_extension, start)
        tcb_signing = _certificate(
            subject=TCB_SIGNING_CN,
            key=keys["tcb_signing"],
            issuer=root_name,
            issuer_key=keys["root"],
            crl_url=ROOT_CRL_URL,
            not_before=start,
            not_after=_years(start, 7),
            path_length=None,
            is_ca=False,
        )
        return cls(
            keys["root"],
            root,
            keys["platform_ca"],
            platform_ca,
            keys["pck"],
            pck,
            keys["tcb_signing"],
            tcb_signing,
        )

    @staticmethod
    def _pck_leaf(
        key: ec.EllipticCurvePrivateKey,
        platform_ca_key: ec.EllipticCurvePrivateKey,
        pck_extension: PckExtension,
        start: datetime,
    ) -> x509.Certificate:
        return _certificate(
            subject=PCK_CN,
            key=key,
            issuer=_name(PLATFORM_CA_CN),
            issuer_key=platform_ca_key,
            crl_url=PCK_CRL_URL,
            not_before=start,
            not_after=_years(start, 7),
            path_length=None,
            is_ca=False,
            serial=x509.random_serial_number(),
            sgx_extension=build_pck_extension(pck_extension),
        )

    def reissue_pck(self, pck_extension: PckExtension, now: datetime) -> SimPki:
        """The same PKI with a new PCK certificate (same key) for a new TCB (`set_cpu_svn`)."""
        start = now.astimezone(UTC).replace(microsecond=0) - BACKDATE
        leaf = self._pck_leaf(self.pck_key, self.platform_ca_key, pck_extension, start)
        return replace(self, pck_cert=leaf)

    # ------------------------------------------------------------------ chains

    @staticmethod
    def _pem(*certs: x509.Certificate) -> bytes:
        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)

    def root_pem(self) -> bytes:
        return self._pem(self.root_cert)

    def root_der(self) -> bytes:
        return self.root_cert.public_bytes(serialization.Encoding.DER)

    def pck_chain_pem(self) -> bytes:
        """Leaf → Platform CA → root: what certification data type 5 carries."""
        return self._pem(self.pck_cert, self.platform_ca_cert, self.root_cert)

    def pck_crl_issuer_chain_pem(self) -> bytes:
        return self._pem(self.platform_ca_cert, self.root_cert)

    def tcb_issuer_chain_pem(self) -> bytes:
        """TCB signing → root: the issuer chain of TCB Info and QE Identity."""
        return self._pem(self.tcb_signing_cert, self.root_cert)

    # ------------------------------------------------------------------ CRLs

    @staticmethod
    def _crl(
        *,
        issuer_cert: x509.Certificate,
        issuer_key: ec.EllipticCurvePrivateKey,
        this_update: datetime,
        next_update: datetime,
        revoked_serials: tuple[int, ...],
        crl_number: int,
    ) -> bytes:
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(issuer_cert.subject)
            .last_update(this_update)
            .next_update(next_update)
            .add_extension(x509.CRLNumber(crl_number), critical=False)
            .add_extension(_aki(issuer_key), critical=False)
        )
        for serial in revoked_serials:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder()
                .serial_number(serial)
                .revocation_date(this_update)
                .add_extension(x509.CRLReason(x509.ReasonFlags.key_compromise), critical=False)
                .build()
            )
        crl = builder.sign(issuer_key, hashes.SHA256())
        return crl.public_bytes(serialization.Encoding.DER)

    def root_crl(self, this_update: datetime, next_update: datetime, crl_number: int = 1) -> bytes:
        """DER CRL of the root (revokes nothing: the Platform CA and TCB signer stay good)."""
        return self._crl(
            issuer_cert=self.root_cert,
            issuer_key=self.root_key,
            this_update=this_update,
            next_update=next_update,
            revoked_serials=(),
            crl_number=crl_number,
        )

    def pck_crl(
        self,
        this_update: datetime,
        next_update: datetime,
        *,
        revoke_pck: bool = False,
        crl_number: int = 1,
    ) -> bytes:
        """DER CRL of the PCK Platform CA; `revoke_pck` lists this platform's PCK leaf."""
        serials = (self.pck_cert.serial_number,) if revoke_pck else ()
        return self._crl(
            issuer_cert=self.platform_ca_cert,
            issuer_key=self.platform_ca_key,
            this_update=this_update,
            next_update=next_update,
            revoked_serials=serials,
            crl_number=crl_number,
        )

    def sign_collateral(self, data: bytes) -> bytes:
        """Sign TCB Info / QE Identity bytes with the TCB signing key, raw r||s as Intel does."""
        return ecdsa_sign_raw(self.tcb_signing_key, data)

    # ------------------------------------------------------------------ storage form

    def to_files(self) -> dict[str, bytes]:
        """PEM files by name (keys unencrypted PKCS#8: the platform directory is 0700/0600)."""
        out: dict[str, bytes] = {}
        for name in _KEY_NAMES:
            key: ec.EllipticCurvePrivateKey = getattr(self, f"{name}_key")
            cert: x509.Certificate = getattr(self, f"{name}_cert")
            out[f"{name}.key.pem"] = key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
            out[f"{name}.cert.pem"] = cert.public_bytes(serialization.Encoding.PEM)
        return out

    @staticmethod
    def file_names() -> tuple[str, ...]:
        return tuple(f"{n}.{kind}.pem" for n in _KEY_NAMES for kind in ("key", "cert"))

    @classmethod
    def from_files(cls, files: dict[str, bytes]) -> SimPki:
        """Load what `to_files` wrote; a missing or corrupt file is a PlatformError."""
        values: dict[str, object] = {}
        for name in _KEY_NAMES:
            try:
                key = serialization.load_pem_private_key(files[f"{name}.key.pem"], None)
                cert = x509.load_pem_x509_certificate(files[f"{name}.cert.pem"])
            except KeyError as exc:
                raise PlatformError(f"simulated PKI: missing {exc.args[0]}") from None
            except (ValueError, TypeError):
                raise PlatformError(
                    f"simulated PKI: {name} key or certificate unreadable"
                ) from None
            if not isinstance(key, ec.EllipticCurvePrivateKey):
                raise PlatformError(f"simulated PKI: {name} key is not an EC key")
            if cert.public_key() != key.public_key():
                raise PlatformError(f"simulated PKI: {name} certificate does not match its key")
            values[f"{name}_key"] = key
            values[f"{name}_cert"] = cert
        return cls(**values)  # type: ignore[arg-type]
