"""Key types of the KMS: how material is made, sealed, loaded and checked (DESIGN §10).

Material is what goes into the sealed key record: raw bytes for symmetric keys, PKCS#8 DER for
asymmetric ones. Keeping one canonical serialisation means an imported key and a generated
key are indistinguishable once stored, and export hands back exactly what was sealed.

Loading is split from generation because loading an RSA private key (with the consistency
checks `cryptography` runs) costs 50-200 ms: `KMSService` caches the loaded objects.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enclave_kms.errors import IntegrityError, InvalidRequestError
from enclave_kms.wire import KEY_TYPES as WIRE_KEY_TYPES
from enclave_kms.wire import KeyTypeName

Family = Literal["aes", "hmac", "rsa", "ec", "ed25519"]
PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey
PublicKey = rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey
LoadedKey = AESGCM | bytes | PrivateKey
"""AESGCM for aes, the raw key bytes for hmac, a private key object for asymmetric types."""

SYMMETRIC_OPERATIONS = frozenset({"encrypt", "decrypt", "rewrap", "datakey"})
SIGNING_OPERATIONS = frozenset({"sign", "verify"})
HMAC_OPERATIONS = frozenset({"hmac"})  # computing and verifying a MAC are one capability

RSA_PUBLIC_EXPONENT = 65537
HMAC_MIN_BYTES = 32  # a shorter key would weaken HMAC-SHA256 below 256-bit security
HMAC_MAX_BYTES = 64  # SHA-256 block size; longer keys are hashed down anyway


@dataclass(frozen=True)
class KeyType:
    """One supported key type. `bits` is the key size (curve size for EC); the names are
    the wire contract's (`enclave_kms.wire.KeyTypeName`), checked below."""

    name: KeyTypeName
    family: Family
    bits: int
    operations: frozenset[str]

    @property
    def asymmetric(self) -> bool:
        return self.family in ("rsa", "ec", "ed25519")

    def supports(self, operation: str) -> bool:
        return operation in self.operations


_TYPES = (
    KeyType("aes256-gcm", "aes", 256, SYMMETRIC_OPERATIONS),
    KeyType("hmac-sha256", "hmac", 256, HMAC_OPERATIONS),
    KeyType("rsa-2048", "rsa", 2048, SIGNING_OPERATIONS),
    KeyType("rsa-3072", "rsa", 3072, SIGNING_OPERATIONS),
    KeyType("rsa-4096", "rsa", 4096, SIGNING_OPERATIONS),
    KeyType("ec-p256", "ec", 256, SIGNING_OPERATIONS),
    KeyType("ec-p384", "ec", 384, SIGNING_OPERATIONS),
    KeyType("ed25519", "ed25519", 256, SIGNING_OPERATIONS),
)
KEY_TYPES: Mapping[str, KeyType] = MappingProxyType({t.name: t for t in _TYPES})
if tuple(KEY_TYPES) != WIRE_KEY_TYPES:  # one list of names: a type added here is added there
    raise ImportError("keytypes and enclave_kms.wire.KEY_TYPES disagree")
DEFAULT_KEY_TYPE: KeyTypeName = "aes256-gcm"

_CURVES: Mapping[str, type[ec.EllipticCurve]] = MappingProxyType(
    {"ec-p256": ec.SECP256R1, "ec-p384": ec.SECP384R1}
)


def key_type(name: str) -> KeyType:
    """The KeyType called `name`; InvalidRequestError naming the accepted ones otherwise."""
    found = KEY_TYPES.get(name) if isinstance(name, str) else None
    if found is None:
        raise InvalidRequestError(f"unknown key type; expected one of {', '.join(KEY_TYPES)}")
    return found


