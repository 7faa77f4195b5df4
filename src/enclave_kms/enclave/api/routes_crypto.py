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

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from pydantic import BaseModel

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


# The operations of the hot routes, written once: the FastAPI endpoints below and the ASGI
# dispatcher of api/hot.py both call these, with the same request and response models.


def do_encrypt(kms: KMSService, name: str, body: EncryptIn) -> CiphertextOut:
    ct = kms.encrypt(name, body.plaintext, associated_data=body.associated_data)
    return CiphertextOut(ciphertext=ct)


def do_decrypt(kms: KMSService, name: str, body: DecryptIn) -> PlaintextOut:
    pt = kms.decrypt(name, body.ciphertext, associated_data=body.associated_data)
    return PlaintextOut(plaintext=pt)


def do_rewrap(kms: KMSService, name: str, body: DecryptIn) -> CiphertextOut:
    ct = kms.rewrap(name, body.ciphertext, associated_data=body.associated_data)
    return CiphertextOut(ciphertext=ct)


def do_datakey(kms: KMSService, name: str, body: DataKeyIn) -> DataKeyOut:
    found = kms.generate_data_key(
        name, include_plaintext=body.include_plaintext, associated_data=body.associated_data
    )
    return DataKeyOut(ciphertext=found.ciphertext, plaintext=found.plaintext)


def do_sign(kms: KMSService, name: str, body: SignIn) -> SignatureOut:
    signature = kms.sign(
        name,
        body.input,
        hash_algorithm=body.hash_algorithm,
        signature_algorithm=body.signature_algorithm,
        prehashed=body.prehashed,
    )
    return SignatureOut(signature=signature)


def do_verify(kms: KMSService, name: str, body: VerifyIn) -> ValidOut:
    valid = kms.verify(
        name,
        body.input,
        body.signature,
        hash_algorithm=body.hash_algorithm,
        signature_algorithm=body.signature_algorithm,
        prehashed=body.prehashed,
    )
    return ValidOut(valid=valid)


def do_hmac(kms: KMSService, name: str, body: HmacIn) -> MacOut:
    return MacOut(mac=kms.hmac(name, body.input))


def do_verify_hmac(kms: KMSService, name: str, body: VerifyHmacIn) -> ValidOut:
    return ValidOut(valid=kms.verify_hmac(name, body.input, body.mac))


def encrypt(request: Request, name: PathName, body: EncryptIn) -> CiphertextOut:
    """AES-256-GCM under the latest version: ``ekms:v<N>:<base64>``."""
    return do_encrypt(_kms(request), name, body)


def decrypt(request: Request, name: PathName, body: DecryptIn) -> PlaintextOut:
    """The plaintext, if the ciphertext authenticates under this key and associated data."""
    return do_decrypt(_kms(request), name, body)


def rewrap(request: Request, name: PathName, body: DecryptIn) -> CiphertextOut:
    """Re-encrypt under the latest version; the plaintext never leaves the enclave."""
    return do_rewrap(_kms(request), name, body)


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
    return do_datakey(_kms(request), name, body)


def sign(request: Request, name: PathName, body: SignIn) -> SignatureOut:
    """Sign the message (or its digest, if `prehashed`) with the latest version."""
    return do_sign(_kms(request), name, body)


def verify(request: Request, name: PathName, body: VerifyIn) -> ValidOut:
    """Whether the signature is valid; a wrong signature is `{"valid": false}`, not an error."""
    return do_verify(_kms(request), name, body)


def hmac(request: Request, name: PathName, body: HmacIn) -> MacOut:
    """HMAC-SHA256 under the latest version."""
    return do_hmac(_kms(request), name, body)


def verify_hmac(request: Request, name: PathName, body: VerifyHmacIn) -> ValidOut:
    """Whether the MAC is valid (constant-time comparison)."""
    return do_verify_hmac(_kms(request), name, body)


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


HOT_OPERATIONS: dict[str, tuple[type[BaseModel], Callable[[KMSService, str, Any], BaseModel]]] = {
    "encrypt": (EncryptIn, do_encrypt),
    "decrypt": (DecryptIn, do_decrypt),
    "rewrap": (DecryptIn, do_rewrap),
    "datakey": (DataKeyIn, do_datakey),
    "sign": (SignIn, do_sign),
    "verify": (VerifyIn, do_verify),
    "hmac": (HmacIn, do_hmac),
    "verify-hmac": (VerifyHmacIn, do_verify_hmac),
}
"""`/v1/keys/{name}/<suffix>` → (request model, operation): the routes api/hot.py serves
without FastAPI (their audit operation and permission are the `_ROUTES` rows)."""


def hot_routes() -> dict[str, tuple[str, str]]:
    """suffix → (audit operation, permission) of every hot route, from `_ROUTES`."""
    out = {}
    for path, _endpoint, op, permission in _ROUTES:
        suffix = path.removeprefix("/v1/keys/{name}/")
        if suffix in HOT_OPERATIONS:
            out[suffix] = (op, permission)
    return out
