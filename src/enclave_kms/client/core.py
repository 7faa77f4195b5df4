"""Request building and answer parsing, shared by `KMSClient` and `AsyncKMSClient`.

Each API operation is a function returning a `Call`: method, path, JSON body, whether the
request needs the bearer token, whether it may be retried, and how to turn the answer into a
typed result. The two clients only send Calls; so the sync and async APIs cannot drift apart,
and neither contains any request shape of its own.

Retries: a request whose handshake failed never left, so it may always be re-sent. Otherwise
only `idempotent` calls are retried after a transport error or a 503 that acknowledged
nothing: reads, and operations that change no state (cryptographic operations, `configure`
to the same values, revoking a token). Creating, rotating, importing, scheduling deletion and
issuing tokens are never retried: a lost answer must not become two keys or two tokens.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from enclave_kms import wire
from enclave_kms.client import state_head
from enclave_kms.client.errors import (
    error_for_item,
    error_for_response,
    parse_error_body,
)
from enclave_kms.client.types import (
    AuditHead,
    BatchItem,
    DataKey,
    ExportedKey,
    Health,
    IssuedToken,
    KeyInfo,
    KeyPage,
    ReplicaPolicy,
    RsaKeyPair,
    TokenInfo,
    TokenPage,
    TokenPolicy,
)
from enclave_kms.errors import (
    InvalidRequestError,
    ServerError,
    ServerUnreachableError,
    UsageError,
)
from enclave_kms.wire import RETRYABLE_CODES

T = TypeVar("T")

OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)


@dataclass(frozen=True)
class Call(Generic[T]):
    """One API request and how to read its answer. The body may hold secrets: never log it."""

    method: str
    path: str
    parse: Callable[[Any], T]
    body: Mapping[str, Any] | None = None
    params: Mapping[str, str | int] | None = None
    auth: bool = True
    idempotent: bool = False
    slow: bool = False  # e.g. RSA key generation inside the enclave: a longer read timeout
    # The server's state heads known when this call was made (client/state_head.py).
    floor: Mapping[str, tuple[int, str]] = field(
        default_factory=lambda: state_head.current().snapshot(), repr=False, compare=False
    )

    def __repr__(self) -> str:  # the body may carry plaintext or key material
        return f"Call({self.method} {self.path})"


# --------------------------------------------------------------------------- value helpers


def b64(data: bytes) -> str:
    if not isinstance(data, bytes | bytearray | memoryview):
        raise UsageError(f"expected bytes, got {type(data).__name__}")
    return base64.b64encode(bytes(data)).decode("ascii")


def unb64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise ServerError(f"answer field {what} is not a base64 string")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise ServerError(f"answer field {what} is not valid base64") from None


def tagged(value: str | bytes, what: str) -> str:
    """A ciphertext/signature/MAC as the service wrote it (``ekms:v<N>:<base64>``)."""
    if isinstance(value, bytes | bytearray):
        try:
            value = bytes(value).decode("ascii")
        except UnicodeDecodeError:
            raise InvalidRequestError(f"{what} is not an ekms:v<N>:… string") from None
    if not isinstance(value, str):
        raise UsageError(f"{what} must be a str or bytes")
    return value.strip()


def _answer(cls: type[T]) -> Callable[[Any], T]:
    """The parser of an answer shaped as the wire dataclass `cls`."""
    return functools.partial(wire.decode, cls)


def _one(cls: type[Any], name: str) -> Callable[[Any], Any]:
    """The parser of a one-field answer (`{"ciphertext": …}`): that field's value."""
    return lambda doc: getattr(wire.decode(cls, doc), name)


def _results(doc: Any, count: int) -> list[Any]:
    if not isinstance(doc, dict) or not isinstance(doc.get("results"), list):
        raise ServerError("the server's answer has no list 'results'")
    results: list[Any] = doc["results"]
    if len(results) != count:
        raise ServerError(f"batch answer has {len(results)} results for {count} items")
    return results


def _batch_parser(shape: type[Any], value_field: str, count: int) -> Callable[[Any], list[Any]]:
    def parse(doc: Any) -> list[Any]:
        out: list[Any] = []
        for item in _results(doc, count):
            if isinstance(item, dict) and item.get("error") is not None:
                out.append(error_for_item(item["error"]))
                continue
            value = getattr(wire.decode(shape, item), value_field)
            if value is None:
                raise ServerError(f"a batch result has neither {value_field!r} nor an error")
            out.append(value)
        return out

    return parse


# --------------------------------------------------------------------------- sys


def health() -> Call[Health]:
    return Call("GET", "/v1/health", _answer(Health), auth=False, idempotent=True)


