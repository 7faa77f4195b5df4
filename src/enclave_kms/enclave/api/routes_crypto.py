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
    DataKeyIn,
    DecryptBatchIn,
    DecryptIn,
    EncryptBatchIn,
    EncryptIn,
    HmacIn,
    RandomIn,
    SignIn,
    VerifyHmacIn,
    VerifyIn,
)
from enclave_kms.enclave.api.support import add_route, app_context, new_router
from enclave_kms.enclave.keys.service import BatchResult, DecryptItem, EncryptItem, KMSService
from enclave_kms.wire import (
    AesKey,
    Ciphertext,
    DataKey,
    DecryptBatch,
    DecryptResult,
    EncryptBatch,
    EncryptResult,
    ItemError,
    Mac,
    Plaintext,
    RandomBytes,
    RsaKeyPair,
    Signature,
    Valid,
)

PathName = Annotated[str, Path(pattern=KEY_NAME_REGEX, description="key name")]


def _kms(request: Request) -> KMSService:
    return app_context(request).kms


# The operations of the hot routes, written once: the FastAPI endpoints below and the ASGI
# dispatcher of api/hot.py both call these, with the same request and response models.


def do_encrypt(kms: KMSService, name: str, body: EncryptIn) -> Ciphertext:
    ct = kms.encrypt(name, body.plaintext, associated_data=body.associated_data)
    return Ciphertext(ciphertext=ct)


def do_decrypt(kms: KMSService, name: str, body: DecryptIn) -> Plaintext:
    pt = kms.decrypt(name, body.ciphertext, associated_data=body.associated_data)
    return Plaintext(plaintext=pt)


def do_rewrap(kms: KMSService, name: str, body: DecryptIn) -> Ciphertext:
    ct = kms.rewrap(name, body.ciphertext, associated_data=body.associated_data)
    return Ciphertext(ciphertext=ct)


def do_datakey(kms: KMSService, name: str, body: DataKeyIn) -> DataKey:
    found = kms.generate_data_key(
        name, include_plaintext=body.include_plaintext, associated_data=body.associated_data
    )
    return DataKey(ciphertext=found.ciphertext, plaintext=found.plaintext)


def do_sign(kms: KMSService, name: str, body: SignIn) -> Signature:
    signature = kms.sign(
        name,
        body.input,
        hash_algorithm=body.hash_algorithm,
        signature_algorithm=body.signature_algorithm,
        prehashed=body.prehashed,
    )
    return Signature(signature=signature)


def do_verify(kms: KMSService, name: str, body: VerifyIn) -> Valid:
    valid = kms.verify(
        name,
        body.input,
        body.signature,
        hash_algorithm=body.hash_algorithm,
        signature_algorithm=body.signature_algorithm,
        prehashed=body.prehashed,
    )
    return Valid(valid=valid)


def do_hmac(kms: KMSService, name: str, body: HmacIn) -> Mac:
    return Mac(mac=kms.hmac(name, body.input))


def do_verify_hmac(kms: KMSService, name: str, body: VerifyHmacIn) -> Valid:
    return Valid(valid=kms.verify_hmac(name, body.input, body.mac))


def encrypt(request: Request, name: PathName, body: EncryptIn) -> Ciphertext:
    """AES-256-GCM under the latest version: ``ekms:v<N>:<base64>``."""
    return do_encrypt(_kms(request), name, body)


def decrypt(request: Request, name: PathName, body: DecryptIn) -> Plaintext:
    """The plaintext, if the ciphertext authenticates under this key and associated data."""
    return do_decrypt(_kms(request), name, body)


def rewrap(request: Request, name: PathName, body: DecryptIn) -> Ciphertext:
    """Re-encrypt under the latest version; the plaintext never leaves the enclave."""
    return do_rewrap(_kms(request), name, body)


def _error(result: BatchResult) -> ItemError | None:
    return None if result.error is None else ItemError(result.error.code, result.error.message)


