"""The key-release wire contract, defined once for the enclave and the workload SDK (DESIGN §15).

Binding. A workload proves it holds a fresh recipient key by putting into its evidence

    report_data[0:32] = SHA-256("enclave-kms/release/v1" ‖ nonce (32) ‖ recipient public key (32))

where the nonce is the one the KMS issued for this request and the recipient key is a raw
X25519 public key the workload generated inside its TEE. report_data[32:64] is the
workload's own (not checked). Everything the binding covers is fixed-length, so the
concatenation is unambiguous.

Answer. The secret goes back as single-shot HPKE (RFC 9180, base mode) with the suite
DHKEM(X25519, HKDF-SHA256), HKDF-SHA256, AES-256-GCM, to that recipient key. `info` is the
canonical CBOR of ["enclave-kms/release/v1", key name, key version, operation, nonce], so an
answer opens only for the request it was made for: not under another key, version, operation
or nonce. (`cryptography`'s public HPKE API takes `info` only; with single-shot HPKE a
separate AAD would add nothing `info` does not bind.) The sealed bytes are `enc ‖ ciphertext`
(enc: 32 bytes).
"""

from __future__ import annotations

import hashlib
import hmac

import cbor2
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.hpke import AEAD, KDF, KEM, Suite
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from enclave_kms.errors import CryptoOperationError, InvalidRequestError

DOMAIN = b"enclave-kms/release/v1"
NONCE_BYTES = 32
PUBLIC_KEY_BYTES = 32
SUITE_NAME = "DHKEM(X25519,HKDF-SHA256)/HKDF-SHA256/AES-256-GCM"
OPERATIONS = ("export", "decrypt", "datakey")
"""(a) an exportable key's material, (b) the plaintext of a decryption, (c) a fresh data key."""

_SUITE = Suite(KEM.X25519, KDF.HKDF_SHA256, AEAD.AES_256_GCM)


def _need(value: object, size: int, what: str) -> bytes:
    if not isinstance(value, bytes) or len(value) != size:
        raise InvalidRequestError(f"{what} must be {size} bytes")
    return value


def binding(nonce: bytes, recipient_public_key: bytes) -> bytes:
    """The 32 bytes the workload's report_data must start with."""
    nonce = _need(nonce, NONCE_BYTES, "nonce")
    key = _need(recipient_public_key, PUBLIC_KEY_BYTES, "recipient public key")
    return hashlib.sha256(DOMAIN + nonce + key).digest()


def binds(report_data: bytes, nonce: bytes, recipient_public_key: bytes) -> bool:
    return hmac.compare_digest(report_data[:32], binding(nonce, recipient_public_key))


def answer_info(key_name: str, version: int, operation: str, nonce: bytes) -> bytes:
    if operation not in OPERATIONS:
        raise InvalidRequestError(f"operation must be one of {', '.join(OPERATIONS)}")
    return cbor2.dumps(
        [DOMAIN.decode(), key_name, version, operation, _need(nonce, NONCE_BYTES, "nonce")],
        canonical=True,
    )


def seal(plaintext: bytes, recipient_public_key: bytes, info: bytes) -> bytes:
    """HPKE-seal `plaintext` to the raw X25519 `recipient_public_key` (enc ‖ ciphertext)."""
    key = X25519PublicKey.from_public_bytes(
        _need(recipient_public_key, PUBLIC_KEY_BYTES, "recipient public key")
    )
    return _SUITE.encrypt(plaintext, key, info=info)


def open_sealed(sealed: bytes, private_key: X25519PrivateKey, info: bytes) -> bytes:
    """Open an answer; CryptoOperationError if it was not sealed to this key for this `info`."""
    try:
        return _SUITE.decrypt(sealed, private_key, info=info)
    except Exception:  # noqa: BLE001 - InvalidTag or a malformed enc: one answer
        raise CryptoOperationError(
            "the release answer does not open with this recipient key for this request"
        ) from None


def raw_public_key(private_key: X25519PrivateKey) -> bytes:
    return private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
