"""Cryptographic operation routes: encrypt, decrypt, rewrap, data keys, sign/verify, HMAC,
random, the batch forms, and the tutorial's two key-generation endpoints.

Batch shape (a choice, documented in docs/api.md): separate routes
`/v1/keys/{name}/encrypt-batch` and `/decrypt-batch` taking ``{"items": [...]}`` and
answering ``{"results": [...]}`` in the same order, each result holding either its value or
``{"error": {"code", "message"}}``. A malformed request (bad base64, unknown field) fails as a
whole with 400; a key-level failure (unknown, disabled, no permission) fails as a whole with
its status; only per-item failures (altered or foreign ciphertext, other associated data) are
reported per item, with the codes of the error table.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request

from enclave_kms.enclave.api.models import (
    KEY_NAME_REGEX,
    AesKeyOut,
    CiphertextOut,
    DataKeyIn,
    DataKeyOut,
    DecryptBatchIn,
    DecryptBatchOut,
    DecryptIn,
    DecryptResult,
    EncryptBatchIn,
    EncryptBatchOut,
    EncryptIn,
    EncryptResult,
    HmacIn,
    ItemError,
    MacOut,
    PlaintextOut,
    RandomIn,
    RandomOut,
    RsaKeyPairOut,
    SignatureOut,
    SignIn,
    ValidOut,
    VerifyHmacIn,
    VerifyIn,
)
from enclave_kms.enclave.api.support import add_route, app_context, new_router
from enclave_kms.enclave.keys.service import BatchResult, DecryptItem, EncryptItem, KMSService

PathName = Annotated[str, Path(pattern=KEY_NAME_REGEX, description="key name")]


def _kms(request: Request) -> KMSService:
    return app_context(request).kms


def encrypt(request: Request, name: PathName, body: EncryptIn) -> CiphertextOut:
    """AES-256-GCM under the latest version: ``ekms:v<N>:<base64>``."""
    ct = _kms(request).encrypt(name, body.plaintext, associated_data=body.associated_data)
    return CiphertextOut(ciphertext=ct)


def decrypt(request: Request, name: PathName, body: DecryptIn) -> PlaintextOut:
    """The plaintext, if the ciphertext authenticates under this key and associated data."""
    pt = _kms(request).decrypt(name, body.ciphertext, associated_data=body.associated_data)
    return PlaintextOut(plaintext=pt)


def rewrap(request: Request, name: PathName, body: DecryptIn) -> CiphertextOut:
    """Re-encrypt under the latest version; the plaintext never leaves the enclave."""
    ct = _kms(request).rewrap(name, body.ciphertext, associated_data=body.associated_data)
    return CiphertextOut(ciphertext=ct)


def _error(result: BatchResult) -> ItemError | None:
    return None if result.error is None else ItemError(**vars(result.error))


def encrypt_batch(request: Request, name: PathName, body: EncryptBatchIn) -> EncryptBatchOut:
    """Encrypt every item; per-item errors."""
    items = [EncryptItem(i.plaintext, i.associated_data) for i in body.items]
    results = _kms(request).encrypt_batch(name, items)
    return EncryptBatchOut(
        results=[
            EncryptResult(ciphertext=r.value if isinstance(r.value, str) else None, error=_error(r))
            for r in results
        ]
    )


def decrypt_batch(request: Request, name: PathName, body: DecryptBatchIn) -> DecryptBatchOut:
    """Decrypt every item; per-item errors."""
    items = [DecryptItem(i.ciphertext, i.associated_data) for i in body.items]
    results = _kms(request).decrypt_batch(name, items)
    return DecryptBatchOut(
        results=[
            DecryptResult(
                plaintext=r.value if isinstance(r.value, bytes) else None, error=_error(r)
            )
            for r in results
        ]
    )


def datakey(request: Request, name: PathName, body: DataKeyIn) -> DataKeyOut:
    """A fresh 256-bit data key encrypted under the key (and in plaintext unless declined)."""
    found = _kms(request).generate_data_key(
        name, include_plaintext=body.include_plaintext, associated_data=body.associated_data
    )
    return DataKeyOut(ciphertext=found.ciphertext, plaintext=found.plaintext)


def sign(request: Request, name: PathName, body: SignIn) -> SignatureOut:
    """Sign the message (or its digest, if `prehashed`) with the latest version."""
    signature = _kms(request).sign(
        name,
        body.input,
        hash_algorithm=body.hash_algorithm,
        signature_algorithm=body.signature_algorithm,
        prehashed=body.prehashed,
    )
    return SignatureOut(signature=signature)


def verify(request: Request, name: PathName, body: VerifyIn) -> ValidOut:
    """Whether the signature is valid; a wrong signature is `{"valid": false}`, not an error."""
    valid = _kms(request).verify(
        name,
        body.input,
        body.signature,
        hash_algorithm=body.hash_algorithm,
        signature_algorithm=body.signature_algorithm,
        prehashed=body.prehashed,
    )
    return ValidOut(valid=valid)


def hmac(request: Request, name: PathName, body: HmacIn) -> MacOut:
    """HMAC-SHA256 under the latest version."""
    return MacOut(mac=_kms(request).hmac(name, body.input))


def verify_hmac(request: Request, name: PathName, body: VerifyHmacIn) -> ValidOut:
    """Whether the MAC is valid (constant-time comparison)."""
    return ValidOut(valid=_kms(request).verify_hmac(name, body.input, body.mac))


def random(request: Request, body: RandomIn) -> RandomOut:
    """Bytes from the enclave's CSPRNG."""
    return RandomOut(random=_kms(request).random_bytes(body.length))


