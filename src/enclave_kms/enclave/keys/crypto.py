"""Cryptographic use of keys: encryption, data keys, batches, signatures, MACs, randomness.

Formats (stable, documented for clients):
- ciphertext: ``ekms:v<N>:<base64(nonce(12) || ciphertext || tag(16))>``, AES-256-GCM under
  version N. The GCM additional data is canonical CBOR
  ``["enclave-kms/encrypt/v1", key name, N, associated_data]``, so a ciphertext never opens
  under another key or version even with equal material, nor with other associated data.
- signature / MAC: ``ekms:v<N>:<base64(signature or HMAC-SHA256 tag)>``; the signature bytes
  are standard (RSA-PSS / PKCS#1 v1.5, DER ECDSA, Ed25519) so exported public keys verify
  them with any library.
New values always use the latest version; decrypt and verify accept any version down to
min_decryption_version. The keyless operations (random bytes, the tutorial's generate_*)
touch no record.
"""

from __future__ import annotations

import base64
import hashlib
import hmac as hmac_mod
import os
from collections.abc import Callable, Sequence
from typing import TypeVar

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from enclave_kms.enclave.keys import keytypes
from enclave_kms.enclave.keys.keyring import KeyRing
from enclave_kms.enclave.keys.keytypes import PrivateKey
from enclave_kms.enclave.keys.types import (
    BatchItemError,
    BatchResult,
    DataKey,
    DecryptItem,
    EncryptItem,
    KeyRecord,
    RsaKeyPair,
    format_tagged,
    gcm_aad,
    need_aad,
    need_bytes,
    need_flag,
    parse_tagged,
)
from enclave_kms.errors import CryptoOperationError, InvalidRequestError, KMSError

T = TypeVar("T")

MAX_RANDOM_BYTES = 1024
MAX_BATCH_ITEMS = 1000
DATA_KEY_BYTES = 32
_NONCE = 12
_TAG = 16