def _pkcs8(key: PrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def generate_key(kt: KeyType) -> tuple[bytes, LoadedKey]:
    """Fresh material for `kt` from the OS CSPRNG (sealed serialisation) and its loaded
    object, so the caller can cache it without paying for a reload."""
    if kt.family == "aes":
        raw = os.urandom(kt.bits // 8)
        return raw, AESGCM(raw)
    if kt.family == "hmac":
        raw = os.urandom(kt.bits // 8)
        return raw, raw
    key: PrivateKey
    if kt.family == "rsa":
        key = rsa.generate_private_key(RSA_PUBLIC_EXPONENT, kt.bits)
    elif kt.family == "ec":
        key = ec.generate_private_key(_CURVES[kt.name]())
    else:
        key = ed25519.Ed25519PrivateKey.generate()
    return _pkcs8(key), key


def _load_der(material: bytes) -> object:
    try:
        return serialization.load_der_private_key(material, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise InvalidRequestError(
            "key material is not an unencrypted PKCS#8 (or PKCS#1/SEC1) DER private key"
        ) from None


def _check_asymmetric(kt: KeyType, key: object) -> PrivateKey:
    """The key object if it is exactly of type `kt`; InvalidRequestError saying why not."""
    if kt.family == "rsa":
        if not isinstance(key, rsa.RSAPrivateKey):
            raise InvalidRequestError(f"key material is not an RSA key (declared {kt.name})")
        if key.key_size != kt.bits:
            raise InvalidRequestError(f"RSA key is {key.key_size} bits, declared {kt.name}")
        if key.public_key().public_numbers().e != RSA_PUBLIC_EXPONENT:
            raise InvalidRequestError("RSA public exponent must be 65537")
        return key
    if kt.family == "ec":
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise InvalidRequestError(f"key material is not an EC key (declared {kt.name})")
        if not isinstance(key.curve, _CURVES[kt.name]):
            raise InvalidRequestError(f"EC key is on curve {key.curve.name}, declared {kt.name}")
        return key
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise InvalidRequestError("key material is not an Ed25519 key (declared ed25519)")
    return key


def validate_import(kt: KeyType, material: bytes) -> tuple[bytes, LoadedKey]:
    """BYOK check: `material` really is a `kt` key; returns it in the sealed serialisation
    with its loaded object.

    AES takes exactly 32 raw bytes, HMAC 32..64 raw bytes; asymmetric keys are DER private
    keys (PKCS#8, or the traditional PKCS#1/SEC1 forms) re-encoded as PKCS#8, so a key of the
    wrong algorithm, size or curve is refused rather than stored under a misleading type.
    """
    if not isinstance(material, bytes):
        raise InvalidRequestError("key material must be bytes")
    if kt.family == "aes":
        if len(material) != kt.bits // 8:
            raise InvalidRequestError(f"{kt.name} material must be {kt.bits // 8} bytes")
        return material, AESGCM(material)
    if kt.family == "hmac":
        if not HMAC_MIN_BYTES <= len(material) <= HMAC_MAX_BYTES:
            raise InvalidRequestError(
                f"{kt.name} material must be {HMAC_MIN_BYTES}..{HMAC_MAX_BYTES} bytes"
            )
        return material, material
    key = _check_asymmetric(kt, _load_der(material))
    return _pkcs8(key), key


def load_key(kt: KeyType, material: bytes) -> LoadedKey:
    """The usable key object for sealed `material`.

    The material came out of an authenticated record, so a failure here means the record
    is not what this code wrote: reported as IntegrityError, never as a client mistake.
    """
    if kt.family == "aes":
        if len(material) != 32:
            raise IntegrityError(f"stored {kt.name} material has the wrong length")
        return AESGCM(material)
    if kt.family == "hmac":
        return bytes(material)
    try:
        return _check_asymmetric(kt, _load_der(material))
    except InvalidRequestError:
        raise IntegrityError(
            f"stored {kt.name} material does not load as a {kt.name} key"
        ) from None


def public_key(kt: KeyType, key: LoadedKey) -> PublicKey | None:
    """The public half of an asymmetric key, None for symmetric types."""
    if not kt.asymmetric or isinstance(key, AESGCM | bytes):
        return None
    return key.public_key()


def public_key_pem(kt: KeyType, key: LoadedKey) -> str | None:
    """SubjectPublicKeyInfo PEM of an asymmetric key (what clients verify with), else None."""
    pub = public_key(kt, key)
    if pub is None:
        return None
    return pub.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode("ascii")


# --------------------------------------------------------------------------- signature schemes

HASHES: Mapping[str, type[hashes.HashAlgorithm]] = MappingProxyType(
    {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
)
RSA_SIGNATURE_ALGORITHMS = ("pss", "pkcs1v15")
_DEFAULT_HASH: Mapping[str, str] = MappingProxyType(
    {"rsa": "sha256", "ec-p256": "sha256", "ec-p384": "sha384"}
)


@dataclass(frozen=True)
class SignatureScheme:
    """A fully resolved way to sign: algorithm, hash and input form.

    RSA-PSS uses MGF1 with the same hash and a salt as long as the digest (what most
    verifiers expect, and what FIPS 186-5 recommends); ECDSA signatures are DER; Ed25519 signs
    the message itself (PureEdDSA), so it takes neither a hash nor a prehashed digest.
    """

    family: Family
    algorithm: str  # "pss" | "pkcs1v15" | "ecdsa" | "ed25519"
    hash_name: str | None
    prehashed: bool

    def _hash(self) -> hashes.HashAlgorithm:
        assert self.hash_name is not None
        return HASHES[self.hash_name]()

    def _algo(self, data: bytes) -> hashes.HashAlgorithm | Prehashed:
        h = self._hash()
        if not self.prehashed:
            return h
        if len(data) != h.digest_size:
            raise InvalidRequestError(
                f"prehashed input must be a {self.hash_name} digest of {h.digest_size} bytes"
            )
        return Prehashed(h)

    def _padding(self) -> padding.AsymmetricPadding:
        if self.algorithm == "pss":
            h = self._hash()
            return padding.PSS(mgf=padding.MGF1(h), salt_length=h.digest_size)
        return padding.PKCS1v15()

    def sign(self, key: PrivateKey, data: bytes) -> bytes:
        """The signature over `data` (message, or digest if prehashed)."""
        if isinstance(key, rsa.RSAPrivateKey):
            return key.sign(data, self._padding(), self._algo(data))
        if isinstance(key, ec.EllipticCurvePrivateKey):
            return key.sign(data, ec.ECDSA(self._algo(data)))
        return key.sign(data)

    def verify(self, key: PublicKey, data: bytes, signature: bytes) -> bool:
        """True iff `signature` is valid; a malformed signature is simply not valid."""
        try:
            if isinstance(key, rsa.RSAPublicKey):
                key.verify(signature, data, self._padding(), self._algo(data))
            elif isinstance(key, ec.EllipticCurvePublicKey):
                key.verify(signature, data, ec.ECDSA(self._algo(data)))
            else:
                key.verify(signature, data)
        except (InvalidSignature, ValueError):
            return False
        return True


def signature_scheme(
    kt: KeyType,
    *,
    hash_algorithm: str | None = None,
    signature_algorithm: str | None = None,
    prehashed: bool = False,
) -> SignatureScheme:
    """Resolve the caller's choices for a key of type `kt`; InvalidRequestError if they do
    not apply (e.g. a hash for Ed25519, PSS for an EC key)."""
    if not kt.supports("sign"):
        raise InvalidRequestError(f"{kt.name} keys do not sign")
    if hash_algorithm is not None and hash_algorithm not in HASHES:
        raise InvalidRequestError(f"unknown hash algorithm; expected one of {', '.join(HASHES)}")
    if kt.family == "ed25519":
        if signature_algorithm not in (None, "ed25519"):
            raise InvalidRequestError("ed25519 keys sign only with ed25519")
        if hash_algorithm is not None or prehashed:
            raise InvalidRequestError("ed25519 signs the message itself: no hash, no prehash")
        return SignatureScheme("ed25519", "ed25519", None, False)
    if kt.family == "ec":
        if signature_algorithm not in (None, "ecdsa"):
            raise InvalidRequestError("EC keys sign only with ecdsa")
        return SignatureScheme("ec", "ecdsa", hash_algorithm or _DEFAULT_HASH[kt.name], prehashed)
    algorithm = signature_algorithm or "pss"
    if algorithm not in RSA_SIGNATURE_ALGORITHMS:
        raise InvalidRequestError("RSA signature algorithm must be pss or pkcs1v15")
    return SignatureScheme("rsa", algorithm, hash_algorithm or _DEFAULT_HASH["rsa"], prehashed)