def init() -> Call[IssuedToken]:
    return Call("POST", "/v1/sys/init", _answer(IssuedToken), auth=False)


def audit_head() -> Call[AuditHead]:
    return Call("GET", "/v1/audit", _answer(AuditHead), idempotent=True)


def read_replica_policy() -> Call[ReplicaPolicy]:
    return Call("GET", "/v1/sys/replica-policy", _answer(ReplicaPolicy), idempotent=True)


def write_replica_policy(policy: ReplicaPolicy) -> Call[ReplicaPolicy]:
    if not isinstance(policy, ReplicaPolicy):
        raise UsageError("write_replica_policy needs a ReplicaPolicy")
    body = {
        "mr_signer": policy.mr_signer,
        "isv_prod_id": policy.isv_prod_id,
        "min_isv_svn": policy.min_isv_svn,
        "mr_enclave": list(policy.mr_enclave),
        "accepted_tcb_statuses": list(policy.accepted_tcb_statuses),
    }
    return Call("PUT", "/v1/sys/replica-policy", _answer(ReplicaPolicy), body=body, idempotent=True)


# --------------------------------------------------------------------------- keys


def _key_path(name: str, suffix: str = "") -> str:
    if not isinstance(name, str) or not name:
        raise UsageError("a key name must be a non-empty string")
    return f"/v1/keys/{quote(name, safe='')}{suffix}"


def create_key(name: str, type: str, exportable: bool) -> Call[KeyInfo]:
    body = {"name": name, "type": type, "exportable": exportable}
    return Call("POST", "/v1/keys", _answer(KeyInfo), body=body, slow=type.startswith("rsa-"))


def list_keys(after: str, limit: int) -> Call[KeyPage]:
    params: dict[str, str | int] = {"limit": limit}
    if after:
        params["after"] = after
    return Call("GET", "/v1/keys", _answer(KeyPage), params=params, idempotent=True)


def read_key(name: str) -> Call[KeyInfo]:
    return Call("GET", _key_path(name), _answer(KeyInfo), idempotent=True)


def rotate_key(name: str) -> Call[KeyInfo]:
    return Call("POST", _key_path(name, "/rotate"), _answer(KeyInfo), body={}, slow=True)


def configure_key(
    name: str, min_decryption_version: int | None, enabled: bool | None
) -> Call[KeyInfo]:
    body: dict[str, Any] = {}
    if min_decryption_version is not None:
        body["min_decryption_version"] = min_decryption_version
    if enabled is not None:
        body["enabled"] = enabled
    if not body:
        raise UsageError("configure: give min_decryption_version and/or enabled")
    return Call("PATCH", _key_path(name), _answer(KeyInfo), body=body, idempotent=True)


def delete_key(name: str, waiting_period_days: int) -> Call[KeyInfo]:
    params = {"waiting_period_days": waiting_period_days}
    return Call("DELETE", _key_path(name), _answer(KeyInfo), params=params)


def restore_key(name: str) -> Call[KeyInfo]:
    return Call("POST", _key_path(name, "/restore"), _answer(KeyInfo), body={})


def wrapping_key() -> Call[str]:
    return Call(
        "GET", "/v1/sys/wrapping-key", _one(wire.WrappingKey, "public_key_pem"), idempotent=True
    )