class KeyCrypto:
    """The operations that use a key's material; each re-reads the key (`KeyRing.usable`)."""

    def __init__(self, ring: KeyRing) -> None:
        self._ring = ring

    # ----------------------------------------------------------------- encryption

    def _encrypt_with(self, key: KeyRecord, plaintext: object, associated_data: object) -> str:
        data = need_bytes(plaintext, "plaintext")
        aad = need_aad(associated_data)
        version = key.latest
        aead = self._ring.loaded(key, version)
        assert isinstance(aead, AESGCM)
        nonce = os.urandom(_NONCE)
        sealed = aead.encrypt(nonce, data, gcm_aad(key.name, version.version, aad))
        return format_tagged(version.version, nonce + sealed)

    def _decrypt_with(self, key: KeyRecord, ciphertext: object, associated_data: object) -> bytes:
        number, raw = parse_tagged(ciphertext, "ciphertext")
        aad = need_aad(associated_data)
        if len(raw) < _NONCE + _TAG:
            raise InvalidRequestError("ciphertext is too short")
        version = self._ring.version_for_use(key, number)
        aead = self._ring.loaded(key, version)
        assert isinstance(aead, AESGCM)
        try:
            return aead.decrypt(raw[:_NONCE], raw[_NONCE:], gcm_aad(key.name, number, aad))
        except InvalidTag:
            raise CryptoOperationError(
                f"ciphertext does not authenticate under key {key.name!r} version {number} "
                "(altered, from another key, or other associated data)"
            ) from None

    def encrypt(self, name: str, plaintext: bytes, *, associated_data: bytes | None = None) -> str:
        """AES-256-GCM under the latest version; a fresh random 96-bit nonce every call."""
        return self._encrypt_with(self._ring.usable(name, "encrypt"), plaintext, associated_data)

    def decrypt(self, name: str, ciphertext: str, *, associated_data: bytes | None = None) -> bytes:
        """The plaintext, only if the ciphertext authenticates under this key, the version
        it names (>= min_decryption_version) and the same associated data."""
        return self._decrypt_with(self._ring.usable(name, "decrypt"), ciphertext, associated_data)

    def rewrap(self, name: str, ciphertext: str, *, associated_data: bytes | None = None) -> str:
        """Re-encrypt under the latest version without the plaintext leaving the enclave."""
        key = self._ring.usable(name, "rewrap")
        plaintext = self._decrypt_with(key, ciphertext, associated_data)
        return self._encrypt_with(key, plaintext, associated_data)

    def generate_data_key(
        self, name: str, *, include_plaintext: bool = True, associated_data: bytes | None = None
    ) -> DataKey:
        """A fresh 256-bit data key encrypted under `name` (a normal ciphertext: `decrypt`
        returns the data key), with the plaintext too unless `include_plaintext` is False."""
        need_flag(include_plaintext, "include_plaintext")
        key = self._ring.usable(name, "datakey")
        data_key = os.urandom(DATA_KEY_BYTES)
        wrapped = self._encrypt_with(key, data_key, associated_data)
        return DataKey(wrapped, data_key if include_plaintext else None)

    def encrypt_batch(self, name: str, items: Sequence[EncryptItem]) -> list[BatchResult]:
        """Encrypt each item; a bad item gets an error entry, the others still succeed.
        Key-level failures (not found, disabled, ...) raise for the whole batch."""
        key = self._ring.usable(name, "encrypt")
        return _batch(
            items, EncryptItem, lambda i: self._encrypt_with(key, i.plaintext, i.associated_data)
        )

    def decrypt_batch(self, name: str, items: Sequence[DecryptItem]) -> list[BatchResult]:
        """Decrypt each item, with per-item errors as `encrypt_batch`."""
        key = self._ring.usable(name, "decrypt")
        return _batch(
            items, DecryptItem, lambda i: self._decrypt_with(key, i.ciphertext, i.associated_data)
        )

    # ----------------------------------------------------------------- signatures and MACs

    def sign(
        self,
        name: str,
        data: bytes,
        *,
        hash_algorithm: str | None = None,
        signature_algorithm: str | None = None,
        prehashed: bool = False,
    ) -> str:
        """Sign `data` (the message, or its digest if `prehashed`) with the latest version.

        RSA: "pss" (default; salt = digest length) or "pkcs1v15", sha256 (default)/384/512.
        ECDSA: DER, sha256 for P-256 and sha384 for P-384 by default. Ed25519: message only.
        """
        key = self._ring.usable(name, "sign")
        scheme = keytypes.signature_scheme(
            key.type,
            hash_algorithm=hash_algorithm,
            signature_algorithm=signature_algorithm,
            prehashed=need_flag(prehashed, "prehashed"),
        )
        version = key.latest
        private = self._ring.loaded(key, version)
        assert not isinstance(private, AESGCM | bytes)
        return format_tagged(version.version, scheme.sign(private, need_bytes(data, "data")))

    def verify(
        self,
        name: str,
        data: bytes,
        signature: str,
        *,
        hash_algorithm: str | None = None,
        signature_algorithm: str | None = None,
        prehashed: bool = False,
    ) -> bool:
        """True iff `signature` (from `sign`, same options) is valid for `data` under the
        version it names. Versions below min_decryption_version raise KeyStateError."""
        key = self._ring.usable(name, "verify")
        scheme = keytypes.signature_scheme(
            key.type,
            hash_algorithm=hash_algorithm,
            signature_algorithm=signature_algorithm,
            prehashed=need_flag(prehashed, "prehashed"),
        )
        data = need_bytes(data, "data")
        number, raw = parse_tagged(signature, "signature")
        if number > key.latest.version:
            return False
        private = self._ring.loaded(key, self._ring.version_for_use(key, number))
        assert not isinstance(private, AESGCM | bytes)
        return scheme.verify(private.public_key(), data, raw)

    def hmac(self, name: str, data: bytes) -> str:
        """HMAC-SHA256 of `data` under the latest version."""
        key = self._ring.usable(name, "hmac")
        version = key.latest
        secret = self._ring.loaded(key, version)
        assert isinstance(secret, bytes)
        mac = hmac_mod.new(secret, need_bytes(data, "data"), hashlib.sha256).digest()
        return format_tagged(version.version, mac)

    def verify_hmac(self, name: str, data: bytes, mac: str) -> bool:
        """True iff `mac` is the HMAC of `data` under the version it names (constant-time)."""
        key = self._ring.usable(name, "hmac")
        data = need_bytes(data, "data")
        number, raw = parse_tagged(mac, "mac")
        if number > key.latest.version:
            return False
        secret = self._ring.loaded(key, self._ring.version_for_use(key, number))
        assert isinstance(secret, bytes)
        expected = hmac_mod.new(secret, data, hashlib.sha256).digest()
        return hmac_mod.compare_digest(expected, raw)


def _batch(items: Sequence[T], kind: type[T], run: Callable[[T], str | bytes]) -> list[BatchResult]:
    if not isinstance(items, Sequence) or isinstance(items, str | bytes):
        raise InvalidRequestError("batch items must be a list")
    if not 1 <= len(items) <= MAX_BATCH_ITEMS:
        raise InvalidRequestError(f"a batch holds 1..{MAX_BATCH_ITEMS} items")
    results: list[BatchResult] = []
    for item in items:
        try:
            if not isinstance(item, kind):
                raise InvalidRequestError(f"batch item must be a {kind.__name__}")
            results.append(BatchResult(value=run(item)))
        except KMSError as exc:
            results.append(BatchResult(error=BatchItemError(exc.code, exc.message)))
    return results


# --------------------------------------------------------------------------- keyless operations


def random_bytes(length: int) -> bytes:
    """`length` (1..1024) bytes from the OS CSPRNG."""
    if (
        not isinstance(length, int)
        or isinstance(length, bool)
        or not (1 <= length <= MAX_RANDOM_BYTES)
    ):
        raise InvalidRequestError(f"random length must be 1..{MAX_RANDOM_BYTES} bytes")
    return os.urandom(length)


def generate_aes_key() -> str:
    """The tutorial's `/generate-aes-key`: a fresh AES-256 key, base64, never stored."""
    return base64.b64encode(os.urandom(32)).decode("ascii")


def generate_rsa_key_pair() -> RsaKeyPair:
    """The tutorial's `/generate-rsa-key-pair`: a fresh RSA-2048 pair as PEM, never stored."""
    private: PrivateKey = rsa.generate_private_key(65537, 2048)
    return RsaKeyPair(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode("ascii"),
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii"),
    )