def encrypt_batch(request: Request, name: PathName, body: EncryptBatchIn) -> EncryptBatch:
    """Encrypt every item; per-item errors."""
    items = [EncryptItem(i.plaintext, i.associated_data) for i in body.items]
    results = _kms(request).encrypt_batch(name, items)
    return EncryptBatch(
        results=tuple(
            EncryptResult(ciphertext=r.value if isinstance(r.value, str) else None, error=_error(r))
            for r in results
        )
    )


def decrypt_batch(request: Request, name: PathName, body: DecryptBatchIn) -> DecryptBatch:
    """Decrypt every item; per-item errors."""
    items = [DecryptItem(i.ciphertext, i.associated_data) for i in body.items]
    results = _kms(request).decrypt_batch(name, items)
    return DecryptBatch(
        results=tuple(
            DecryptResult(
                plaintext=r.value if isinstance(r.value, bytes) else None, error=_error(r)
            )
            for r in results
        )
    )


def datakey(request: Request, name: PathName, body: DataKeyIn) -> DataKey:
    """A fresh 256-bit data key encrypted under the key (and in plaintext unless declined)."""
    return do_datakey(_kms(request), name, body)


def sign(request: Request, name: PathName, body: SignIn) -> Signature:
    """Sign the message (or its digest, if `prehashed`) with the latest version."""
    return do_sign(_kms(request), name, body)


def verify(request: Request, name: PathName, body: VerifyIn) -> Valid:
    """Whether the signature is valid; a wrong signature is `{"valid": false}`, not an error."""
    return do_verify(_kms(request), name, body)


def hmac(request: Request, name: PathName, body: HmacIn) -> Mac:
    """HMAC-SHA256 under the latest version."""
    return do_hmac(_kms(request), name, body)


def verify_hmac(request: Request, name: PathName, body: VerifyHmacIn) -> Valid:
    """Whether the MAC is valid (constant-time comparison)."""
    return do_verify_hmac(_kms(request), name, body)


def random(request: Request, body: RandomIn) -> RandomBytes:
    """Bytes from the enclave's CSPRNG."""
    return RandomBytes(random=_kms(request).random_bytes(body.length))


def generate_aes_key(request: Request) -> AesKey:
    """The tutorial's endpoint: a fresh AES-256 key (base64), never stored."""
    return AesKey(aes_key=_kms(request).generate_aes_key())


def generate_rsa_key_pair(request: Request) -> RsaKeyPair:
    """The tutorial's endpoint: a fresh RSA-2048 key pair (PEM), never stored."""
    pair = _kms(request).generate_rsa_key_pair()
    return RsaKeyPair(private_key=pair.private_key_pem, public_key=pair.public_key_pem)


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


HOT_OPERATIONS: dict[str, tuple[type[BaseModel], Callable[[KMSService, str, Any], Any], type]] = {
    "encrypt": (EncryptIn, do_encrypt, Ciphertext),
    "decrypt": (DecryptIn, do_decrypt, Plaintext),
    "rewrap": (DecryptIn, do_rewrap, Ciphertext),
    "datakey": (DataKeyIn, do_datakey, DataKey),
    "sign": (SignIn, do_sign, Signature),
    "verify": (VerifyIn, do_verify, Valid),
    "hmac": (HmacIn, do_hmac, Mac),
    "verify-hmac": (VerifyHmacIn, do_verify_hmac, Valid),
}
"""`/v1/keys/{name}/<suffix>` → (request model, operation, answer shape): the routes that
api/hot.py serves without FastAPI (their audit operation and permission are the `_ROUTES` rows)."""


def hot_routes() -> dict[str, tuple[str, str]]:
    """suffix → (audit operation, permission) of every hot route, from `_ROUTES`."""
    out = {}
    for path, _endpoint, op, permission in _ROUTES:
        suffix = path.removeprefix("/v1/keys/{name}/")
        if suffix in HOT_OPERATIONS:
            out[suffix] = (op, permission)
    return out