def wrap_material(wrapping_key_pem: str, material: bytes) -> bytes:
    """BYOK wrapping, done locally: RSA-OAEP-SHA256 for short material, else
    CKM_RSA_AES_KEY_WRAP (RSA-OAEP of a fresh AES-256 key, then AES-KWP of the material)."""
    try:
        key = serialization.load_pem_public_key(wrapping_key_pem.encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        raise ServerError("the server's wrapping key is not a PEM public key") from None
    if not isinstance(key, rsa.RSAPublicKey) or key.key_size < 3072:
        raise ServerError("the server's wrapping key is not an RSA key of at least 3072 bits")
    if not isinstance(material, bytes) or not material:
        raise UsageError("key material must be non-empty bytes")
    if len(material) <= key.key_size // 8 - 66:
        return key.encrypt(material, OAEP)
    import os

    kek = os.urandom(32)
    return key.encrypt(kek, OAEP) + aes_key_wrap_with_padding(kek, material)


def import_key(name: str, type: str, wrapped: bytes, exportable: bool) -> Call[KeyInfo]:
    body = {"name": name, "type": type, "wrapped_material": b64(wrapped), "exportable": exportable}
    return Call("POST", "/v1/keys/import", _answer(KeyInfo), body=body)


def import_key_version(name: str, wrapped: bytes) -> Call[KeyInfo]:
    body = {"wrapped_material": b64(wrapped)}
    return Call("POST", _key_path(name, "/import"), _answer(KeyInfo), body=body)


def export_key(name: str, version: int | None) -> Call[ExportedKey]:
    params = None if version is None else {"version": version}
    return Call(
        "GET", _key_path(name, "/export"), _answer(ExportedKey), params=params, idempotent=True
    )


# --------------------------------------------------------------------------- crypto


def _with_aad(body: dict[str, Any], associated_data: bytes | None) -> dict[str, Any]:
    if associated_data is not None:
        body["associated_data"] = b64(associated_data)
    return body


def encrypt(name: str, plaintext: bytes, associated_data: bytes | None) -> Call[str]:
    body = _with_aad({"plaintext": b64(plaintext)}, associated_data)
    return Call(
        "POST",
        _key_path(name, "/encrypt"),
        _one(wire.Ciphertext, "ciphertext"),
        body,
        idempotent=True,
    )


def decrypt(name: str, ciphertext: str | bytes, associated_data: bytes | None) -> Call[bytes]:
    body = _with_aad({"ciphertext": tagged(ciphertext, "ciphertext")}, associated_data)
    return Call(
        "POST",
        _key_path(name, "/decrypt"),
        _one(wire.Plaintext, "plaintext"),
        body,
        idempotent=True,
    )


def rewrap(name: str, ciphertext: str | bytes, associated_data: bytes | None) -> Call[str]:
    body = _with_aad({"ciphertext": tagged(ciphertext, "ciphertext")}, associated_data)
    return Call(
        "POST",
        _key_path(name, "/rewrap"),
        _one(wire.Ciphertext, "ciphertext"),
        body,
        idempotent=True,
    )


def _items(items: Sequence[bytes | str | BatchItem]) -> list[BatchItem]:
    out = [i if isinstance(i, BatchItem) else BatchItem(i) for i in items]
    if not out:
        raise UsageError("a batch needs at least one item")
    return out


def encrypt_batch(name: str, items: Sequence[bytes | BatchItem]) -> Call[list[Any]]:
    batch = _items(items)
    plaintexts = [i.data for i in batch]
    if not all(isinstance(p, bytes) for p in plaintexts):
        raise UsageError("encrypt_batch: every plaintext must be bytes")
    body = {
        "items": [
            _with_aad({"plaintext": b64(p)}, i.associated_data)  # type: ignore[arg-type]
            for p, i in zip(plaintexts, batch, strict=True)
        ]
    }
    parse = _batch_parser(wire.EncryptResult, "ciphertext", len(batch))
    return Call("POST", _key_path(name, "/encrypt-batch"), parse, body, idempotent=True)


def decrypt_batch(name: str, items: Sequence[str | BatchItem]) -> Call[list[Any]]:
    batch = _items(items)
    body = {
        "items": [
            _with_aad({"ciphertext": tagged(i.data, "ciphertext")}, i.associated_data)
            for i in batch
        ]
    }
    parse = _batch_parser(wire.DecryptResult, "plaintext", len(batch))
    return Call("POST", _key_path(name, "/decrypt-batch"), parse, body, idempotent=True)


def datakey(name: str, include_plaintext: bool, associated_data: bytes | None) -> Call[DataKey]:
    body = _with_aad({"include_plaintext": include_plaintext}, associated_data)
    return Call("POST", _key_path(name, "/datakey"), _answer(DataKey), body, idempotent=True)


def _sign_body(
    message: bytes,
    hash_algorithm: str | None,
    signature_algorithm: str | None,
    prehashed: bool,
) -> dict[str, Any]:
    body: dict[str, Any] = {"input": b64(message), "prehashed": prehashed}
    if hash_algorithm is not None:
        body["hash_algorithm"] = hash_algorithm
    if signature_algorithm is not None:
        body["signature_algorithm"] = signature_algorithm
    return body


def sign(
    name: str,
    message: bytes,
    *,
    hash_algorithm: str | None,
    signature_algorithm: str | None,
    prehashed: bool,
) -> Call[str]:
    body = _sign_body(message, hash_algorithm, signature_algorithm, prehashed)
    return Call(
        "POST", _key_path(name, "/sign"), _one(wire.Signature, "signature"), body, idempotent=True
    )


def verify(
    name: str,
    message: bytes,
    signature: str | bytes,
    *,
    hash_algorithm: str | None,
    signature_algorithm: str | None,
    prehashed: bool,
) -> Call[bool]:
    body = _sign_body(message, hash_algorithm, signature_algorithm, prehashed)
    body["signature"] = tagged(signature, "signature")
    return Call(
        "POST", _key_path(name, "/verify"), _one(wire.Valid, "valid"), body, idempotent=True
    )


def hmac(name: str, data: bytes) -> Call[str]:
    body = {"input": b64(data)}
    return Call("POST", _key_path(name, "/hmac"), _one(wire.Mac, "mac"), body, idempotent=True)


def verify_hmac(name: str, data: bytes, mac: str | bytes) -> Call[bool]:
    body = {"input": b64(data), "mac": tagged(mac, "mac")}
    return Call(
        "POST", _key_path(name, "/verify-hmac"), _one(wire.Valid, "valid"), body, idempotent=True
    )


def random(length: int) -> Call[bytes]:
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise UsageError("random: the length must be a positive integer")
    return Call(
        "POST",
        "/v1/random",
        _one(wire.RandomBytes, "random"),
        {"bytes": length},
        idempotent=True,
    )


def generate_aes_key() -> Call[bytes]:
    return Call(
        "POST",
        "/generate-aes-key",
        lambda d: unb64(wire.decode(wire.AesKey, d).aes_key, "aes_key"),
        {},
        idempotent=True,
    )


def generate_rsa_key_pair() -> Call[RsaKeyPair]:
    return Call(
        "POST", "/generate-rsa-key-pair", _answer(RsaKeyPair), {}, idempotent=True, slow=True
    )


# --------------------------------------------------------------------------- tokens


def _token_path(token_id: str) -> str:
    if not isinstance(token_id, str) or not token_id:
        raise UsageError("a token id must be a non-empty string")
    return f"/v1/tokens/{quote(token_id, safe='')}"


def create_token(
    name: str,
    policies: Sequence[TokenPolicy | Mapping[str, Sequence[str]]],
    ttl_seconds: int | None,
) -> Call[IssuedToken]:
    body: dict[str, Any] = {
        "name": name,
        "policies": [TokenPolicy.coerce(p).to_json() for p in policies],
    }
    if ttl_seconds is not None:
        body["ttl_seconds"] = ttl_seconds
    return Call("POST", "/v1/tokens", _answer(IssuedToken), body)


def list_tokens(after: str, limit: int) -> Call[TokenPage]:
    params: dict[str, str | int] = {"limit": limit}
    if after:
        params["after"] = after
    return Call("GET", "/v1/tokens", _answer(TokenPage), params=params, idempotent=True)


def read_token(token_id: str) -> Call[TokenInfo]:
    return Call("GET", _token_path(token_id), _answer(TokenInfo), idempotent=True)


def revoke_token(token_id: str) -> Call[TokenInfo]:
    return Call("DELETE", _token_path(token_id), _answer(TokenInfo), idempotent=True)


# --------------------------------------------------------------------------- answers, retries


def read_answer(
    call: Call[T], status: int, content: bytes, headers: Mapping[str, str] | None = None
) -> T:
    """The typed result of an answer, or the typed error the server sent; an answer whose
    state head goes behind one seen before the call was made is refused."""
    if headers is not None:
        state_head.current().observe(headers.get(state_head.HEADER), call.floor)
    if status >= 400:
        raise error_for_response(status, content)
    try:
        doc = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        raise ServerError(f"{call.method} {call.path}: the answer is not JSON") from None
    return call.parse(doc)


def retry_status(call: Call[Any], status: int, content: bytes) -> bool:
    """A 503 that acknowledged nothing (storage or audit unavailable), for a safe call."""
    if status != 503 or not call.idempotent:
        return False
    parsed = parse_error_body(content)
    return parsed is not None and parsed[0] in RETRYABLE_CODES


def retry_transport(call: Call[Any], exc: httpx.TransportError) -> bool:
    """A connection that never opened sent nothing; anything later only for a safe call."""
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return True
    return call.idempotent and isinstance(
        exc, httpx.TimeoutException | httpx.NetworkError | httpx.RemoteProtocolError
    )


def transport_error(call: Call[Any], exc: httpx.TransportError, base: str) -> ServerError:
    if isinstance(exc, httpx.ConnectTimeout):
        return ServerUnreachableError(f"cannot reach {base} (connection timed out)")
    if isinstance(exc, httpx.TimeoutException):
        return ServerError(f"{call.method} {call.path}: {base} did not answer in time")
    if isinstance(exc, httpx.ConnectError):
        return ServerUnreachableError(f"cannot reach {base} ({type(exc).__name__})")
    return ServerError(
        f"{call.method} {call.path}: connection to {base} failed ({type(exc).__name__})"
    )


def backoff_delay(attempt: int, base: float) -> float:
    """Exponential back-off: base, 2·base, 4·base… (attempt counts from 1)."""
    return float(base * (2 ** (attempt - 1)))
