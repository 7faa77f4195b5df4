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
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.keywrap import aes_key_wrap_with_padding

from enclave_kms.client import state_head
from enclave_kms.client.errors import (
    RETRYABLE_CODES,
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
    KeyVersion,
    RsaKeyPair,
    TokenInfo,
    TokenPage,
    TokenPolicy,
)
from enclave_kms.errors import (
    EnclaveKMSError,
    InvalidRequestError,
    ServerError,
    ServerUnreachableError,
    UsageError,
)

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


def _field(doc: Any, name: str) -> Any:
    if not isinstance(doc, dict) or name not in doc:
        raise ServerError(f"the server's answer has no field {name!r}")
    return doc[name]


def _str(doc: Any, name: str) -> str:
    value = _field(doc, name)
    if not isinstance(value, str):
        raise ServerError(f"answer field {name!r} is not a string")
    return value


def _opt_str(doc: Any, name: str) -> str | None:
    value = doc.get(name) if isinstance(doc, dict) else None
    if value is not None and not isinstance(value, str):
        raise ServerError(f"answer field {name!r} is not a string")
    return value


def _int(doc: Any, name: str) -> int:
    value = _field(doc, name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ServerError(f"answer field {name!r} is not an integer")
    return value


def _bool(doc: Any, name: str) -> bool:
    value = _field(doc, name)
    if not isinstance(value, bool):
        raise ServerError(f"answer field {name!r} is not a boolean")
    return value


def _time(doc: Any, name: str) -> datetime:
    value = _str(doc, name)
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ServerError(f"answer field {name!r} is not a timestamp") from None


def _opt_time(doc: Any, name: str) -> datetime | None:
    return None if _opt_str(doc, name) is None else _time(doc, name)


def _list(doc: Any, name: str) -> list[Any]:
    value = _field(doc, name)
    if not isinstance(value, list):
        raise ServerError(f"answer field {name!r} is not a list")
    return value


def _strs(doc: Any, name: str) -> tuple[str, ...]:
    values = _list(doc, name)
    if not all(isinstance(v, str) for v in values):
        raise ServerError(f"answer field {name!r} is not a list of strings")
    return tuple(values)


# --------------------------------------------------------------------------- parsers


def parse_key(doc: Any) -> KeyInfo:
    return KeyInfo(
        name=_str(doc, "name"),
        type=_str(doc, "type"),
        created=_time(doc, "created"),
        latest_version=_int(doc, "latest_version"),
        min_decryption_version=_int(doc, "min_decryption_version"),
        enabled=_bool(doc, "enabled"),
        exportable=_bool(doc, "exportable"),
        deletion_scheduled_at=_opt_time(doc, "deletion_scheduled_at"),
        operations=_strs(doc, "operations"),
        public_key_pem=_opt_str(doc, "public_key_pem"),
        versions=tuple(
            KeyVersion(
                version=_int(v, "version"),
                created=_time(v, "created"),
                public_key_pem=_opt_str(v, "public_key_pem"),
                imported=_bool(v, "imported"),
            )
            for v in _list(doc, "versions")
        ),
    )


def parse_key_page(doc: Any) -> KeyPage:
    return KeyPage(
        keys=tuple(parse_key(k) for k in _list(doc, "keys")),
        next_after=_opt_str(doc, "next_after"),
        unreadable=_strs(doc, "unreadable"),
    )


def parse_token(doc: Any) -> TokenInfo:
    return TokenInfo(
        id=_str(doc, "id"),
        name=_str(doc, "name"),
        policies=tuple(
            TokenPolicy(operations=_strs(p, "operations"), keys=_strs(p, "keys"))
            for p in _list(doc, "policies")
        ),
        created=_time(doc, "created"),
        expires_at=_opt_time(doc, "expires_at"),
        revoked_at=_opt_time(doc, "revoked_at"),
    )


def parse_issued(doc: Any) -> IssuedToken:
    return IssuedToken(info=parse_token(_field(doc, "info")), token=_str(doc, "token"))


def parse_token_page(doc: Any) -> TokenPage:
    return TokenPage(
        tokens=tuple(parse_token(t) for t in _list(doc, "tokens")),
        next_after=_opt_str(doc, "next_after"),
    )


def _results(doc: Any, count: int) -> list[Any]:
    results = _list(doc, "results")
    if len(results) != count:
        raise ServerError(f"batch answer has {len(results)} results for {count} items")
    return results


def _batch_parser(
    value_field: str, decode: Callable[[Any], str | bytes], count: int
) -> Callable[[Any], list[Any]]:
    def parse(doc: Any) -> list[Any]:
        out: list[str | bytes | EnclaveKMSError] = []
        for item in _results(doc, count):
            if isinstance(item, dict) and item.get("error") is not None:
                out.append(error_for_item(item["error"]))
            else:
                out.append(decode(_field(item, value_field)))
        return out

    return parse


# --------------------------------------------------------------------------- sys


def health() -> Call[Health]:
    def parse(doc: Any) -> Health:
        identity = _field(doc, "identity")
        if not isinstance(identity, dict):
            raise ServerError("answer field 'identity' is not an object")
        return Health(_str(doc, "status"), _bool(doc, "initialized"), identity, _int(doc, "worker"))

    return Call("GET", "/v1/health", parse, auth=False, idempotent=True)


def init() -> Call[IssuedToken]:
    return Call("POST", "/v1/sys/init", parse_issued, auth=False)


def audit_head() -> Call[AuditHead]:
    def parse(doc: Any) -> AuditHead:
        return AuditHead(
            chain=_int(doc, "chain"),
            records=_int(doc, "records"),
            head_seq=_int(doc, "head_seq"),
            head_hash=_str(doc, "head_hash"),
            public_key_sha256=_str(doc, "public_key_sha256"),
        )

    return Call("GET", "/v1/audit", parse, idempotent=True)


# --------------------------------------------------------------------------- keys


def _key_path(name: str, suffix: str = "") -> str:
    if not isinstance(name, str) or not name:
        raise UsageError("a key name must be a non-empty string")
    return f"/v1/keys/{quote(name, safe='')}{suffix}"


def create_key(name: str, type: str, exportable: bool) -> Call[KeyInfo]:
    body = {"name": name, "type": type, "exportable": exportable}
    return Call("POST", "/v1/keys", parse_key, body=body, slow=type.startswith("rsa-"))


def list_keys(after: str, limit: int) -> Call[KeyPage]:
    params: dict[str, str | int] = {"limit": limit}
    if after:
        params["after"] = after
    return Call("GET", "/v1/keys", parse_key_page, params=params, idempotent=True)


def read_key(name: str) -> Call[KeyInfo]:
    return Call("GET", _key_path(name), parse_key, idempotent=True)


def rotate_key(name: str) -> Call[KeyInfo]:
    return Call("POST", _key_path(name, "/rotate"), parse_key, body={}, slow=True)


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
    return Call("PATCH", _key_path(name), parse_key, body=body, idempotent=True)


def delete_key(name: str, waiting_period_days: int) -> Call[KeyInfo]:
    params = {"waiting_period_days": waiting_period_days}
    return Call("DELETE", _key_path(name), parse_key, params=params)


def restore_key(name: str) -> Call[KeyInfo]:
    return Call("POST", _key_path(name, "/restore"), parse_key, body={})


def wrapping_key() -> Call[str]:
    return Call("GET", "/v1/sys/wrapping-key", lambda d: _str(d, "public_key_pem"), idempotent=True)


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
    return Call("POST", "/v1/keys/import", parse_key, body=body)


def import_key_version(name: str, wrapped: bytes) -> Call[KeyInfo]:
    body = {"wrapped_material": b64(wrapped)}
    return Call("POST", _key_path(name, "/import"), parse_key, body=body)


def export_key(name: str, version: int | None) -> Call[ExportedKey]:
    def parse(doc: Any) -> ExportedKey:
        return ExportedKey(
            name=_str(doc, "name"),
            type=_str(doc, "type"),
            version=_int(doc, "version"),
            material=unb64(_field(doc, "material"), "material"),
        )

    params = None if version is None else {"version": version}
    return Call("GET", _key_path(name, "/export"), parse, params=params, idempotent=True)


# --------------------------------------------------------------------------- crypto


def _with_aad(body: dict[str, Any], associated_data: bytes | None) -> dict[str, Any]:
    if associated_data is not None:
        body["associated_data"] = b64(associated_data)
    return body


def encrypt(name: str, plaintext: bytes, associated_data: bytes | None) -> Call[str]:
    body = _with_aad({"plaintext": b64(plaintext)}, associated_data)
    return Call(
        "POST", _key_path(name, "/encrypt"), lambda d: _str(d, "ciphertext"), body, idempotent=True
    )


def decrypt(name: str, ciphertext: str | bytes, associated_data: bytes | None) -> Call[bytes]:
    body = _with_aad({"ciphertext": tagged(ciphertext, "ciphertext")}, associated_data)
    return Call(
        "POST",
        _key_path(name, "/decrypt"),
        lambda d: unb64(_field(d, "plaintext"), "plaintext"),
        body,
        idempotent=True,
    )


def rewrap(name: str, ciphertext: str | bytes, associated_data: bytes | None) -> Call[str]:
    body = _with_aad({"ciphertext": tagged(ciphertext, "ciphertext")}, associated_data)
    return Call(
        "POST", _key_path(name, "/rewrap"), lambda d: _str(d, "ciphertext"), body, idempotent=True
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
    parse = _batch_parser("ciphertext", lambda v: v if isinstance(v, str) else "", len(batch))
    return Call("POST", _key_path(name, "/encrypt-batch"), parse, body, idempotent=True)


def decrypt_batch(name: str, items: Sequence[str | BatchItem]) -> Call[list[Any]]:
    batch = _items(items)
    body = {
        "items": [
            _with_aad({"ciphertext": tagged(i.data, "ciphertext")}, i.associated_data)
            for i in batch
        ]
    }
    parse = _batch_parser("plaintext", lambda v: unb64(v, "plaintext"), len(batch))
    return Call("POST", _key_path(name, "/decrypt-batch"), parse, body, idempotent=True)


def datakey(name: str, include_plaintext: bool, associated_data: bytes | None) -> Call[DataKey]:
    def parse(doc: Any) -> DataKey:
        raw = doc.get("plaintext") if isinstance(doc, dict) else None
        plaintext = None if raw is None else unb64(raw, "plaintext")
        return DataKey(ciphertext=_str(doc, "ciphertext"), plaintext=plaintext)

    body = _with_aad({"include_plaintext": include_plaintext}, associated_data)
    return Call("POST", _key_path(name, "/datakey"), parse, body, idempotent=True)


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
        "POST", _key_path(name, "/sign"), lambda d: _str(d, "signature"), body, idempotent=True
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
        "POST", _key_path(name, "/verify"), lambda d: _bool(d, "valid"), body, idempotent=True
    )


def hmac(name: str, data: bytes) -> Call[str]:
    body = {"input": b64(data)}
    return Call("POST", _key_path(name, "/hmac"), lambda d: _str(d, "mac"), body, idempotent=True)


def verify_hmac(name: str, data: bytes, mac: str | bytes) -> Call[bool]:
    body = {"input": b64(data), "mac": tagged(mac, "mac")}
    return Call(
        "POST", _key_path(name, "/verify-hmac"), lambda d: _bool(d, "valid"), body, idempotent=True
    )


def random(length: int) -> Call[bytes]:
    if isinstance(length, bool) or not isinstance(length, int) or length < 1:
        raise UsageError("random: the length must be a positive integer")
    return Call(
        "POST",
        "/v1/random",
        lambda d: unb64(_field(d, "random"), "random"),
        {"bytes": length},
        idempotent=True,
    )


def generate_aes_key() -> Call[bytes]:
    return Call(
        "POST",
        "/generate-aes-key",
        lambda d: unb64(_field(d, "aes_key"), "aes_key"),
        {},
        idempotent=True,
    )


def generate_rsa_key_pair() -> Call[RsaKeyPair]:
    def parse(doc: Any) -> RsaKeyPair:
        return RsaKeyPair(
            public_key_pem=_str(doc, "public_key"), private_key_pem=_str(doc, "private_key")
        )

    return Call("POST", "/generate-rsa-key-pair", parse, {}, idempotent=True, slow=True)


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
    return Call("POST", "/v1/tokens", parse_issued, body)


def list_tokens(after: str, limit: int) -> Call[TokenPage]:
    params: dict[str, str | int] = {"limit": limit}
    if after:
        params["after"] = after
    return Call("GET", "/v1/tokens", parse_token_page, params=params, idempotent=True)


def read_token(token_id: str) -> Call[TokenInfo]:
    return Call("GET", _token_path(token_id), parse_token, idempotent=True)


def revoke_token(token_id: str) -> Call[TokenInfo]:
    return Call("DELETE", _token_path(token_id), parse_token, idempotent=True)


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