def generate_aes_key(request: Request) -> AesKeyOut:
    """The tutorial's endpoint: a fresh AES-256 key (base64), never stored."""
    return AesKeyOut(aes_key=_kms(request).generate_aes_key())


def generate_rsa_key_pair(request: Request) -> RsaKeyPairOut:
    """The tutorial's endpoint: a fresh RSA-2048 key pair (PEM), never stored."""
    pair = _kms(request).generate_rsa_key_pair()
    return RsaKeyPairOut(private_key=pair.private_key_pem, public_key=pair.public_key_pem)


_ROUTES = (
    ("/v1/keys/{name}/encrypt", encrypt, "encrypt", "encrypt"),
    ("/v1/keys/{name}/decrypt", decrypt, "decrypt", "decrypt"),
    ("/v1/keys/{name}/encrypt-batch", encrypt_batch, "encrypt.batch", "encrypt"),
    ("/v1/keys/{name}/decrypt-batch", decrypt_batch, "decrypt.batch", "decrypt"),
    ("/v1/keys/{name}/rewrap", rewrap, "rewrap", "rewrap"),
    ("/v1/keys/{name}/datakey", datakey, "datakey", "datakey"),
    ("/v1/keys/{name}/sign", sign, "sign", "sign"),
    ("/v1/keys/{name}/verify", verify, "verify", "verify"),
    ("/v1/keys/{name}/hmac", hmac, "hmac", "hmac"),
    ("/v1/keys/{name}/verify-hmac", verify_hmac, "verify-hmac", "hmac"),
    ("/v1/random", random, "random", "random"),
    ("/generate-aes-key", generate_aes_key, "generate-aes-key", "datakey"),
    ("/generate-rsa-key-pair", generate_rsa_key_pair, "generate-rsa-key-pair", "datakey"),
)
"""(path, endpoint, audit operation, token permission); all POST."""


def router() -> APIRouter:
    r = new_router()
    for path, endpoint, op, permission in _ROUTES:
        add_route(
            r,
            "POST",
            path,
            endpoint,
            op=op,
            permission=permission,
            exclude_none=endpoint in (encrypt_batch, decrypt_batch),
            # Milliseconds of CPU at most, on a cached key: run on the event loop.
            inline=endpoint is not generate_rsa_key_pair,
        )
    return r
